"""Fault.KILL_WAITER judged from the trace: can a task waiting on a dead daemon be killed?

The keeper kills the daemon, lets a waiter (guest_scripts/waiter.py) queue a READ that no daemon
can take, SIGKILLs the waiter and starts the next daemon only once the waiter is gone, or once
its bound has passed. The kernel's events decide, exactly: the waiter's READ was queued (the
waiter's first `read` tracepoint, fired in its own task, after the keeper's mark that the daemon
is dead and the waiter may read: the READs of its mount, before, were served) and its exit
(`sched_process_exit`) came before the next `restore` after that READ. A kernel whose on-demand
wait is killable ("cachefiles: make on-demand read killable") lets the waiter go at once; one that
waits uninterruptibly keeps it until the next daemon has restored and answered, so its exit comes
after that restore, or never. A waiter whose READ the trace lacks decided nothing (it never
waited: its mount failed, or the keeper's bound passed first), nor one with no restore after its
READ (no next daemon came back).
"""
from __future__ import annotations

from dataclasses import dataclass

from guest_scripts.contract import WAITER_GO_MARK, Event
from .evidence import LogEvent
from .trace import TraceEvent, after_marks, first_reads_after_marks


@dataclass(frozen=True)
class Waiter:
    pid: int
    fsid: str
    queued_ts: float | None  # its READ queued (the `read` tracepoint in its task)
    exit_ts: float | None  # its exit; None: alive when the trace ended
    restore_ts: float | None  # the next `restore` after its READ; None: none came

    @property
    def decided(self) -> bool:
        """Its READ waited, and a next daemon restored: without a restore after it, an exit would
        prove nothing (a run that ended with no daemon back)."""
        return self.queued_ts is not None and self.restore_ts is not None

    @property
    def killable(self) -> bool:
        """Gone before the next daemon's restore (nothing could have answered it by then)."""
        return self.exit_ts is not None and self.restore_ts is not None and self.exit_ts < self.restore_ts

    def describe(self) -> str:
        assert self.restore_ts is not None
        if self.exit_ts is None:
            return f"waiter {self.pid} ({self.fsid}), SIGKILLed while its READ waited, never exited"
        return (f"waiter {self.pid} ({self.fsid}), SIGKILLed while its READ waited on no daemon, exited only "
                f"{self.exit_ts - self.restore_ts:.3f} s after the next daemon's restore: the wait was not killable")


def judge(keeper: list[LogEvent], events: list[TraceEvent]) -> tuple[Waiter, ...]:
    pids = {int(e["pid"]): str(e.get("fsid")) for e in keeper
            if e.get("event") == Event.WAITER_KILLED and e.get("pid") is not None}
    queued = {pid: e.ts for pid, e in first_reads_after_marks(events, WAITER_GO_MARK, set(pids)).items()}
    exits = {e.pid: e.ts for e in after_marks(events, WAITER_GO_MARK, set(pids)) if e.event == "exit"}
    restores = [e.ts for e in events if e.event == "restore"]
    return tuple(Waiter(pid, fsid, queued.get(pid), exits.get(pid),
                        next((r for r in restores if r > queued[pid]), None) if pid in queued else None)
                 for pid, fsid in sorted(pids.items()))
