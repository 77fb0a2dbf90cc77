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
object id the daemon sees, new at every (re)open. The `open` event fires at delivery, before the
message's ids are filled in (it always shows mid=0 oid=0), so a reopen is recognised by `o`
alone: an `open` for an object whose anon fd was released since its last `open`.

Beside them, what no tracepoint shows (PROBES, set up in the guest before the daemon starts):
`deliver`, a kretprobe on `cachefiles_ondemand_daemon_read` with the message as the daemon got
it (read back from its buffer); `restore`, a kprobe on `cachefiles_ondemand_restore`; and
`sched_process_exit`, the death of each of the daemon's threads. `options/record-tgid` adds
the process (tgid) to every line, so that a delivery is charged to a daemon process. The end
check writes marks (`tracing_mark_write: failover_reread=1`) around its re-read (reread.py).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from guest_scripts.contract import Event
from .evidence import OpenedCookies

KPROBE_GROUP = "failover"
# name -> kprobe_events definition. `deliver`'s fields are struct cachefiles_msg (msg_id, opcode,
# len, object_id) and the first 16 bytes of its payload: a READ's offset and length, an OPEN's
# key sizes (a) and anon fd and flags (b). Fetched from the user buffer at return, when the
# kernel has filled it; every field is printed in decimal.
PROBES: dict[str, str] = {
    "deliver": ("r:{group}/deliver cachefiles_ondemand_daemon_read ret=$retval:s64"
                " msg_id=+u0($arg2):u32 opcode=+u4($arg2):u32 len=+u8($arg2):u32 object_id=+u12($arg2):u32"
                " a=+u16($arg2):u64 b=+u24($arg2):u64"),
    "restore": "p:{group}/restore cachefiles_ondemand_restore",
    # every copen the kernel took its request out for (ret 0), also those it then failed: an OPEN
    # whose anon fd was closed before its copen is ended with EBADFD and no `copen` tracepoint.
    # The command's arguments are cut at the comma by then: `id` is the msg_id alone.
    "copened": "r:{group}/copened cachefiles_ondemand_copen ret=$retval:s32 id=+0($arg2):string",
    # an object withdrawn: its queued requests are ended with EIO (and no tracepoint says so when
    # the object is not open). `o` is struct cachefiles_object's debug_id, 48 bytes in on x86_64
    # since 5.17 (two pointers, a list_head, two pointers); the ledger checks that the ids it
    # reads are ones the tracepoints know.
    "drop": "p:{group}/drop cachefiles_ondemand_clean_object o=+48($arg1):s32",
    # /dev/cachefiles closed for good: every request still queued is failed (no failover)
    "unbind": "p:{group}/unbind cachefiles_daemon_release",
    # a cache bound (ret 0) or refused (-EBUSY: the tag's cache not yet withdrawn): after a death,
    # the new cache the readers' fresh mounts use
    "bind": "r:{group}/bind cachefiles_daemon_bind ret=$retval:s32",
    # a dead cache withdrawn (its last pin gone), from start to end: the readers' held umounts race it
    "withdraw": "p:{group}/withdraw cachefiles_withdraw_cache",
    "withdrawn": "r:{group}/withdrawn cachefiles_withdraw_cache",
    # the reopen work (Fault.UMOUNT_REOPEN), a kworker's, from start to return; the object it
    # reopens is the one its cachefiles_ondemand_init_object names (at a cookie's lookup that
    # function runs outside any reopen work: not counted). `dropped`: the return of `drop`
    "reopen_work": "p:{group}/reopen_work ondemand_object_worker",
    "reopen_worked": "r:{group}/reopen_worked ondemand_object_worker",
    "init_object": "p:{group}/init_object cachefiles_ondemand_init_object o=+48($arg1):s32",
    "dropped": "r:{group}/dropped cachefiles_ondemand_clean_object",
    # a read() of the device begins: a request it delivers was taken after this (reopenumount:
    # an OPEN for a dropped object delivered by a read() begun after the drop returned)
    "read_begin": "p:{group}/read_begin cachefiles_ondemand_daemon_read",
    # a reopen's copen wakes the device's poll(2) sleepers (copenwake.py): the device file a
    # command is written to; a poll(2)/select(2) entry put on a queue (any file's: __pollwait is
    # theirs alone, epoll's is another; its poll_table is the first member of the caller's
    # struct poll_wqueues, so `pwq` names the poll), the device's poll returned (its entry is
    # then on the queue); a poll(2) entry's wake function, in the waker's task (`pwq`:
    # wait_queue_entry_t's private, 8 bytes in; `wq`: struct poll_table_entry's wait_address, 40
    # bytes after its `wait`, `ekey` its events, 8 before; `key` the wake-up's events, 0 for all:
    # a key that misses `ekey` wakes nothing); a poll over, its entries about to be taken off
    "dev_write": "p:{group}/dev_write cachefiles_daemon_write file=$arg1:x64",
    "pollwait": "p:{group}/pollwait __pollwait file=$arg1:x64 wq=$arg2:x64 pwq=$arg3:x64",
    "dev_polled": "r:{group}/dev_polled cachefiles_daemon_poll mask=$retval:x32",
    "pollwake": "p:{group}/pollwake pollwake pwq=+8($arg1):x64 wq=+40($arg1):x64 key=$arg4:x64 ekey=-8($arg1):x32",
    "poll_free": "p:{group}/poll_free poll_freewait pwq=$arg1:x64",
}
# copenwake's alone: the ledger does not read them, so their misses leave it whole. A `pollwake`
# hit is missed only when it comes nested in another probe's handler (a wake-up from an
# interrupt, as of a trace_pipe reader, while a kretprobe's handler runs with interrupts on: 2266
# of 3130 in `adversarial`, whose state-kill agent polls a trace instance); a copen's own
# wake-ups run in its task, never inside a handler, so copenwake can do without the missed ones
COPEN_WAKE_PROBES = frozenset({"dev_write", "pollwait", "dev_polled", "pollwake", "poll_free"})
NEVER_THE_COPENS_MISSES = frozenset({"pollwake"})
TRACE_CLOCK = "global"  # one clock for every CPU: the ledger orders events across them
TRACEPOINTS = ("cachefiles/cachefiles_ondemand_*", "sched/sched_process_exit")

