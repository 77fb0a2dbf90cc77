"""Fault.UMOUNT_REOPEN judged from the trace: an object dropped while the kernel reopens it.

The keeper has a waiter mount a fresh fsid, the daemon close that object's anon fd and hold its
next OPEN, lets the waiter read (after its mark `reopen_go=<pid>`: the waiter's first `read`
tracepoint, in its own task, names the object `o`), and detaches the mount and SIGKILLs the
waiter; the waiter's exit drops the object (`drop`, cachefiles_ondemand_clean_object, to
`dropped`, its return). Meanwhile the READ that found the object closed has queued the reopen
work (`reopen_work` to `reopen_worked`, ondemand_object_worker; `init_object` in it names the
object), which sends the reopen's OPEN (`open` tracepoint for `o`, then `deliver` in the same
daemon thread: its msg_id) and waits for its copen.

At the points of AT_RESTORE the daemon that holds the OPEN is SIGKILLed first, and the drop comes as
the next incarnation's `restore` has marked the OPEN new again: it races the OPEN's re-delivery
(a read() that took it before the drop, or the drop cancelling it first).

What the kernel must do (the fixes "cachefiles: cancel all requests for the object that is being
dropped" and "cachefiles: wait for ondemand_object_worker to finish when dropping object",
CVE-2024-41051): the drop ends the reopen's OPEN outstanding when it begins (its late copen is
refused), delivered or marked new by a restore, and returns only once the reopen work is done;
no reopen work starts on the object after it, and no read() that begins after it delivers an OPEN
for the object (`read_begin`, the device's read() entered). The state the drop met is the
fault's hit: the work running with its OPEN not yet delivered, the OPEN delivered and held, or
marked new by a restore after its holder died; a drop that met no reopen (the READ went with the
waiter first) or a finished one (the copen was in) decides nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from guest_scripts.contract import REOPEN_GO_MARK, Event
from .evidence import LogEvent
from .trace import DropSpan, DropsAndReads, TraceEvent, first_reads_after_marks


class DropState:
    """What the object's drop met (ReopenUmount.state)."""

    NONE = "no-reopen"  # no reopen work had begun on the object
    RUNNING = "reopen-running"  # the reopen work had begun; its OPEN not delivered yet
    DELIVERED = "open-delivered"  # the reopen's OPEN delivered, not answered
    # the reopen's OPEN delivered to a daemon that died holding it, and marked new by the next
    # incarnation's restore: not delivered again when the drop began
    RESTORED = "open-restored"
    ANSWERED = "open-answered"  # the reopen's copen taken: nothing left to race
    NO_DROP = "no-drop"  # no drop of the object in the trace (or no READ of the waiter's)


RACED = (DropState.RUNNING, DropState.DELIVERED, DropState.RESTORED)


@dataclass(frozen=True)
class Work:
    """One run of the reopen work (ondemand_object_worker) in a kworker."""

    pid: int
    start: float
    end: float | None  # None: still running when the trace ended
    object_ts: float | None = None  # its init_object
    debug_id: int | None = None  # the object init_object was given


@dataclass(frozen=True)
class ReopenUmount:
    pid: int  # the waiter's
    fsid: str
    at: str  # contract.UmountAt
    debug_id: int | None  # the object its READ found closed
    state: str  # DropState
    drop_start: float | None
    drop_end: float | None
    violations: tuple[str, ...]
    # a restore came between the reopen's OPEN's first delivery and the drop (the points of AT_RESTORE)
    restored: bool = False

    @property
    def decided(self) -> bool:
        return self.state in RACED and self.drop_end is not None

    @property
    def decided_in_restore(self) -> bool:
        """The drop raced the re-delivery of an OPEN that a restore had marked new."""
        return self.decided and self.restored


def works(events: list[TraceEvent]) -> list[Work]:
    running: dict[int, Work] = {}  # kworker pid -> its work so far
    done = []
    for e in events:
        if e.event == "reopen_work":
            running[e.pid] = Work(e.pid, e.ts, None)
        elif e.event == "init_object" and e.pid in running and running[e.pid].object_ts is None:
            w = running[e.pid]
            running[e.pid] = Work(w.pid, w.start, None, e.ts, e.fields.get("o"))
        elif e.event == "reopen_worked" and e.pid in running:
            w = running.pop(e.pid)
            done.append(Work(w.pid, w.start, e.ts, w.object_ts, w.debug_id))
    return sorted(done + list(running.values()), key=lambda w: w.start)


def drops(events: list[TraceEvent]) -> dict[int, list[DropSpan]]:
    """Object debug id -> its drops, from entry to return."""
    spans = DropsAndReads()
    for e in events:
        spans.feed(e)
    return spans.drops


def judge(keeper: list[LogEvent], events: list[TraceEvent], complete: bool = True) -> tuple[ReopenUmount, ...]:
    """`complete`: no event was lost (ring buffer, kprobe misses). Without that, a missing
    return reads as "never returned": nothing is decided, and nothing is a violation."""
    faults = {int(e["pid"]): e for e in keeper if e.get("event") == Event.REOPEN_UMOUNTED and e.get("pid") is not None}
    reads = first_reads_after_marks(events, REOPEN_GO_MARK, set(faults))
    all_works, all_drops = works(events), drops(events)
    judged = tuple(_one(pid, str(fault.get("fsid")), str(fault.get("at")), reads.get(pid), events, all_works, all_drops)
                   for pid, fault in sorted(faults.items()))
    return judged if complete else tuple(replace(u, drop_end=None, violations=()) for u in judged)


