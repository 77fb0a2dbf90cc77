"""--transport ssh on the real kernel: the same scenarios pass with the same evidence as over the
console, the negative control still fails, and an sshd killed under the run is a finding, with
nothing left running. Only the crash run is in CI's sample (10 kills: the boot and the drain are
most of its time); the rest is `extended`."""
import fcntl
import os
import re
import time
from pathlib import Path

import pytest

from guest_scripts.contract import HeldKill
from harness import runner
from harness.guest import ssh
from harness.guest.faults import FaultLoop
from harness.request import RunRequest
from helpers import harness, results_of
from test_never_hang import processes_mentioning

pytestmark = pytest.mark.vm


def run(tmp_path, *args):
    proc = harness("run", "--output", str(tmp_path), "--transport", "ssh", *args)
    print(proc.stdout)
    return proc, results_of(proc)


def assert_ssh_was_used_and_cleaned_up(r: dict) -> Path:
    """The run went over ssh, kept the kernel console, deleted its key and left nothing running."""
    run_dir = Path(r["kernel"]["bzimage"]).parent
    assert r["request"]["transport"] == "ssh" and "--transport ssh" in r["reproduce"]
    assert "Linux version" in (run_dir / "console.log").read_text(errors="replace")  # the console still logs
    transcript = (run_dir / "ssh" / "commands.log").read_text()
    # the faults went over ssh: a timer kill is armed there (statekill.py carries it out in the
    # guest, gated on a held request), a close is a signal sent there
    assert re.search(rf"\$ echo {HeldKill.PREFIX}:\d+:", transcript) or "$ kill -USR1" in transcript, transcript[-2000:]
    private_key = re.search(r"ssh -i (\S+) -p (\d+)", transcript)
    assert private_key and not Path(private_key.group(1)).exists()  # deleted at the run's end
    lock = os.open(ssh.PORT_LOCKS / f"{private_key.group(2)}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the port is free for the next VM
    finally:
        os.close(lock)
    assert processes_mentioning(str(run_dir)) == []
    return run_dir


def test_crash_over_ssh_passes_with_the_consoles_evidence(tmp_path):
    proc, r = run(tmp_path, "--kills", "10")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    # what test_failover.py asks of the console's default run
    assert r["kills"] >= 10 and r["kills_in_flight"] >= 0.5 * r["kills"]
    ev = r["evidence"]
    assert ev["redelivered"] > 0 and ev["restores"] >= r["kills"] and ev["reopens"] > 0
    assert r["mismatches"] == 0 and r["read_errors"] == 0 and r["readers"]["files_never_verified"] == 0
    assert r["max_stall_s"] <= r["stall_bound_s"] and r["findings"] == []
    assert r["timing"]["ssh_s"] > 0 and r["timing"]["boot_to_first_fault_s"] > r["timing"]["boot_s"]
    assert_ssh_was_used_and_cleaned_up(r)


@pytest.mark.extended
def test_close_fds_over_ssh_passes_with_the_consoles_evidence(tmp_path):
    proc, r = run(tmp_path, "--scenario", "close-fds")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    ev = r["evidence"]  # what test_every_scenario.py asks of the console's run
    assert ev["fd_closes"] >= 10 and ev["reopens"] >= 10 and ev["reads_after_reopen"] >= 10
    assert r["read_errors"] == 0 and r["mismatches"] == 0
    assert_ssh_was_used_and_cleaned_up(r)


@pytest.mark.extended
def test_no_failover_over_ssh_fails(tmp_path):
    proc, r = run(tmp_path, "--no-failover")
    assert proc.returncode == 1 and r["verdict"] == "FAIL"
    assert r["read_errors"] > 0 and any("read error" in reason for reason in r["reasons"])
    assert_ssh_was_used_and_cleaned_up(r)


class SshdKilledAfterThreeFaults(FaultLoop):
    """The fault loop, but after its third fault the guest's sshd (the listener and the process
    serving our connection) is SIGKILLed from inside the guest, a moment later."""

    def inject(self, index, action, incarnation):
        following = super().inject(index, action, incarnation)
        if index == 2:
            self.session.run("(sleep 1; pkill -KILL -x sshd) >/dev/null 2>&1 &", self.t.command)
        return following


@pytest.mark.extended
def test_sshd_killed_mid_run_is_a_clear_finding_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "FaultLoop", SshdKilledAfterThreeFaults)
    run = runner.Run(RunRequest(scenario="crash", kills=10, transport="ssh", output=tmp_path).validate())
    started = time.monotonic()
    results = run.execute()
    assert time.monotonic() - started < 900  # no wait without end: the loss is seen at the next command
    assert results["verdict"] == "FAIL"
    assert any("run aborted: guest gone" in r and "ssh connection to the guest closed" in r
               for r in results["reasons"]), results["reasons"]
    assert "run-completed" in results["failed_checks"]
    assert_ssh_was_used_and_cleaned_up(results)