_LINE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[-\d]+)\)\s+)?\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
                   r"(?P<ts>\d+\.\d+):\s+(?P<event>cachefiles_ondemand_\w+|deliver|restore|copened|dropped|drop|unbind|bind|withdrawn|withdraw|reopen_worked|"
                   r"reopen_work|init_object|read_begin|dev_write|pollwait|dev_polled|pollwake|poll_free|sched_process_exit|"
                   r"tracing_mark_write):"
                   r"\s+(?:\([^)]*\)\s*)?(?P<args>.*)$")
_DECIMAL = {"fd"}  # of the tracepoints' fields; the rest are hex
_DECIMAL_EVENTS = {"deliver", "copened", "drop", "init_object", "bind", "exit", "mark"}  # every field decimal (`drop`'s o too)
_RENAMED = {"sched_process_exit": "exit", "tracing_mark_write": "mark"}


@dataclass(frozen=True)
class TraceEvent:
    ts: float
    event: str  # open, copen, close, read, cread, fd_write, fd_release; deliver, restore, drop, dropped, unbind,
    # bind, withdraw, withdrawn, reopen_work, reopen_worked, init_object, read_begin, dev_write, pollwait,
    # dev_polled, pollwake, poll_free, exit;
    # mark (a write to trace_marker: `key=value`)
    fields: dict[str, int]
    task: str
    pid: int = -1  # the thread
    tgid: int = -1  # its process, where record-tgid was on

    @property
    def process(self) -> int:
        """Its process: the tgid, or the thread itself where record-tgid was off."""
        return self.tgid if self.tgid >= 0 else self.pid