def _one(pid: int, fsid: str, at: str, read: TraceEvent | None, events: list[TraceEvent], all_works: list[Work],
         all_drops: dict[int, list[DropSpan]]) -> ReopenUmount:
    if read is None or "o" not in read.fields:
        return ReopenUmount(pid, fsid, at, None, DropState.NO_DROP, None, None, ())
    o = read.fields["o"]
    drop = next((d for d in all_drops.get(o, []) if d.start > read.ts), None)
    if drop is None:
        return ReopenUmount(pid, fsid, at, o, DropState.NO_DROP, None, None, ())
    start, end = drop.start, drop.end
    mine = [w for w in all_works if w.debug_id == o and w.start > read.ts]
    msg_id, delivered_ts = _reopen_delivery(events, o, read.ts)
    answered_ts = next((e.ts for e in events if e.event == "copened" and delivered_ts is not None
                        and e.ts > delivered_ts and e.fields.get("id") == msg_id and e.fields.get("ret") == 0), None)
    # the last restore before the drop, after the OPEN's first delivery, and the OPEN's last
    # delivery before the drop (a re-delivery after that restore, or the first)
    restore = max((e.ts for e in events if e.event == "restore" and delivered_ts is not None
                   and delivered_ts < e.ts < start), default=None)
    last_delivery = max((e.ts for e in events if e.event == "deliver" and delivered_ts is not None
                         and delivered_ts <= e.ts < start and e.fields.get("msg_id") == msg_id
                         and e.fields.get("opcode") == 0 and e.fields.get("ret", 0) > 0), default=delivered_ts)
    if answered_ts is not None and answered_ts < start:
        state = DropState.ANSWERED
    elif restore is not None and last_delivery is not None and last_delivery < restore:
        state = DropState.RESTORED
    elif delivered_ts is not None and delivered_ts < start:
        state = DropState.DELIVERED
    elif any(w.start < start and (w.end is None or w.end > start) for w in mine):
        state = DropState.RUNNING
    else:
        state = DropState.NONE
    violations = []
    if end is None:
        violations.append(f"the drop of object {o:08x} never returned")
    else:
        for w in mine:
            assert w.object_ts is not None
            if w.object_ts > end:
                violations.append(f"a reopen work began on object {o:08x} {w.object_ts - end:.3f} s after its drop "
                                  f"returned (the drop did not cancel it)")
            elif w.end is None or w.end > end:
                outlived = "never returned" if w.end is None else f"returned {w.end - end:.3f} s after the drop did"
                violations.append(f"the reopen work on object {o:08x} {outlived} (the drop did not wait for it)")
        # The daemon holds the OPEN (every incarnation, while the keeper's file names the cookie)
        # until the keeper sees the cookie dropped (the drop returned), so a copen taken once the
        # drop had begun is one the drop left outstanding. (A daemon that answered in the instant
        # between the drop's entry and its flush would be taken rightly: ours never does.)
        if state in (DropState.DELIVERED, DropState.RESTORED) and answered_ts is not None and answered_ts > start:
            violations.append(f"the reopen's OPEN (msg_id {msg_id}) of object {o:08x}, {state.removeprefix('open-')}, "
                              f"outstanding when the drop began, was still there to answer {answered_ts - start:.3f} s "
                              f"later: the drop did not end it (the kernel took the copen)")
        if (late := _open_read_after(events, o, end)) is not None:
            violations.append(f"an OPEN for object {o:08x} was delivered by a read() of the device that began "
                              f"{late:.3f} s after its drop returned")
    return ReopenUmount(pid, fsid, at, o, state, start, end, tuple(violations), restore is not None)


def _open_read_after(events: list[TraceEvent], o: int, end: float) -> float | None:
    """How long after `end` began the first read() of the device that delivered an OPEN for
    object `o` (its `open` tracepoint, fired inside that read()), if one began after `end`. A
    read() that began before may have taken the request before the drop cancelled it."""
    reads = DropsAndReads()
    for e in events:
        reads.feed(e)
        if (e.event == "open" and e.fields.get("o") == o and e.ts > end
                and (began := reads.read_began.get(e.pid, 0.0)) > end):
            return round(began - end, 4)
    return None


def _reopen_delivery(events: list[TraceEvent], o: int, after: float) -> tuple[int | None, float | None]:
    """The msg_id and delivery of the first OPEN for object `o` after `after`: its `open`
    tracepoint, then the `deliver` return in the same daemon thread."""
    opened_in: int | None = None
    opened_ts = 0.0
    for e in events:
        if e.ts <= after:
            continue
        if opened_in is None and e.event == "open" and e.fields.get("o") == o:
            opened_in, opened_ts = e.pid, e.ts
        elif opened_in is not None and e.event == "deliver" and e.pid == opened_in:
            return e.fields.get("msg_id"), opened_ts
    return None, None
