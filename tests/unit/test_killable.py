"""Fault.KILL_WAITER judged (harness/judge/killable.py) on the captured `adversarial` run (seed 1,
the correct kernel: every waiter's READ queued, every waiter gone before the next restore), and
the rule's negative controls: the trace changed where a kernel whose wait is not killable changes
it (the waiter's exit after the next daemon's restore, or never), and where nothing was decided
(no READ of the waiter's in the trace)."""
import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES, judged

RUN = FIXTURES / "run-adversarial"
_TS = re.compile(r" (\d+\.\d+): ")


@pytest.fixture
def run(tmp_path) -> Path:
    return shutil.copytree(RUN, tmp_path / "run")


def waiter_pids(run: Path) -> list[int]:
    keeper = [json.loads(line) for line in (run / "guest" / "keeper.jsonl").read_text().splitlines()]
    return [e["pid"] for e in keeper if e["event"] == "waiter_killed" and e["pid"] is not None]


def trace(run: Path) -> list[str]:
    return (run / "guest" / "trace.txt").read_text().splitlines()


def set_trace(run: Path, lines: list[str]) -> None:
    (run / "guest" / "trace.txt").write_text("\n".join(lines) + "\n")


def ts(line: str) -> float:
    m = _TS.search(line)
    return float(m.group(1)) if m else -1.0


def is_exit_of(line: str, pid: int) -> bool:
    return f"sched_process_exit: comm=python3 pid={pid} " in line


def test_every_waiter_queued_its_read_and_went_before_the_next_restore(run):
    r = judged(run)
    assert r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    waiters = r["killed_waiters"]
    assert len(waiters) == len(waiter_pids(run)) >= 3
    assert all(w["decided"] and w["killable"] for w in waiters), waiters
    assert all(w["queued_ts"] < w["exit_ts"] < w["restore_ts"] for w in waiters), waiters
    assert r["ledger"]["abandoned_reads"] >= len(waiters)  # each waiter's READ, never delivered


def test_a_waiter_that_exits_only_after_the_next_restore_fails(run):
    """Its exit moved to just after the restore that follows it: it went only once a daemon was back."""
    lines, pid = trace(run), waiter_pids(run)[0]
    (at,) = [i for i, line in enumerate(lines) if is_exit_of(line, pid)]
    exit_line = lines.pop(at)
    restore = next(i for i in range(at, len(lines)) if " restore: " in lines[i])
    later = ts(lines[restore]) + 0.0001
    lines.insert(restore + 1, exit_line.replace(f"{ts(exit_line):.6f}", f"{later:.6f}"))
    set_trace(run, lines)
    r = judged(run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["killable-probe"], r["reasons"]
    assert f"waiter {pid}" in r["reasons"][0] and "after the next daemon's restore" in r["reasons"][0]


def test_a_waiter_that_never_exits_fails(run):
    """No exit at all: it is still waiting when the trace ends (its READ, neither delivered nor
    given up, is excused by the ledger only because the keeper's umount dropped its object)."""
    pid = waiter_pids(run)[1]
    set_trace(run, [line for line in trace(run) if not is_exit_of(line, pid)])
    r = judged(run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["killable-probe"], r["reasons"]
    assert "never exited" in " ".join(r["reasons"])


def test_waiters_whose_read_the_trace_lacks_decide_nothing(run):
    """The waiters' READs taken out of the trace (as if each had died before it waited): nothing
    decided, which is missing evidence, not a pass."""
    pids = waiter_pids(run)
    set_trace(run, [line for line in trace(run)
                    if not (" cachefiles_ondemand_read: " in line and any(f"-{pid} " in line for pid in pids))])
    r = judged(run)
    assert not any(w["decided"] for w in r["killed_waiters"])
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["killed-waiters"], r["reasons"]
