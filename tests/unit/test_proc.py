"""The subprocess seam: timeouts kill the whole process group, and nothing is left behind."""
import os
import time

import pytest

from harness import proc
from harness.errors import InputError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] != "Z"


def test_output_and_status(tmp_path):
    r = proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
    assert r.returncode == 3 and not r.ok and not r.timed_out
    assert r.output.split() == ["out", "err"]
    log = tmp_path / "log"
    r = proc.run(["echo", "to the log"], timeout_s=10, log=log)
    assert r.ok and log.read_text() == "to the log\n" == r.output


def test_a_timeout_kills_the_grandchildren_too(tmp_path):
    pidfile = tmp_path / "grandchild"
    started = time.monotonic()
    r = proc.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout_s=1)
    assert r.timed_out and not r.ok
    assert time.monotonic() - started < 10
    grandchild = int(pidfile.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{grandchild}") or not alive(grandchild)


def test_a_child_that_ignores_sigterm_is_killed(tmp_path):
    r = proc.run(["sh", "-c", "trap '' TERM; sleep 300"], timeout_s=0.5)
    assert r.timed_out


def test_an_interactive_child_is_reaped_on_close(tmp_path):
    child = proc.Interactive(["sh", "-c", "sleep 300 & sleep 300"], tmp_path / "transcript")
    pid = child.pid
    child.close()
    assert not child.alive()
    assert not os.path.exists(f"/proc/{pid}") or not alive(pid)


def test_a_missing_program_is_an_input_error():
    with pytest.raises(InputError, match="not found"):
        proc.run(["/nonexistent/tool"], timeout_s=5)
    with pytest.raises(InputError, match="mkfs.nothing not found"):
        proc.require_tool("mkfs.nothing", "nothing-utils")
