"""Exit codes a machine can act on: 0 PASS, 1 FAIL, 2 usage or input, 125 untestable/inconclusive."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from harness import cli, proc
from harness.errors import UntestableError
from harness.guest.session import READY, GuestGone, GuestHung, GuestSession
from helpers import ROOT


@pytest.mark.parametrize("verdict, code", [("PASS", 0), ("FAIL", 1), ("INCONCLUSIVE", 125), ("UNTESTABLE", 125)])
def test_verdicts_map_to_exit_codes(verdict, code):
    assert cli.exit_code(verdict) == code


def test_an_untestable_run_exits_125(monkeypatch, tmp_path, capsys):
    from harness import runner

    def boot_fails(self):
        raise UntestableError("boot failed: no shell within 180s of boot")
    monkeypatch.setattr(runner.Run, "execute", boot_fails)
    assert cli.main(["run", "--output", str(tmp_path), "--cache", str(tmp_path / "cache")]) == 125
    assert "boot failed" in capsys.readouterr().err


def test_a_missing_mkfs_erofs_is_named(tmp_path):
    """Everything a run needs on PATH but erofs-utils: the one missing tool is named, exit 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-system-x86_64", "make", "gcc", "git", "flex", "bison", "bc"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--output", str(tmp_path / "runs"),
                        "--cache", str(tmp_path / "cache")], cwd=ROOT, env=env, text=True, capture_output=True,
                       timeout=60)
    assert p.returncode == 2, p.stderr
    assert "mkfs.erofs not found (Debian package erofs-utils" in p.stderr and "Traceback" not in p.stderr


def test_a_guest_that_exits_before_its_shell_is_gone(tmp_path):
    con = proc.Interactive(["sh", "-c", "echo booting; exit 3"], tmp_path / "session.log")
    try:
        with pytest.raises(GuestGone):
            GuestSession(con).wait_for_shell(timeout_s=10)
    finally:
        con.close()


def test_a_guest_that_never_answers_is_hung_within_its_timeout(tmp_path):
    con = proc.Interactive(["sleep", "300"], tmp_path / "session.log")
    started = time.monotonic()
    try:
        with pytest.raises(GuestHung, match="no shell within 2s"):
            GuestSession(con).wait_for_shell(timeout_s=2)
    finally:
        con.close()
    assert time.monotonic() - started < 10
    assert not con.alive()


def fake_kernel_tree(path):
    (path / "arch").mkdir(parents=True)
    (path / "Kconfig").write_text("")
    (path / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 0\n")
    return path


@pytest.mark.parametrize("extra, message", [
    (["--series", "/nonexistent.mbox"], "--series /nonexistent.mbox: no such file or directory"),
    (["--ref", "v6.12"], "--ref, --series and bisect need a git repository"),
])
def test_series_and_ref_input_errors_exit_2(tmp_path, extra, message):
    tree = fake_kernel_tree(tmp_path / "linux")
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--tree", str(tree), *extra,
                        "--output", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")],
                       cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_guest_that_dies_while_the_host_waits_ends_the_wait_at_once(tmp_path):
    """A panic mid-drain must not cost the drain's whole timeout (12 minutes under debug)."""
    from harness.guest.logs import GuestLogs
    from harness.guest.session import GuestSession
    from helpers import guest_config

    console = proc.Interactive(["sh", "-c", "exit 0"], tmp_path / "session.log")
    try:
        logs = GuestLogs(GuestSession(console), guest_config(tmp_path))
        started = time.monotonic()
        with pytest.raises(GuestGone, match="while waiting for the readers finishing"):
            logs.wait_until("the readers finishing", lambda: False, timeout_s=600)
        assert time.monotonic() - started < 5
    finally:
        console.close()


def test_a_run_without_a_verdict_still_gives_results_to_bisect_and_mutate(tmp_path):
    """What `bisect` steps and `mutate` record for a run that could not be judged: the results
    `report.write_error` wrote, verdict ERROR here (the tree is not a kernel), not an exception."""
    from harness.request import RunRequest
    from harness.runner import Run

    not_a_kernel = tmp_path / "src"
    not_a_kernel.mkdir()
    run = Run(RunRequest(tree=not_a_kernel, output=tmp_path / "runs", cache=tmp_path / "cache"))
    results = run.execute_judged()
    assert results["verdict"] == "ERROR" and "not a kernel source tree" in results["reasons"][0]
    assert "timing" in results and (run.dir / "results.json").is_file()


def test_an_error_about_a_mangled_poke_is_no_ready_shell(tmp_path):
    """A slow guest's tty queued the pokes and bash ran a mangled one: its error message names
    FH_READY_42, and once passed for the shell's answer."""
    con = proc.Interactive(["sh", "-c", "echo 'bash: FH_READY_42: command not found'; sleep 300"],
                           tmp_path / "session.log")
    try:
        with pytest.raises(GuestHung, match="no shell within 2s"):
            GuestSession(con).wait_for_shell(timeout_s=2)
    finally:
        con.close()


def test_a_shell_answers_its_poke(tmp_path):
    con = proc.Interactive(["bash", "--norc", "--noprofile", "-i"], tmp_path / "session.log")
    try:
        assert GuestSession(con).wait_for_shell(timeout_s=20) < 20
    finally:
        con.close()


def test_the_ready_line_as_the_guest_serial_console_sends_it():
    """Captured from a TCG guest's session.log: the serial tty ends the line with CR CR LF."""
    assert READY.search("\x1b[?2004l\rFH_READY_42\r\r\n")
    assert not READY.search("\x1b[?2004l\rbash: FH_READY_42: command not found\r\r\n")
