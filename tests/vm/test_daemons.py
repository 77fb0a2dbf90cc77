"""Another daemon than ours under the same scenarios (`--daemon`): the C daemon on the correct
kernel and on the mutant only the kernel's trace catches with it, and a kill target that names
the supervisor refused."""
import json

import pytest

from helpers import ROOT, harness, results_of

pytestmark = pytest.mark.vm

MUTANTS = ROOT / "tests" / "mutants"


def test_the_c_daemon_passes_close_fds_and_its_copens_wake_its_threads(tmp_path):
    """Judged from the kernel alone: its closes reopen objects, READs come after them, and each
    reopen's copen woke every thread of it asleep in poll() (119 s, 2026-12-03)."""
    proc = harness("run", "--output", str(tmp_path), "--scenario", "close-fds", "--daemon", "cdaemon")
    print(proc.stdout)
    r = results_of(proc)
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    assert r["evidence"]["foreign_daemon"] == "cdaemon" and r["evidence"]["daemon_facts_from"] == "kernel"
    wakes = r["copen_wakes"]
    assert wakes["decided"] >= 5 and wakes["missed"] == 0, wakes


def test_a_copen_that_wakes_nobody_is_caught_with_the_c_daemon(tmp_path):
    """reopen-copen-no-wake: the C daemon's threads are woken by other requests, so its readers
    see nothing; the trace shows each reopen's copen leaving its sleepers asleep. The scenario's
    40 closes: the C daemon skips a close while every object it has is busy, and a copen finds a
    thread asleep only when the others are idle (12 closes gave 5, then 1, decided copens)."""
    proc = harness("run", "--output", str(tmp_path), "--scenario", "close-fds", "--daemon", "cdaemon",
                   "--series", str(MUTANTS / "reopen-copen-no-wake.patch"))
    print(proc.stdout)
    r = results_of(proc)
    assert proc.returncode == 1 and r["verdict"] == "FAIL"
    assert "copen-wake" in r["failed_checks"], r["reasons"]
    assert r["copen_wakes"]["missed"] > 0


def test_a_kill_target_that_is_the_supervisor_is_refused(tmp_path):
    """An adapter whose kill pid file names the process the harness started (a supervisor that
    restarts its workers): killing it would end the daemon, not fail an incarnation over. One
    line, exit 2, before any fault."""
    adapter = tmp_path / "supervisor-target.toml"
    adapter.write_text((ROOT / "harness" / "daemons" / "cdaemon.toml").read_text()
                       .replace('name = "cdaemon"', 'name = "cdaemon-supervisor-target"')
                       .replace('"--pid-file", "{run_dir}/cdaemon.pid"', '"--pid-file", "{log_dir}/cdaemon.pid"')
                       .replace('kill = { pid_file = "{log_dir}/cdaemon-worker.pid" }',
                                'kill = { pid_file = "{log_dir}/cdaemon.pid" }'))
    proc = harness("run", "--output", str(tmp_path / "runs"), "--scenario", "crash", "--kills", "3",
                   "--daemon", str(adapter))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 2
    assert "names the process the harness started" in proc.stderr and "Traceback" not in proc.stderr
    (results,) = (tmp_path / "runs").glob("*/results.json")
    r = json.loads(results.read_text())
    assert r["verdict"] == "ERROR" and "its supervisor" in r["reasons"][0], r["reasons"]
    assert not list((tmp_path / "runs").glob("*/faults.jsonl"))  # refused before the first fault
