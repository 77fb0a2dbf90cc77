"""The kernel's own ledger of on-demand requests, from the trace alone (trace.PROBES and the
cachefiles tracepoints): what was delivered to which daemon process, what was answered, what a
process held when it died, what came back after a `restore`, and what was never answered.

A request is one lifetime: delivered (the `deliver` kretprobe: msg_id, opcode, object id), then
ended by its answer (`copen`/`cread` with its msg_id, or `copened`: a copen the kernel took the
request out for and then failed; a CLOSE ends at its delivery) or by the
kernel (`drop`: its object was withdrawn and its requests failed with EIO). `unbind` (the device
closed for good) fails every request still queued: at the end of a run nothing is left by then
(the readers are done), so what it fails was never answered. An `unbind` followed by a new
cache's `bind` is a cache that died mid-run (Fault.CACHE_DEATH): what it failed with EIO was
ended by the kernel (`flushed`), and so were the READs queued on its objects and never
delivered (CacheDeath, per death). A task killed while its READ waits, queued and not yet
delivered, gives the READ up with no event of its own but its exit (a killable wait: the kernel
takes the request out): such a READ is `abandoned` (Fault.KILL_WAITER's waiter; a reader killed
at a stall). Delivered again
while it lives is either a re-delivery (a `restore` came between) or a violation (it did not).
The kernel reuses a msg_id once its request has ended, so a delivery of that msg_id after the end
starts a new lifetime: nothing here matches by msg_id across lifetimes.

The rules, each exact (no allowance; a correct kernel breaks none, README says why):
- held: a request a daemon process held when it died (delivered to it, not ended before its
  last thread exited) is delivered again after the next `restore` (a process that reads the
  device after the death with no `restore` written is the daemon's fault, blamed on it), unless it ended before that
  restore: the kernel ended it (its object dropped; for a READ, only once the task waiting on it
  was killed in its wait: its exit came before any other event of it but READs it queued and
  nobody was delivered (a killed reader's read_folio after its readahead's READ was given up). A
  waiting task holds an access to its cookie (fscache_begin_read_operation), which a withdrawal
  waits for, so a drop that finds it alive came after the READ had ended with no event), or the
  next process answered it by msg_id
  (a supervisor kept its anon fd across the death: the request was never lost). An OPEN whose
  fd a supervisor kept, re-delivered by the restore, is refused (read() fails with EEXIST, and
  no event names the OPEN: `_Builder.refused` matches it): that counts as delivered again. A
  drop after the restore does not excuse it: its reader waits on it, so its object cannot go
  before it is answered, and a kernel that ended it at the death (the reader retrying on its
  own) shows exactly that. Except for the OPEN of an object in `unmounted`, whose waiter the
  keeper SIGKILLed and whose mount it unmounted on purpose after a restore (Fault.UMOUNT_REOPEN at
  a point of AT_RESTORE): there the drop after the restore is the fault, and reopenumount.py
  judges what it ended. A request a read() took out before its object's drop ended it (the read()
  began before the drop returned) and handed out after is a delivery of that lifetime, ended by
  the drop: the drop does not wait for a read();
- double: no lifetime is delivered twice without a `restore` between the two deliveries;
- unanswered: by the end of the trace every lifetime has ended, and every READ the kernel queued
  (the `read` tracepoint) was delivered, unless its object was dropped or its task exited first;
- closed: no READ is delivered for an object whose anon fd was released (`fd_release`) and not
  opened again since (`copen` of that object): patches 1 and 3.
"""
from __future__ import annotations

import bisect
import errno
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from .trace import DaemonCalls, DropsAndReads, Reopens, TraceEvent

OPCODES = {0: "OPEN", 1: "CLOSE", 2: "READ"}


@dataclass(frozen=True)
class Delivery:
    ts: float
    tgid: int  # the daemon process that read it
    object_id: int


