"""The debug flavour (KASAN, lockdep, the lockup detectors, kmemleak) on the default kernel: the
failover paths run clean under the detectors that caught this code's post-merge bugs, and leak
nothing kmemleak can see.

Outside CI's sample (`extended`): its cold build alone took 950 s of a 4,165 s CI run on 2 cores
(2026-12-01), which put the whole suite past CI's 60-minute budget. `bash ci/test.sh -m extended`
runs it."""
import pytest

from helpers import harness, results_of

pytestmark = [pytest.mark.vm, pytest.mark.extended]


def test_debug_flavour_passes_with_no_findings(default_run, tmp_path):
    proc = harness("run", "--flavor", "debug", "--output", str(tmp_path))
    print(proc.stdout)
    r = results_of(proc)
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    assert r["findings"] == [] and r["kills"] >= 50
    assert r["kernel"]["flavor"] == "debug"
    plain = default_run[1]["kernel"]
    # built beside the plain kernel, not over it: both stay cached
    assert r["kernel"]["config_hash"] != plain["config_hash"] and r["kernel"]["build_dir"] != plain["build_dir"]
    console = (tmp_path / next(p.name for p in tmp_path.iterdir()) / "console.log").read_text()
    assert "KernelAddressSanitizer initialized" in console  # the detectors really ran
    assert "kmemleak: Kernel memory leak detector initialized" in console
    assert "kmemleak: Kernel memory leak detector disabled" not in console
    assert r["end_of_run"]["leaks"] == 0
