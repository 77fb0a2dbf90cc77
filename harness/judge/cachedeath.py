"""A cache's death (Fault.CACHE_DEATH), judged: which reader errors it explains, and whether the
readers went on.

The kernel says when each cache died and when the next one was bound (the ledger's CacheDeath:
the `unbind` and `bind` probes); the keeper's clock mark after each bind (contract.CLOCK_MARK)
puts the readers' wall-clock stamps on the trace's clock. An error a reader saw is the death's,
not the kernel's fault, when
- its errno is the one a dead cache gives for the call (DEATH_ERRNOS: EIO, every waiter and
  every call after; ENOBUFS once its cookies are withdrawn, and for a mount while no cache is
  bound),
- the mount it used (or, for a mount, the mount itself) began before the next cache was bound:
  a mount begun after uses the new cache, which must serve it, and
- it came after the death: nothing fails before the cache dies.
Every other error stays the read-error check's, as in any scenario. No margin is needed on the
clocks: the mark is written just after the wall clock is read, so a stamp maps at most that
write's latency later, which can only make an error look later (still after the death) and a
mount begun just before a bind look begun after it (then its error counts against the kernel).

With GuestConfig.race_withdrawal the even readers keep the mounts a death failed until the dead
cache's withdrawal begins (the daemon closes its last anon fd, which pins it), then unmount them
within reader.WITHDRAWAL_SPREAD_SHARE of the stall bound: each umount whose span overlaps the
kernel's withdrawal (the `withdraw` probe, entry to return) raced the withdrawal of its volume
and cookies, CVE-2024-41058's shape (Needs.withdrawal_umounts). The odd ones go on mounting
(every 200 ms while mounts fail): a mount overlapping the withdrawal looks a cookie up as the
cache withdraws, CVE-2024-41057's shape (counted per death, any reader's).
The memory-safety of both is KASAN's to judge.

A death ran its course when the kernel failed requests with it (delivered or queued: the ledger)
and a reader then read a file right through a mount begun after the new bind. The cache-death
check fails when the keeper let the device go more often than the kernel released it before the
end check (a reference kept somewhere), or a release was never followed by a new bind before the
end check's re-read (the old cache never withdrawn: its tag stays in use).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from guest_scripts.contract import CLOCK_MARK, REREAD_MARK, Event
from .evidence import LogEvent
from .ledger import CacheDeath
from .trace import TraceEvent

# stage (reader.py's READ_ERROR `stage`) -> the errnos a dead or absent cache gives
DEATH_ERRNOS: dict[str, frozenset[int]] = {
    # a read that comes after the dead cache withdrew its cookie (a mount held across the
    # withdrawal, or read from the page cache until then) finds no cache: ENOBUFS (seed 1), so
    # ENOBUFS on a read or an open is the death's only once its withdrawal began
    "read": frozenset({errno.EIO, errno.ENOBUFS}),
    "open": frozenset({errno.EIO, errno.ENOBUFS}),
    "mount": frozenset({errno.EIO, errno.ENOBUFS}),
}


@dataclass(frozen=True)
class DeathAccount:
    ts: float  # the device released (trace clock)
    rebound_s: float  # from the death to the new cache's bind
    refused_binds: int
    flushed: int  # requests the kernel failed with it: delivered and unanswered, or queued
    explained: int  # reader errors it explains
    remounted: bool  # a file read right through a mount begun after the new bind
    withdrawal_s: float | None = None  # how long the dead cache's withdrawal took (None: not seen)
    umounts_in_withdrawal: int = 0  # readers' held umounts whose span overlaps it
    mounts_in_withdrawal: int = 0  # readers' mounts whose span overlaps it (a cookie looked up meanwhile)

    @property
    def ran(self) -> bool:
        return self.flushed > 0 and self.remounted


@dataclass(frozen=True)
class CacheDeathFacts:
    asked: int  # the keeper's: device fds let go (Event.CACHE_DEATH)
    released: int  # the kernel's: device releases before the end check
    deaths: tuple[DeathAccount, ...]  # ... followed by a new bind
    never_rebound: float | None  # a release before the end check with no bind after it
    explained: tuple[LogEvent, ...]  # reader errors some death explains
    clock_offset_s: float | None  # trace clock minus wall clock; None: no clock mark

    def failures(self) -> list[str]:
        out = []
        if self.released < self.asked:
            out.append(f"the keeper let the device go {self.asked} time(s), the kernel released it "
                       f"{self.released} time(s) before the end")
        if self.never_rebound is not None:
            out.append(f"the cache released at {self.never_rebound:.6f} was never replaced: no bind succeeded "
                       "after it (its tag still in use)")
        return out

    def unexplained(self, errors: tuple[LogEvent, ...]) -> tuple[LogEvent, ...]:
        explained = {id(e) for e in self.explained}  # the same events: both come from the readers' logs
        return tuple(e for e in errors if id(e) not in explained)


def clock_offset(events: list[TraceEvent]) -> float | None:
    """Trace clock minus wall clock, from the keeper's marks: the smallest (the tightest bound)."""
    offsets = [e.ts - e.fields[CLOCK_MARK] / 1000 for e in events if e.event == "mark" and CLOCK_MARK in e.fields]
    return min(offsets) if offsets else None