@dataclass
class Lifetime:
    msg_id: int
    op: str
    o: int | None  # the cachefiles object's debug id, where the trace tells it
    deliveries: list[Delivery] = field(default_factory=list)
    ended_ts: float | None = None
    ended_by: str | None = None  # "answer", "delivery" (CLOSE), "drop", "refused" (EEXIST), "flushed" (the cache
    # died); unanswered: "unbind", "vanished"
    off: int | None = None  # a READ's range
    length: int | None = None
    # a READ's waiter: the task whose `read` tracepoint queued it (the one task waiting on that
    # range at its first delivery; None when none or several were), blocked in the kernel until
    # the READ ends
    waiter: int | None = None
    # the waiter's first event after the READ's first delivery, (event, ts): "exit" a waiter
    # killed in its killable wait (which takes the request out); anything else, a waiter that
    # went on because the READ had ended; None while it waits
    waiter_next: tuple[str, float] | None = None
    # the first READ the waiter queued after the delivery, while waiter_next was None: a killed
    # waiter's on its way out (given up at once), or one that went on
    waiter_queued: float | None = None
    # ended by its object's drop with its waiter not killed before: what the waiter did by then.
    # Such a drop ended nothing: a waiting task holds an access to its cookie, which the object's
    # withdrawal waits for, so the READ had ended before, unseen (the kernel failed it: a dying
    # daemon's anon fd released, the waiter failed with EIO, gone on and unmounted)
    drop_found_waiter: str | None = None

    def describe(self) -> str:
        where = f" object {self.o}" if self.o is not None else ""
        oid = f" object_id {self.deliveries[-1].object_id}" if self.deliveries else ""
        span = f" off {self.off} len {self.length}" if self.op == "READ" else ""
        return f"{self.op} msg_id {self.msg_id}{oid}{where}{span}"


@dataclass(frozen=True)
class Violation:
    rule: str  # one of RULES
    text: str
    blame: str = "kernel"  # one of BLAMES: whose doing the loss is, by the ledger

    def __str__(self) -> str:
        return f"[{self.blame}] {self.text}"


RULES = ("held", "double", "unanswered", "closed")
# Who lost a request, from the ledger alone (any daemon, ours or not): the kernel, when it did not
# deliver again what a restore should have brought back, delivered something twice or for a
# closed object, or left a READ queued while a daemon read the device; the daemon, when it never
# answered what it was given and was alive to, or died holding it and no process wrote `restore`
# after, or nobody read the device after a READ was queued.
BLAMES = ("kernel", "daemon")


@dataclass(frozen=True)
class ProcessAccount:
    """One daemon process, as the kernel saw it."""
    tgid: int
    delivered: int
    empty_reads: int  # read() returned 0: poll said readable, nothing deliverable
    died_ts: float | None  # its last thread's exit; None: alive at the end of the trace
    held: int  # lifetimes delivered to it and not ended when it died
    redelivered: int  # of those, delivered again after the next restore
    ended_by_kernel: int  # of those, ended by the kernel (object dropped) instead
    no_restore: int  # of those, with no restore after the death before the trace ended
    taken_over: int = 0  # of those, answered by msg_id before the restore (a supervisor kept the anon fd)
    longest_wait_s: float | None = None  # of those answered, the longest from first delivery to answer
    most_overtaken: int = 0  # of those, the most other messages delivered between the restore and it
    next_answer_s: float | None = None  # from the death to the next request any process answered
    held_ids: tuple[int, ...] = ()  # the msg_ids of the `held` lifetimes, in order of first delivery
    redelivered_ids: tuple[int, ...] = ()  # of those, the `redelivered` ones
    # deliveries to it that were their thread's last event before that thread exited: a daemon
    # killed between its read() and anything after (its own log line among it) never saw them
    died_reading: int = 0


@dataclass(frozen=True)
class CacheDeath:
    """A cache that died mid-run: its device released (`unbind`), then a new cache bound."""
    ts: float
    rebound_ts: float  # the next successful bind
    refused_binds: int  # binds refused between the two (the tag's cache not yet withdrawn)
    flushed_delivered: int  # requests delivered to the daemon and not answered, failed by the death
    flushed_queued: int  # READs queued on the cache's objects and never delivered, failed by it


