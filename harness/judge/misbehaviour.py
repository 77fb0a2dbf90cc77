"""The misbehaviours of the daemon (scenario `adversarial`), from its log: which ran, and how often
each reached the point where the kernel had to get it right. A misbehaviour that never got there
proves nothing about the kernel (missing evidence, like a kill that missed every request).

- restore-live: a thread of the live daemon wrote `restore` (Fault.RESTORE_LIVE); decided by a
  request then delivered a second time to the same live incarnation (the same msg_id received
  twice by it: a restore re-marked what another of its threads was serving);
- stale: late answers (Fault.STALE); decided by those for a msg_id answered before (by this
  incarnation or a dead one), which the kernel must refuse;
- lockless-close: anon fds closed unasked by a lockless daemon; decided by those closed while
  another thread was serving a READ through them (the READ is lost, and a restore brings it back);
- close-copen: a reopen's anon fd closed before or while its copen was written; decided by the
  close-copen probe (the cookie's next OPEN came, or a READ for the closed object did);
- late-close: an anon fd sought and written after its object's CLOSE (an umount withdrew the
  cookie) until refused; every late-write probe decides (the kernel answered, or failed to);
  those whose first write was still accepted (`accepted` > 0) raced the cache file's drop;
- supervised-fds: anon fds a supervisor (the keeper) kept across a death, taken over by the next
  incarnation; decided by each READ delivered to it for an object it inherited (the `restore`
  met an object still OPEN) and each OPEN the dead one held that it answered by msg_id.

The one rule this module adds to the verdict: a `redundant` answer (refused because another
thread answered the same re-delivered request) is only that if the same incarnation did answer
it; one that nobody answered is a daemon error like any other.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from guest_scripts.contract import INCARNATION, Event, Probe, RestoreWhy, StaleOrigin
from .evidence import LogEvent

RESTORE_LIVE = "restore-live"
STALE = "stale"
LOCKLESS_CLOSE = "lockless-close"
CLOSE_COPEN = "close-copen"
LATE_CLOSE = "late-close"
SUPERVISED = "supervised-fds"
NAMES = (RESTORE_LIVE, STALE, LOCKLESS_CLOSE, CLOSE_COPEN, LATE_CLOSE, SUPERVISED)


@dataclass(frozen=True)
class Misbehaviour:
    ran: int
    decided: int


@dataclass(frozen=True)
class MisbehaviourFacts:
    by_name: dict[str, Misbehaviour]
    lost_reads: int  # READs a lockless close took the fd from
    redundant: int  # answers refused as already given by another thread
    unanswered_redundant: tuple[LogEvent, ...]  # ... that no thread of that incarnation gave


def expected(recorded: dict[str, Any]) -> tuple[str, ...]:
    """The misbehaviours a scenario as run.json records it has."""
    on = {RESTORE_LIVE: recorded.get("restores_live", 0), STALE: recorded.get("stale_answers", 0),
          LOCKLESS_CLOSE: recorded.get("lockless", False) and recorded.get("fd_closes", 0),
          CLOSE_COPEN: recorded.get("close_during_copen", 0.0), LATE_CLOSE: recorded.get("late_close", False),
          SUPERVISED: recorded.get("supervise_fds", False)}
    return tuple(name for name in NAMES if on[name])


def facts(daemon: list[LogEvent]) -> MisbehaviourFacts:
    ran: Counter[str] = Counter()
    decided: Counter[str] = Counter()
    received: Counter[tuple[object, object]] = Counter()
    done: set[tuple[object, object]] = set()
    redundant: list[LogEvent] = []
    lost = 0
    inherited: set[tuple[object, object]] = set()  # (incarnation, object_id)
    for e in daemon:
        kind = e.get("event")
        key = (e.get(INCARNATION), e.get("msg_id"))
        if kind == Event.RECV:
            received[key] += 1
            decided[SUPERVISED] += e.get("op") == "READ" and (e.get(INCARNATION), e.get("object_id")) in inherited
        elif kind == Event.INHERITED:
            ran[SUPERVISED] += 1
            inherited.add((e.get(INCARNATION), e.get("object_id")))
            decided[SUPERVISED] += not e.get("answered") and e.get("copen_errno") is None
        elif kind == Event.DONE:
            done.add(key)
        elif kind == Event.REDUNDANT:
            redundant.append(e)
        elif kind == Event.LOST:
            lost += 1
        elif kind == Event.RESTORE and e.get("why") == RestoreWhy.LIVE and e.get("ok"):
            ran[RESTORE_LIVE] += 1
        elif kind == Event.CLOSE_FD and e.get("at") == "copen":
            ran[CLOSE_COPEN] += 1
        elif kind == Event.CLOSE_FD and "busy" in e:
            ran[LOCKLESS_CLOSE] += 1
            decided[LOCKLESS_CLOSE] += e["busy"] > 0
        elif kind == Event.PROBE and e.get("probe") == Probe.STALE:
            ran[STALE] += 1
            decided[STALE] += e.get("origin") != StaleOrigin.NEVER_DELIVERED
        elif kind == Event.PROBE and e.get("probe") == Probe.CLOSE_COPEN:
            decided[CLOSE_COPEN] += 1
        elif kind == Event.PROBE and e.get("probe") == Probe.LATE_WRITE:
            ran[LATE_CLOSE] += 1
            decided[LATE_CLOSE] += 1
    decided[RESTORE_LIVE] = sum(1 for n in received.values() if n > 1) if ran[RESTORE_LIVE] else 0
    return MisbehaviourFacts(
        {name: Misbehaviour(ran[name], decided[name]) for name in NAMES},
        lost, len(redundant),
        tuple(e for e in redundant if (e.get(INCARNATION), e.get("msg_id")) not in done))
