"""End to end on the real kernel: build (cached), boot under virtme-ng, kill the daemon, judge.

These run the command line exactly as a user or CI would, and read the run's results.json.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]


def harness(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def results_of(proc: subprocess.CompletedProcess) -> dict:
    line = [l for l in proc.stdout.splitlines() if l.endswith("results.json")]
    assert line, f"no results.json reported\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(Path(line[-1].split(": ", 1)[1]).read_text())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """README's main job: the embedded defaults (50 kills)."""
    proc = harness("run", "--output", str(tmp_path_factory.mktemp("runs")))
    print(proc.stdout)
    return proc, results_of(proc)


def test_default_run_survives_fifty_kills(default_run):
    proc, results = default_run
    assert proc.returncode == 0, results["reasons"]
    assert results["verdict"] == "PASS"
    assert results["kills"] >= 50
    assert results["kills_in_flight"] >= 0.8 * results["kills"]
    assert results["redelivered"] > 0  # held requests really came back after restore
    assert results["restores"] >= results["kills"]
    assert results["mismatches"] == 0 and results["read_errors"] == 0
    assert results["files_never_verified"] == 0
    assert results["max_stall_s"] <= results["stall_bound_s"]
    assert results["findings"] == []


def test_no_failover_is_caught(default_run, tmp_path):
    """The negative control: without a surviving device fd the reads fail, and we say so."""
    proc = harness("run", "--no-failover", "--kills", "3", "--output", str(tmp_path))
    results = results_of(proc)
    print(proc.stdout)
    assert proc.returncode == 1
    assert results["verdict"] == "FAIL"
    assert results["read_errors"] > 0
    assert any("read error" in r for r in results["reasons"])
    # the kernel the default run built is reused, not rebuilt
    assert results["timing"]["build_reused"] is True