@dataclass(frozen=True)
class Ledger:
    available: bool  # the trace has `deliver` events: the kprobes were there
    processes: tuple[ProcessAccount, ...]
    restores: tuple[float, ...]
    lifetimes: int
    by_op: dict[str, int]  # lifetimes by opcode
    queued_reads: int  # `read` tracepoints: READs the kernel queued
    drops: int
    unknown_drop_ids: int  # `drop` events whose o no tracepoint knows: the probe's offset is wrong
    violations: tuple[Violation, ...]
    incomplete: str | None = None  # why the trace cannot make a ledger (events were lost)
    anon_fds_handed: int = 0  # OPENs delivered: each installs an anon fd in the daemon
    anon_fds_released: int = 0  # `fd_release`: each anon fd's last close
    cache_deaths: tuple[CacheDeath, ...] = ()
    abandoned_reads: int = 0  # of the READs queued, given up by a task that exited before their delivery
    reads_after_reopen: int = 0  # READs delivered on an object opened again after its anon fd's release
    answered: dict[str, int] = field(default_factory=dict)  # lifetimes ended by their answer, by opcode

    @classmethod
    def none(cls, why: str) -> "Ledger":
        """No ledger: the trace lost events (`why`)."""
        return cls(False, (), (), 0, {}, 0, 0, 0, (), why)

    @property
    def anon_fds_unreleased(self) -> int:
        return self.anon_fds_handed - self.anon_fds_released

    @property
    def held(self) -> int:
        return sum(p.held for p in self.processes)

    @property
    def redelivered(self) -> int:
        return sum(p.redelivered for p in self.processes)

    def held_by(self, tgid: int) -> int:
        return next((p.held for p in self.processes if p.tgid == tgid), 0)

    def of_rule(self, rule: str) -> list[Violation]:
        return [v for v in self.violations if v.rule == rule]