def after_marks(events: list[TraceEvent], mark: str, pids: set[int]) -> Iterator[TraceEvent]:
    """The events of each task of `pids` after the keeper's `mark=<pid>` for it: what a waiter
    did once let go. Shared by the kill-waiter and reopen-umount judges."""
    going: set[int] = set()
    for e in events:
        if e.event == "mark" and e.fields.get(mark) in pids:
            going.add(e.fields[mark])
        elif e.pid in going:
            yield e


def first_reads_after_marks(events: list[TraceEvent], mark: str, pids: set[int]) -> dict[int, TraceEvent]:
    """pid -> the first `read` tracepoint in that task after the keeper's `mark=<pid>`: the READ a
    waiter queued once let go (the READs of its mount, before, were served)."""
    reads: dict[int, TraceEvent] = {}
    for e in after_marks(events, mark, pids):
        if e.event == "read" and e.pid not in reads:
            reads[e.pid] = e
    return reads


@dataclass
class DropSpan:
    start: float  # `drop`: cachefiles_ondemand_clean_object entered
    end: float | None = None  # `dropped`: it returned, in the same task (None: not in the trace)


class DropsAndReads:
    """Fed the trace in order: each object's drops, entry to return, and each daemon thread's
    current read() of the device (entered at `read_begin`). A read() that began before a drop
    returned may have taken a request of the dropped object out before the drop could cancel it
    (the drop does not wait for a read()), and hand it out after; one that began after cannot.
    Shared by the ledger and the reopen-umount judge."""

    def __init__(self) -> None:
        self.drops: dict[int, list[DropSpan]] = {}  # object debug id -> its drops, in order
        self.read_began: dict[int, float] = {}  # daemon thread -> when its current read() began
        self._in_drop: dict[int, DropSpan] = {}  # task -> the drop it is in

    def feed(self, e: TraceEvent) -> None:
        if e.event == "read_begin":
            self.read_began[e.pid] = e.ts
        elif e.event == "drop" and "o" in e.fields:
            span = DropSpan(e.ts)
            self.drops.setdefault(e.fields["o"], []).append(span)
            self._in_drop[e.pid] = span
        elif e.event == "dropped" and e.pid in self._in_drop:
            self._in_drop.pop(e.pid).end = e.ts

    def last_drop(self, o: int) -> DropSpan | None:
        spans = self.drops.get(o)
        return spans[-1] if spans else None


class DaemonCalls:
    """Fed the trace in order: what the daemon's processes did with the device, by process: each
    read() (`deliver`, at its return), each `restore` written, each answer the kernel took.
    Shared by the ledger and kernelfacts. Where their rules count differently, both counts are
    kept under their own names: a read() that failed is one of the ledger's (`first_read`), none of
    kernelfacts' (`first_read_ok`); a successful copen's return is in `answers` (its place in
    `copened`), which kernelfacts takes whole and the ledger without it (ledger._Builder.answers)."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, int]] = []  # (ts, process) of every read() of the device, whatever it returned
        # process -> its first read() of the device, whatever it returned (one that failed too): the
        # ledger's "a process read the device after the death"
        self.first_read: dict[int, float] = {}
        # process -> its first read() that returned >= 0 (a message, or none): kernelfacts'
        # incarnations, numbered in this order
        self.first_read_ok: dict[int, float] = {}
        self.last_read_ok: dict[int, float] = {}  # process -> its last one
        self.restores: list[tuple[float, int]] = []  # (ts, the writer's process) of every `restore`
        # every answer the kernel took, in trace order: a `copen` or `cread` tracepoint, or a
        # `copened` that returned 0 (a copen the kernel took its request out for, then failed or not:
        # a successful copen is two, its tracepoint and then its return)
        self.answers: list[float] = []
        self.copened: set[int] = set()  # of `answers`, the places (indexes) of the `copened` returns

    def feed(self, e: TraceEvent) -> None:
        f = e.fields
        if e.event == "deliver":
            self.reads.append((e.ts, e.process))
            self.first_read.setdefault(e.process, e.ts)
            if f.get("ret", -1) >= 0:
                self.first_read_ok.setdefault(e.process, e.ts)
                self.last_read_ok[e.process] = e.ts
        elif e.event == "restore":
            self.restores.append((e.ts, e.process))
        elif e.event in ("copen", "cread") or (e.event == "copened" and f.get("ret") == 0):
            if e.event == "copened":
                self.copened.add(len(self.answers))
            self.answers.append(e.ts)

    @property
    def last_read(self) -> float:
        """When the last read() of the device returned, any process's, whatever it returned (-inf: none)."""
        return self.reads[-1][0] if self.reads else float("-inf")