def judge(deaths: tuple[CacheDeath, ...], events: list[TraceEvent], readers: list[list[LogEvent]],
          keeper: list[LogEvent]) -> CacheDeathFacts:
    offset = clock_offset(events)
    rebound = {d.ts for d in deaths}
    releases = [e.ts for e in events if e.event == "unbind"]
    end = next((e.ts for e in events if e.event == "mark" and e.fields.get(REREAD_MARK) == 1), None)
    if end is not None:
        releases = [ts for ts in releases if ts < end]
    elif releases and releases[-1] not in rebound:
        releases.pop()  # no end check (an aborted run): the last release is the keeper's stop
    never = next((ts for ts in releases if ts not in rebound), None)
    asked = sum(1 for e in keeper if e.get("event") == Event.CACHE_DEATH)
    if offset is None or not deaths:
        return CacheDeathFacts(asked, len(releases), tuple(_account(d, [], False) for d in deaths), never, (),
                               offset)
    mounted: dict[tuple[object, object], float] = {}  # (reader, fsid) -> when its mount began (trace clock)
    errors: list[LogEvent] = []
    files: list[LogEvent] = []
    umounts: list[tuple[float, float]] = []  # held umounts' spans (trace clock)
    mounts: list[tuple[float, float]] = []  # every mount's span, failed or not (trace clock)
    for log in readers:
        for e in log:
            kind = e.get("event")
            if kind == Event.MOUNTED:
                mounted[(e.get("reader"), e.get("fsid"))] = float(e["t"]) - float(e.get("latency_s", 0)) + offset
                mounts.append((mounted[(e.get("reader"), e.get("fsid"))], float(e["t"]) + offset))
            elif kind == Event.READ_ERROR:
                errors.append(e)
                if e.get("stage") == "mount":
                    mounts.append((float(e["t"]) - float(e.get("waited_s", 0)) + offset, float(e["t"]) + offset))
            elif kind == Event.FILE:
                files.append(e)
            elif kind == Event.HELD_UMOUNT:
                umount_began = float(e["began"]) + offset
                umounts.append((umount_began, umount_began + float(e.get("took_s", 0))))
    spans = [_withdrawal(events, d) for d in deaths]
    explained: dict[int, list[LogEvent]] = {i: [] for i in range(len(deaths))}
    for e in errors:
        at = float(e["t"]) + offset
        if e.get("stage") == "mount":
            began: float | None = at - float(e.get("waited_s", 0))
        else:
            began = mounted.get((e.get("reader"), e.get("fsid")))
        if began is None or e.get("errno") not in DEATH_ERRNOS.get(str(e.get("stage")), frozenset()):
            continue
        # the latest death before the error whose new cache came after the mount began
        which = next((i for i in reversed(range(len(deaths))) if deaths[i].ts < at and began < deaths[i].rebound_ts), None)
        if which is None:
            continue
        if e.get("errno") == errno.ENOBUFS and e.get("stage") != "mount" and \
                ((span := spans[which]) is None or at < span[0]):
            continue
        explained[which].append(e)
    accounts = []
    for i, d in enumerate(deaths):
        remounted = any(mounted.get((f.get("reader"), f.get("fsid")), -1.0) > d.rebound_ts for f in files)
        span = spans[i]
        raced = sum(1 for began, ended in umounts if span and began < span[1] and ended > span[0])
        looked_up = sum(1 for began, ended in mounts if span and began < span[1] and ended > span[0])
        accounts.append(_account(d, explained[i], remounted, span, raced, looked_up))
    return CacheDeathFacts(asked, len(releases), tuple(accounts), never,
                           tuple(e for i in explained for e in explained[i]), offset)


def _withdrawal(events: list[TraceEvent], d: CacheDeath) -> tuple[float, float] | None:
    """The dead cache's withdrawal (entry, return of cachefiles_withdraw_cache): the first after
    its release, before the new bind (the new cache's open waits for the old one to be freed)."""
    start = next((e.ts for e in events if e.event == "withdraw" and d.ts < e.ts < d.rebound_ts), None)
    end = next((e.ts for e in events if e.event == "withdrawn" and start is not None and e.ts > start), None)
    return None if start is None or end is None else (start, end)


def _account(d: CacheDeath, explained: list[LogEvent], remounted: bool,
             withdrawal: tuple[float, float] | None = None, raced: int = 0, looked_up: int = 0) -> DeathAccount:
    return DeathAccount(d.ts, round(d.rebound_ts - d.ts, 4), d.refused_binds, d.flushed_delivered + d.flushed_queued,
                        len(explained), remounted, None if withdrawal is None else round(withdrawal[1] - withdrawal[0], 4),
                        raced, looked_up)