class _Builder:
    def __init__(self) -> None:
        self.live: dict[int, Lifetime] = {}  # msg_id -> its lifetime, until it ends
        self.all: list[Lifetime] = []
        self.exits: dict[int, float] = {}  # tgid -> its last thread's exit
        self.just_read: dict[int, int] = {}  # thread -> the process a delivery (ret > 0), its last event, was charged to
        self.died_reading: Counter[int] = Counter()  # tgid -> deliveries its threads died on (ProcessAccount)
        self.empty: Counter[int] = Counter()
        self.delivered: Counter[int] = Counter()
        self.oid_to_o: dict[int, int] = {}  # the object id an OPEN handed out -> the object
        self.opening: dict[int, int] = {}  # pid -> o of the `open` tracepoint just fired in it
        self.object_open: dict[int, bool] = {}  # o -> copened and not released since
        self.queued: Counter[tuple[int, int, int]] = Counter()  # (o, off, len) of READs queued
        self.last_queued: dict[tuple[int, int, int], float] = {}  # ... when the last of each was queued
        self.delivered_reads: Counter[tuple[int, int, int]] = Counter()
        self.waiting_reads: dict[int, tuple[int, int, int]] = {}  # task -> its READ queued, not yet delivered
        self.abandoned: Counter[tuple[int, int, int]] = Counter()  # READs whose task exited before their delivery
        self.waiters: dict[int, Lifetime] = {}  # task -> the delivered READ it waits on, until its next event
        self.known_o: set[int] = set()
        self.reopens = Reopens()  # the objects opened again after their anon fd's release
        self.reads_after_reopen = 0  # READs delivered (first delivery) on a reopened object
        self.spans = DropsAndReads()  # the objects dropped, and each daemon thread's current read()
        self.calls = DaemonCalls()  # each process's read()s of the device, the restores, the answers
        # of calls.answers, the places of the `copened` returns that ended a live OPEN: a copen the
        # kernel took and then failed (no `copen` tracepoint ended it first)
        self.failed_copens: set[int] = set()
        self.fds_handed = self.fds_released = 0
        self.delivery_ts: list[float] = []  # when each message was delivered, in order
        self.violations: list[Violation] = []
        self.unbinds: list[tuple[float, frozenset[int]]] = []  # each device release, the objects known then
        self.binds: list[tuple[float, int]] = []  # each bind's (ts, ret)

    def feed(self, e: TraceEvent) -> None:
        # a waiter's own wake-up of the daemon's poll queue, after its READ was queued, may come
        # after the READ's delivery: no sign that it went on. Nor is a `read`: a waiter SIGKILLed
        # in the wait for a readahead's READ queues one more on its way out (filemap_get_pages
        # calls read_folio on the folio the failed readahead left, with no fatal-signal check;
        # the killable wait gives it up at once), then exits: what follows decides (its exit, or
        # any other event of it, or the delivery of a READ it queued: deliver)
        if e.event == "read" and (waited := self.waiters.get(e.pid)) is not None and waited.waiter_queued is None:
            waited.waiter_queued = e.ts
        elif e.event not in ("pollwake", "read") and (waited := self.waiters.pop(e.pid, None)) is not None:
            waited.waiter_next = (e.event, e.ts)
        if e.event == "exit" and (charged := self.just_read.get(e.pid)) is not None:
            self.died_reading[charged] += 1  # the account the delivery was counted in, whatever the exit's tgid says
        if e.event != "pollwake":  # one in its context may be an interrupt's (`d.h..`): not the thread's doing
            self.just_read.pop(e.pid, None)
        self.spans.feed(e)
        self.calls.feed(e)
        self.reopens.feed(e)
        f = e.fields
        o = f.get("o")
        if e.event != "drop" and o is not None:
            self.known_o.add(o)
        if e.event == "deliver":
            self.deliver(e)
        elif e.event == "open" and o is not None:
            self.opening[e.pid] = o
        elif e.event in ("copen", "cread"):
            lt = self.live.pop(f.get("mid", -1), None)
            if lt is not None:
                lt.ended_ts, lt.ended_by = e.ts, "answer"
                if lt.o is None:
                    lt.o = o
            if e.event == "copen" and o is not None:
                self.object_open[o] = True
        elif e.event == "copened" and f.get("ret") == 0:
            # taken out by a copen the kernel then failed (no `copen` tracepoint): ended all the same
            lt = self.live.get(f.get("id", -1))
            if lt is not None and lt.op == "OPEN":
                del self.live[lt.msg_id]
                lt.ended_ts, lt.ended_by = e.ts, "answer"
                self.failed_copens.add(len(self.calls.answers) - 1)  # calls was fed this `copened` last
        elif e.event == "fd_release" and o is not None:
            self.object_open[o] = False
            self.fds_released += 1
        elif e.event == "read" and o is not None:
            self.queued[(o, f.get("s", -1), f.get("l", -1))] += 1
            self.last_queued[(o, f.get("s", -1), f.get("l", -1))] = e.ts
            self.waiting_reads[e.pid] = (o, f.get("s", -1), f.get("l", -1))
        elif e.event == "drop" and o is not None:
            # its queued READs were failed (EIO): a task that exits later gave nothing up
            self.waiting_reads = {t: k for t, k in self.waiting_reads.items() if k[0] != o}
            for msg_id, lt in list(self.live.items()):
                if lt.o == o:
                    lt.ended_ts, lt.ended_by = e.ts, "drop"
                    lt.drop_found_waiter = _not_killed(lt)
                    del self.live[msg_id]
        elif e.event == "unbind":
            # the cache is dead: every request is failed with it, unanswered (the readers are
            # done before the run closes the device; without failover, the device dies early);
            # `flushed` instead once a bind follows (death_accounts)
            for lt in self.live.values():
                lt.ended_ts, lt.ended_by = e.ts, "unbind"
            self.live.clear()
            self.waiting_reads.clear()
            self.unbinds.append((e.ts, frozenset(self.known_o)))
        elif e.event == "bind":
            self.binds.append((e.ts, f.get("ret", -1)))
        elif e.event == "exit":
            self.exits[e.process] = e.ts
            if (key := self.waiting_reads.pop(e.pid, None)) is not None:
                self.abandoned[key] += 1

    def deliver(self, e: TraceEvent) -> None:
        f = e.fields
        tgid = e.process
        ret = f.get("ret", -1)
        # a process that reads after a thread of it exited did not die then: the exit was a helper
        # thread's (its death is its last thread's exit, which no read of its follows)
        self.exits.pop(tgid, None)
        if ret > 0:
            self.just_read[e.pid] = tgid
        if ret == 0:
            self.empty[tgid] += 1
        if ret == -errno.EEXIST:
            self.refused(e.ts)
        if ret <= 0:
            return
        self.delivered[tgid] += 1
        self.delivery_ts.append(e.ts)
        msg_id, op, oid = f.get("msg_id", -1), OPCODES.get(f.get("opcode", -1), "?"), f.get("object_id", -1)
        if op == "OPEN":
            self.fds_handed += 1
            if (o := self.opening.pop(e.pid, None)) is not None:
                self.oid_to_o[oid] = o
        o = self.oid_to_o.get(oid)
        if o is not None and (ended := self.taken_before_drop(e.pid, o, msg_id, op, e.ts)) is not None:
            self.check_not_double(ended, e.ts)
            ended.deliveries.append(Delivery(e.ts, tgid, oid))
            return
        lt = self.live.get(msg_id)
        if lt is not None and (lt.op != op or (op == "READ" and (lt.off, lt.length) != (f.get("a"), f.get("b")))):
            # another request under a live one's id: the kernel ended that one where no event shows
            # it, and reused its id (a reader killed while it waited; or a kernel that loses requests)
            lt.ended_ts, lt.ended_by = e.ts, "vanished"
            lt = None
        if lt is None:
            lt = Lifetime(msg_id, op, o)
            self.live[msg_id] = lt
            self.all.append(lt)
        else:
            self.check_not_double(lt, e.ts)
        lt.deliveries.append(Delivery(e.ts, tgid, oid))
        if lt.o is None:
            lt.o = o
        if op == "READ":
            lt.off, lt.length = f.get("a"), f.get("b")
            if o is not None:
                if len(lt.deliveries) == 1:
                    self.reads_after_reopen += o in self.reopens.reopened
                    key = (o, f.get("a", -1), f.get("b", -1))
                    self.delivered_reads[key] += 1
                    if waiters := [t for t, k in self.waiting_reads.items() if k == key]:
                        del self.waiting_reads[waiters[0]]
                        if len(waiters) == 1:
                            lt.waiter = waiters[0]
                            if (before := self.waiters.get(waiters[0])) is not None:
                                # a READ it queued after was delivered: it went on, not killed
                                before.waiter_next = ("read delivered", e.ts)
                            self.waiters[waiters[0]] = lt
                if not self.object_open.get(o, False):
                    self.violations.append(Violation("closed", f"{lt.describe()} delivered at {e.ts:.6f} while its "
                                                     "object was closed (anon fd released, no copen since)"))
        if op == "CLOSE":
            lt.ended_ts, lt.ended_by = e.ts, "delivery"
            del self.live[msg_id]

    def check_not_double(self, lt: Lifetime, ts: float) -> None:
        if lt.deliveries and not any(lt.deliveries[-1].ts < r <= ts for r, _ in self.calls.restores):
            self.violations.append(Violation("double", f"{lt.describe()} delivered again at {ts:.6f} "
                                             f"(first at {lt.deliveries[-1].ts:.6f}) with no restore between"))

    def taken_before_drop(self, task: int, o: int, msg_id: int, op: str, ts: float) -> Lifetime | None:
        """The lifetime a delivery at `ts` belongs to though the object's drop ended it first: the
        read() took the request out before the drop did (it began before the drop returned:
        `read_begin`), and handed it out after (the drop does not wait for a read()). None if the
        object was not dropped, or the read() began after the drop returned (nothing was left to
        take: a new request, judged as one), or the trace has no `read_begin` (older probes)."""
        drop, began = self.spans.last_drop(o), self.spans.read_began.get(task)
        if drop is None or drop.start > ts or began is None or (drop.end is not None and began > drop.end):
            return None
        return next((lt for lt in reversed(self.all) if lt.o == o and lt.msg_id == msg_id and lt.op == op
                     and lt.ended_by == "drop" and lt.ended_ts == drop.start), None)

    def refused(self, ts: float) -> None:
        """read() failed with EEXIST: an OPEN that a `restore` re-marked while its anon fd was
        still open (a supervisor kept it across the death), taken out and failed. No event names
        it; it is the held OPEN that the restore made deliverable again: one whose process died
        before a restore that came before `ts`, not delivered since. A supervised daemon leaves
        at most one such OPEN for its restore; with several, the oldest is taken."""
        held = [lt for lt in self.live.values() if lt.op == "OPEN" and lt.deliveries
                and (died := self.exits.get(lt.deliveries[-1].tgid)) is not None
                and any(died < r < ts for r, _ in self.calls.restores)]
        if held:
            lt = min(held, key=lambda lt: lt.deliveries[-1].ts)
            lt.ended_ts, lt.ended_by = ts, "refused"
            del self.live[lt.msg_id]

    def answers(self) -> list[float]:
        """The ledger's answers, in trace order (ProcessAccount.next_answer_s): every `copen` and
        `cread` tracepoint, and those `copened` returns that ended a live OPEN. A successful
        copen's return, its request already ended by its tracepoint, is no answer again here
        (DaemonCalls.answers has it)."""
        return [ts for i, ts in enumerate(self.calls.answers) if i not in self.calls.copened or i in self.failed_copens]