def parse(text: str) -> list[TraceEvent]:
    events = []
    for line in text.splitlines():
        if line.startswith("#") or not (m := _LINE.match(line)):
            continue
        event = m.group("event").removeprefix("cachefiles_ondemand_")
        event = _RENAMED.get(event, event)
        fields = {}
        for pair in m.group("args").split():
            key, _, value = pair.partition("=")
            try:
                fields[key] = int(value.strip('"'), 10 if key in _DECIMAL or event in _DECIMAL_EVENTS else 16)
            except ValueError:
                continue
        tgid = m.group("tgid")
        events.append(TraceEvent(float(m.group("ts")), event, fields, m.group("task"), int(m.group("pid")),
                                 int(tgid) if tgid and tgid.lstrip("-").isdigit() else -1))
    return events


@dataclass(frozen=True)
class Reopen:
    debug_id: int  # `o`
    released_oid: int  # the object id whose anon fd was released
    ts: float  # of the new `open`


class Reopens:
    """Fed the trace in order: each object's anon fd released (`fd_release`) and the object's next
    `open` (by `o`): a reopen. The one pairing of the two, shared by facts, the copen-wake judge,
    the ledger and the state kills."""

    def __init__(self) -> None:
        self.reopens: list[Reopen] = []
        self.reopened: set[int] = set()  # objects (`o`) opened again after a release so far
        self._released: dict[int, int] = {}  # o -> the oid released since the object's last open

    def feed(self, e: TraceEvent) -> Reopen | None:
        """The reopen `e` is, if it is one."""
        o = e.fields.get("o")
        if o is None:
            return None
        if e.event == "open" and o in self._released:
            reopen = Reopen(o, self._released.pop(o), e.ts)
            self.reopens.append(reopen)
            self.reopened.add(o)
            return reopen
        if e.event == "fd_release":
            self._released[o] = e.fields.get("oid", -1)
        return None


@dataclass(frozen=True)
class TraceFacts:
    counts: dict[str, int]  # event -> occurrences
    reopens: tuple[Reopen, ...]
    lost: bool  # the ring buffer overflowed: counts are lower bounds


def facts(events: list[TraceEvent], lost: bool = False) -> TraceFacts:
    reopens = Reopens()
    for e in events:
        reopens.feed(e)
    return TraceFacts(dict(Counter(e.event for e in events)), tuple(reopens.reopens), lost)


def reads_after_reopens(daemon: list[dict[str, Any]]) -> int:
    """READs the daemon received on a reopened object: the proof that a READ which found its
    object closed was delivered after all. From the daemon's side, a reopen is an OPEN for a
    cookie that was opened before (each reader round mounts fresh fsids, so nothing else asks
    for the same cookie twice); its new object id then carries the READs."""
    cookies = OpenedCookies()
    # object ids a reopen gave out (until another OPEN reuses one); None from an OPEN logged without one
    reopened: set[int | None] = set()
    reads = 0
    for e in daemon:
        kind, op = e.get("event"), e.get("op")
        if kind == Event.RECV and op == "OPEN":
            (reopened.add if cookies.asked(e) else reopened.discard)(e.get("object_id"))
        elif kind == Event.DONE and op == "OPEN":
            cookies.answered(e)
        elif kind == Event.RECV and op == "READ" and e.get("object_id") in reopened:
            reads += 1
    return reads
