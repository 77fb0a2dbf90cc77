"""proc.run with a per-line callback: the same results, timeouts and reaping as without one."""
import os
import time

from harness import proc


def test_lines_arrive_in_order_and_the_result_is_the_same(tmp_path):
    argv = ["sh", "-c", "echo one; echo two >&2; printf 'no newline'; exit 3"]
    seen: list[str] = []
    streamed = proc.run(argv, timeout_s=10, on_line=seen.append)
    plain = proc.run(argv, timeout_s=10)
    assert seen == ["one", "two", "no newline"]
    assert (streamed.returncode, streamed.output, streamed.timed_out) == (plain.returncode, plain.output, False) == \
        (3, "one\ntwo\nno newline", False)
    log = tmp_path / "log"
    r = proc.run(["sh", "-c", "echo to the log"], timeout_s=10, log=log, on_line=seen.append)
    assert r.ok and log.read_text() == "to the log\n" == r.output and seen[-1] == "to the log"


def test_lines_come_while_the_child_runs():
    stamps: list[float] = []
    started = time.monotonic()
    proc.run(["sh", "-c", "echo first; sleep 1; echo second"], timeout_s=10,
             on_line=lambda _line: stamps.append(time.monotonic() - started))
    assert stamps[0] < 0.8 <= stamps[1]


def test_bad_bytes_are_replaced_not_fatal():
    seen: list[str] = []
    r = proc.run(["sh", "-c", r"printf 'caf\351\n'"], timeout_s=10, on_line=seen.append)
    assert r.ok and seen == ["caf\ufffd"]


def test_a_timeout_kills_the_group_while_streaming(tmp_path):
    pidfile = tmp_path / "grandchild"
    seen: list[str] = []
    started = time.monotonic()
    r = proc.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo waiting; wait"], timeout_s=1,
                 on_line=seen.append)
    assert r.timed_out and not r.ok and seen == ["waiting"]
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    grandchild = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{grandchild}") or open(f"/proc/{grandchild}/stat").read().split(")")[1].split()[0] == "Z"


def test_a_child_that_keeps_printing_is_still_timed_out():
    r = proc.run(["sh", "-c", "while :; do echo tick; sleep 0.05; done"], timeout_s=1, on_line=lambda _l: None)
    assert r.timed_out and r.output.startswith("tick\n")