def build(events: Iterable[TraceEvent], incomplete: str | None = None, unmounted: frozenset[int] = frozenset()) -> Ledger:
    """The ledger of a whole trace; none (unavailable, `incomplete` says why) from a trace that
    lost events, whose rules would read a lost event as a lost request."""
    if incomplete:
        return Ledger.none(incomplete)
    b = _Builder()
    for e in events:
        b.feed(e)
    deaths, dead_objects = _death_accounts(b)
    violations = list(b.violations)
    restores, answers = [ts for ts, _ in b.calls.restores], b.answers()
    accounts = []
    for tgid in sorted(b.delivered.keys() | b.empty.keys()):
        died = b.exits.get(tgid)
        held = redelivered = by_kernel = no_restore = taken_over = 0
        held_ids: list[int] = []
        redelivered_ids: list[int] = []
        waits: list[float] = []
        overtaken = [0]
        next_answer = None
        if died is not None:
            next_answer = next((round(a - died, 4) for a in answers if a > died), None)
            for lt in b.all:
                mine = [d for d in lt.deliveries if d.tgid == tgid and d.ts < died]
                if not mine or (lt.ended_ts is not None and lt.ended_ts <= died):
                    continue
                held += 1
                held_ids.append(lt.msg_id)
                restore = next((r for r in restores if r > died), None)
                if restore is None:
                    no_restore += 1
                    # another process read the device after the death, and wrote no `restore`: what
                    # it did not take over by msg_id, and the kernel had not ended by then, is lost
                    # by the daemon (a run's last death has no process after it)
                    later = min((t for g, t in b.calls.first_read.items() if g != tgid and t > died), default=None)
                    if later is None:
                        continue
                    if lt.ended_by == "answer" and lt.ended_ts is not None:
                        taken_over += 1
                    elif lt.ended_by in ("drop", "unbind", "flushed") and lt.ended_ts is not None and lt.ended_ts < later \
                            and lt.drop_found_waiter is None:
                        by_kernel += 1
                    elif lt.ended_by != "refused":
                        violations.append(Violation("held", f"{lt.describe()}, held by process {tgid} when it died "
                                                    f"({died:.6f}), was never delivered again: no process wrote "
                                                    f"`restore` after, though process(es) read the device from "
                                                    f"{later:.6f}{_drop_came_late(lt)}", "daemon"))
                elif again := next((d.ts for d in lt.deliveries if d.ts > restore), None):
                    redelivered += 1
                    redelivered_ids.append(lt.msg_id)
                    if lt.ended_by == "answer" and lt.ended_ts is not None:
                        waits.append(lt.ended_ts - lt.deliveries[0].ts)
                    # the kernel's read() searches from the last id delivered upwards: a request a
                    # restore marked again waits while newer ones keep coming
                    overtaken.append(_between(b.delivery_ts, restore, again) - 1)
                elif lt.ended_by in ("drop", "unbind", "flushed") and lt.ended_ts is not None and lt.ended_ts < restore \
                        and lt.drop_found_waiter is None:
                    by_kernel += 1  # its object withdrawn, or the cache, before a restore could bring it back
                elif lt.ended_by == "drop" and lt.op == "OPEN" and lt.o is not None and lt.o in unmounted:
                    by_kernel += 1  # the reopen's OPEN, its reader unmounted on purpose after the restore: reopenumount judges it
                elif lt.ended_by == "answer" and lt.ended_ts is not None and lt.ended_ts < restore:
                    taken_over += 1
                elif lt.ended_by == "refused" and lt.ended_ts is not None and lt.ended_ts > restore:
                    redelivered += 1  # delivered again, and refused: its anon fd was still open (EEXIST)
                    redelivered_ids.append(lt.msg_id)
                else:
                    newer = _between(b.delivery_ts, restore, float("inf"))
                    violations.append(Violation("held", f"{lt.describe()}, held by process {tgid} when it died "
                                                f"({died:.6f}), was not delivered again after the restore at {restore:.6f} "
                                                f"({newer} other messages were){_drop_came_late(lt)}"))
        accounts.append(ProcessAccount(tgid, b.delivered[tgid], b.empty[tgid], died, held, redelivered, by_kernel,
                                       no_restore, taken_over, round(max(waits), 4) if waits else None,
                                       max(overtaken), next_answer, tuple(held_ids), tuple(redelivered_ids),
                                       b.died_reading[tgid]))
    for lt in [*b.live.values(), *(lt for lt in b.all if lt.ended_by in ("unbind", "vanished"))]:
        how = "" if lt.ended_ts is None else {
            "unbind": f", failed when the device was closed at {lt.ended_ts:.6f}",
            "vanished": f", its msg_id given to another request at {lt.ended_ts:.6f}"}.get(lt.ended_by or "", "")
        last = lt.deliveries[-1]
        died = b.exits.get(last.tgid)
        if lt.ended_by == "vanished":
            blame, why = "kernel", ""
        elif lt.o is None and lt.op != "OPEN":  # delivered for an object id no OPEN handed out (-1: closed)
            blame, why = "kernel", "; no OPEN handed out its object id"
        elif died is None or (lt.ended_ts is not None and died > lt.ended_ts):
            # alive to answer it (and, where the device went first, letting it go unanswered)
            blame, why = "daemon", f"; process {last.tgid} was alive to answer it"
        elif not any(died < r < (lt.ended_ts or float("inf")) for r in restores):
            blame, why = "daemon", f"; process {last.tgid} died holding it and no process wrote `restore` after"
        else:
            blame, why = "kernel", f"; process {last.tgid} died holding it and a restore after did not bring it back"
        violations.append(Violation("unanswered", f"{lt.describe()}, last delivered at {last.ts:.6f} "
                                    f"to process {last.tgid}, was never answered{how}{why}", blame))
    available = bool(b.delivered or b.empty)
    for (o, off, length), n in sorted(b.queued.items()) if available else ():
        missing = n - b.delivered_reads.get((o, off, length), 0) - b.abandoned.get((o, off, length), 0)
        if missing > 0 and o not in b.spans.drops and o not in dead_objects:
            read_after = b.calls.last_read > b.last_queued[(o, off, length)]
            violations.append(Violation("unanswered", f"{missing} READ(s) of object {o} off {off} len {length} "
                                        "queued by the kernel and never delivered" +
                                        ("" if read_after else "; no daemon read the device after"),
                                        "kernel" if read_after else "daemon"))
    return Ledger(
        available=available,
        processes=tuple(accounts),
        restores=tuple(restores),
        lifetimes=len(b.all),
        by_op=dict(Counter(lt.op for lt in b.all)),
        queued_reads=sum(b.queued.values()),
        abandoned_reads=sum(b.abandoned.values()),
        drops=len(b.spans.drops),
        unknown_drop_ids=sum(1 for o in b.spans.drops if o not in b.known_o),
        violations=tuple(violations),
        anon_fds_handed=b.fds_handed,
        anon_fds_released=b.fds_released,
        cache_deaths=tuple(deaths),
        answered=dict(Counter(lt.op for lt in b.all if lt.ended_by == "answer")),
        reads_after_reopen=b.reads_after_reopen,
    )


