"""The kernel's own account of on-demand requests: cachefiles trace events, parsed and correlated.

Read from tracefs (`/sys/kernel/tracing/trace`) at the end of a run. The formats are those of
include/trace/events/cachefiles.h:

    cachefiles_ondemand_open:       o=%08x mid=%x oid=%x fd=%d f=%x
    cachefiles_ondemand_copen:      o=%08x mid=%x l=%lx
    cachefiles_ondemand_close:      o=%08x mid=%x oid=%x
    cachefiles_ondemand_read:       o=%08x mid=%x oid=%x s=%llx l=%zx
    cachefiles_ondemand_cread:      o=%08x mid=%x
    cachefiles_ondemand_fd_write:   o=%08x iB=%x s=%llx l=%zx
    cachefiles_ondemand_fd_release: o=%08x oid=%x

`o` is the cachefiles object's debug id, stable for the object's life; `oid` is the on-demand
object id the daemon sees, new at every (re)open. The `open` event fires before the message's
ids are filled in (it always shows mid=0 oid=0), so a reopen is recognised by `o` alone: an
`open` for an object whose anon fd was released since its last `open`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from guest_scripts.contract import INCARNATION, Event

_LINE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
                   r"(?P<ts>\d+\.\d+):\s+cachefiles_ondemand_(?P<event>\w+):\s+(?P<args>.*)$")
_DECIMAL = {"fd"}


@dataclass(frozen=True)
class TraceEvent:
    ts: float
    event: str  # open, copen, close, read, cread, fd_write, fd_release
    fields: dict[str, int]
    task: str


def parse(text: str) -> list[TraceEvent]:
    events = []
    for line in text.splitlines():
        if line.startswith("#") or not (m := _LINE.match(line)):
            continue
        fields = {}
        for pair in m.group("args").split():
            key, _, value = pair.partition("=")
            try:
                fields[key] = int(value, 10 if key in _DECIMAL else 16)
            except ValueError:
                continue
        events.append(TraceEvent(float(m.group("ts")), m.group("event"), fields, m.group("task")))
    return events


@dataclass(frozen=True)
class Reopen:
    debug_id: int  # `o`
    released_oid: int  # the object id whose anon fd was released
    ts: float  # of the new `open`


@dataclass(frozen=True)
class TraceFacts:
    counts: dict[str, int]  # event -> occurrences
    reopens: tuple[Reopen, ...]
    lost: bool  # the ring buffer overflowed: counts are lower bounds


def facts(events: list[TraceEvent], lost: bool = False) -> TraceFacts:
    released: dict[int, int] = {}  # o -> oid released since the object's last open
    reopens = []
    for e in events:
        o = e.fields.get("o")
        if o is None:
            continue
        if e.event == "open":
            if o in released:
                reopens.append(Reopen(o, released.pop(o), e.ts))
        elif e.event == "fd_release":
            released[o] = e.fields.get("oid", -1)
    return TraceFacts(dict(Counter(e.event for e in events)), tuple(reopens), lost)


def reads_after_reopens(daemon: list[dict[str, Any]]) -> int:
    """READs the daemon received on a reopened object: the proof that a READ which found its
    object closed was delivered after all. From the daemon's side, a reopen is an OPEN for a
    cookie that was opened before (each reader round mounts fresh fsids, so nothing else asks
    for the same cookie twice); its new object id then carries the READs."""
    # (incarnation, msg_id) of an OPEN received -> its cookie
    pending: dict[tuple[int | None, int | None], str] = {}
    opened: set[str] = set()  # cookies whose OPEN was answered with a size
    # object ids a reopen gave out (until another OPEN reuses one); None from an OPEN logged without one
    reopened: set[int | None] = set()
    reads = 0
    for e in daemon:
        kind, op, key = e.get("event"), e.get("op"), (e.get(INCARNATION), e.get("msg_id"))
        if kind == Event.RECV and op == "OPEN":
            pending[key] = e.get("cookie", "")
            (reopened.add if e.get("cookie") in opened else reopened.discard)(e.get("object_id"))
        elif kind == Event.DONE and op == "OPEN" and key in pending:
            if e.get("size", -1) >= 0:
                opened.add(pending.pop(key))
        elif kind == Event.RECV and op == "READ" and e.get("object_id") in reopened:
            reads += 1
    return reads