def _not_killed(lt: Lifetime) -> str | None:
    """At its object's drop, how `lt`'s waiter shows it was not killed while it waited; None when
    it was (its first event after the delivery, READs it queued and nobody was delivered aside,
    is its exit: the killable wait takes the request out), or the READ has no known waiter."""
    if lt.waiter is None:
        return None
    if lt.waiter_next is None:
        since = "no event of it since the delivery" if lt.waiter_queued is None else \
            f"it queued another READ at {lt.waiter_queued:.6f}, and no exit followed"
        return f"task {lt.waiter}, was not killed ({since})"
    event, ts = lt.waiter_next
    return None if event == "exit" else f"task {lt.waiter}, went on at {ts:.6f} ({event}), not killed"


def _drop_came_late(lt: Lifetime) -> str:
    """What a violation says of a drop that does not excuse `lt` (Lifetime.drop_found_waiter)."""
    if lt.drop_found_waiter is None:
        return ""
    return (f"; its object's drop at {lt.ended_ts:.6f} does not excuse it: its reader, {lt.drop_found_waiter}, "
            "and a waiting reader keeps its object: it had ended before, with no answer")


def _death_accounts(b: _Builder) -> tuple[list[CacheDeath], set[int]]:
    """The caches that died mid-run (a release, then a successful bind), with what each failed;
    their lifetimes re-marked `flushed`; and the objects that died with them."""
    deaths: list[CacheDeath] = []
    dead: set[int] = set()
    for ts, known in b.unbinds:
        rebound = next((t for t, ret in b.binds if t > ts and ret == 0), None)
        if rebound is None:
            continue
        delivered = 0
        for lt in b.all:
            if lt.ended_by == "unbind" and lt.ended_ts == ts:
                lt.ended_by = "flushed"
                delivered += 1
        objects = known - dead
        queued = sum(max(0, n - b.delivered_reads.get(key, 0)) for key, n in b.queued.items()
                     if key[0] in objects and key[0] not in b.spans.drops)
        dead |= objects
        deaths.append(CacheDeath(ts, rebound, sum(1 for t, ret in b.binds if ts < t < rebound and ret != 0),
                                 delivered, queued))
    return deaths, dead


def _between(times: list[float], start: float, end: float) -> int:
    """How many of the sorted `times` fall in (start, end]."""
    return bisect.bisect_right(times, end) - bisect.bisect_right(times, start)


def disagreements(ledger: Ledger, recv_by_pid: dict[int, int]) -> list[str]:
    """Where the daemon's own log (requests it logged as received, by process) and the kernel's
    ledger (requests delivered, by process) differ. A process killed between its read() and
    its log line may be short by the deliveries its threads died on, and by no more (a gated kill
    lands as a request is delivered); anything else says one of the two is wrong."""
    out = []
    accounts = {p.tgid: p for p in ledger.processes}
    for pid in sorted(accounts.keys() | recv_by_pid.keys()):
        account = accounts.get(pid)
        kernel, logged = (account.delivered if account else 0), recv_by_pid.get(pid, 0)
        unseen = account.died_reading if account else 0
        if not kernel - unseen <= logged <= kernel:
            dying = f" ({unseen} of them as it died)" if unseen else ""
            out.append(f"process {pid}: the kernel delivered {kernel} request(s){dying}, the daemon logged {logged}")
    return out
