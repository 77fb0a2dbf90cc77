"""The cachefiles on-demand daemon: serves EROFS blobs to the kernel, one incarnation a process.

Started by keeper.py (or forked, imported already, by the zygote: `--zygote-fd`, zygote.py), it
waits on a socket for its activation: its incarnation number and the /dev/cachefiles fd, queued
there at once (a cold start) or, for a standby started ahead of the current incarnation's death,
only once that one is reaped. An incarnation after the first writes
`restore` so that requests its dead predecessor had read but not answered are
delivered again. Every message is logged (eventlog.py) before it is acted on and again when it
is answered, so the host can tell which requests a killed incarnation was holding.

Fault injection, all driven by the host: SIGUSR1 makes the daemon close the anon fd of a live
object (the kernel must reopen it on the next READ); `crash_plan` names, per incarnation, a
protocol point at which it SIGKILLs itself; `threads` > 1 serves the device from several threads.
A cache death (Fault.CACHE_DEATH, from the keeper) makes it let the device go while its other
threads poll, read and serve, finish what they were answering, and exit.

Every serving thread blocks in poll() with no timeout, as the series' own demo daemon does: a
kernel that forgets to wake the daemon for a request then leaves it asleep for good, and the
readers' watchdog reports the stall. A poll with a timeout would serve that request a tick
later and hide the kernel's bug. What else must wake a thread reaches it through an eventfd in
the same poll set (`Wake`).
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import fcntl
import mmap
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable
from dataclasses import dataclass

import protocol
import zygote
from contract import (AT_RESTORE, CACHE_DEATH_RT_OFFSET, NETFS_COOKIES, REOPEN_CLOSED, REOPEN_HELD, REOPEN_NONE, REOPEN_RESTORED,
                      UMOUNT_REOPEN_RT_OFFSET, CrashPoint, Event, Fault, GuestConfig, Probe, ProbeOutcome, RestoreWhy,
                      StaleOrigin, cookie_live, daemon_serving)
from eventlog import EventLog, write_atomically
from keeper import await_activation, await_go, recv_msg, send_msg, text_of

ALIGN = 4096
# The patch-4 probe (Daemon.probe_epollin): empty reads in a row that no correct kernel makes
# while the delivery lock is held, and the deliveries it drains before it gives up (busy).
PROBE_SPINS = 64
PROBE_DRAIN = 256
# The wake-up probe (Watcher): how long a thread asleep in poll() before a reopen's copen may stay
# asleep after it. A correct kernel wakes it within the copen; only a broken one pays this.
WAKE_BOUND_S = 5.0
# ... started once the device stayed quiet this long: the readers all wait on requests held back
QUIET_MS = 200
# A crash point fires only once the incarnation has answered this many requests (Daemon.point).
CRASH_ARMED_AFTER = 5
# The signals whose handlers wake the serving threads. Python runs handlers in the main thread
# only, so the workers block these: the kernel then delivers them to the main thread, whose
# poll() they interrupt, and the handler runs at once instead of at its next wake-up.
# The faults the host asks of a live daemon by signal (contract.FAULT_SIGNALS), each served by
# one thread
REQUEST_SIGNALS: dict[int, str] = {signal.SIGUSR1: Fault.CLOSE, signal.SIGRTMIN + 1: Fault.RESTORE_LIVE,
                   signal.SIGRTMIN + 2: Fault.STALE, signal.SIGRTMIN + CACHE_DEATH_RT_OFFSET: Fault.CACHE_DEATH,
                   signal.SIGRTMIN + UMOUNT_REOPEN_RT_OFFSET: Fault.UMOUNT_REOPEN}
WAKE_SIGNALS = (signal.SIGTERM, *REQUEST_SIGNALS)
# Fault.STALE: late answers sent each time, the most recent ones and as many taken at random
STALE_RECENT = 4
STALE_RANDOM = 4
STALE_REMEMBERED = 4096  # answers kept as candidates
NEVER_DELIVERED = 1 << 24  # added to the highest msg_id seen: an id no request has had
CLOSED_BY_FAULT = "fault"  # CacheObject.closed
CLOSED_BY_REQUEST = "close-request"
# An anon fd's object id once its fd is closed (CACHEFILES_ONDEMAND_ID_CLOSED, -1 as a u32)
CLOSED_OBJECT_ID = 0xFFFFFFFF
# A READ's answer once the device is let go (Fault.CACHE_DEATH): its request failed with the cache
# (READ_COMPLETE: no such msg_id), or its reader, failed, unmounted and its object's file dropped
# (the data write: ENOBUFS)
ORPHANED_ERRORS = {("READ_COMPLETE", errno.EINVAL), ("pwrite", errno.ENOBUFS)}
# Probe.LATE_WRITE: between tries, while the withdrawal goes on in the kernel's worker
LATE_WRITE_PAUSE_S = 0.01
# Fault.UMOUNT_REOPEN: how long a held OPEN waits for the keeper, as a share of the stall bound
# (the keeper's own waits are a sixth of it, and it ends the hold whatever happened)
HOLD_SHARE = 1 / 3

def refused(call: Callable[..., object], *args: object) -> int | None:
    """The errno `call` failed with; None if it did not."""
    try:
        call(*args)
    except OSError as e:
        return e.errno
    return None


class Supervisor:
    """GuestConfig.supervise_fds: the daemon's end of the channel the keeper handed it the device
    fd over. Every anon fd is deposited there as soon as its OPEN is read (from then on a death
    does not close it), and taken back (`drop`, and its answer awaited) before the
    daemon closes its own copy, so that the daemon's close is still the one that releases it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def receive_held(self) -> list[tuple[dict[str, Any], int]]:
        """What the keeper held across the last death, up to its `end`."""
        held: list[tuple[dict[str, Any], int]] = []
        while True:
            meta, fd = recv_msg(self.sock)
            if meta.get("op") == "end":
                return held
            if fd is not None:
                held.append((meta, fd))

    def tell(self, meta: dict[str, Any], fd: int | None = None, answer: bool = False) -> None:
        with self.lock:
            try:
                send_msg(self.sock, meta, fd)
                if answer:
                    recv_msg(self.sock)
            except (OSError, EOFError):
                pass  # the keeper is stopping: nothing is held any more

    def deposit(self, object_id: int, fd: int, cookie: str, msg_id: int) -> None:
        self.tell({"op": "deposit", "object_id": object_id, "cookie": cookie, "msg_id": msg_id, "answered": False}, fd)

    def answered(self, object_id: int) -> None:
        self.tell({"op": "answered", "object_id": object_id})

    def drop(self, object_id: int) -> None:
        self.tell({"op": "drop", "object_id": object_id}, answer=True)


@dataclass
class Blob:
    fd: int
    size: int


class Wake:
    """How a signal handler (main thread) reaches every thread that sleeps in poll() with no
    timeout: eventfds, polled beside the device fd by each of them.

    `stop` is written once and never read: readable for good, it wakes every thread, now and
    whenever it polls again, and each one leaves. Each host fault has a semaphore eventfd
    (`requests`): each signal adds one, and a read() takes exactly one, so however many threads
    wake for it, the kernel gives each request to one of them; the others find it empty and sleep
    again."""

    def __init__(self) -> None:
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        self.stop = os.eventfd(0, flags)
        self.requests = {kind: os.eventfd(0, flags | os.EFD_SEMAPHORE) for kind in REQUEST_SIGNALS.values()}

    def request_stop(self) -> None:
        os.eventfd_write(self.stop, 1)

    def request(self, kind: str) -> None:
        os.eventfd_write(self.requests[kind], 1)

    def take(self, kind: str) -> bool:
        """Whether this thread got a `kind` request to serve (False: another thread took it)."""
        try:
            os.eventfd_read(self.requests[kind])
        except BlockingIOError:
            return False
        return True


class RestoreGate:
    """`restore` re-marks every request the kernel holds, also those a live daemon holds. An OPEN
    delivered and not yet answered would then be delivered again while its anon fd is open, and
    the kernel fails it with EEXIST (the protocol's rule, not a bug): the mount or reopen waiting
    on it fails. So a read() of the device, and the answer of an OPEN it delivered, hold the gate
    shared; a restore holds it alone. READs re-delivered to the live daemon are what a live
    restore is about: they are served twice, and the second answer is refused (REDUNDANT)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.shared = 0
        self.restoring = False

    def enter(self) -> None:
        with self.cond:
            while self.restoring:
                self.cond.wait()
            self.shared += 1

    def leave(self) -> None:
        with self.cond:
            self.shared -= 1
            if self.shared == 0:
                self.cond.notify_all()

    def exclusive(self, action: Callable[[], None]) -> None:
        with self.cond:
            while self.restoring:
                self.cond.wait()
            self.restoring = True
            while self.shared:
                self.cond.wait()
        try:
            action()
        finally:
            with self.cond:
                self.restoring = False
                self.cond.notify_all()


@dataclass
class CacheObject:
    anon_fd: int
    blob: Blob
    name: str
    busy: int = 0  # READs being served on it: its fd is not closed under them (unless lockless)
    # its anon fd was replaced by /dev/null while READs used it, and is closed when the last is
    # done: by a lockless close (FAULT: those READs are lost) or a CLOSE request (their requests
    # were answered by another thread: only a READ delivered twice can be in use at a CLOSE)
    closed: str | None = None
    lost: int = 0  # READs on it that failed because of that: a restore brings them back


@dataclass
class Accepted:
    """A message read from the device, and the work that answers it."""
    req: protocol.Request
    run: Callable[[], None]
    obj: CacheObject | None = None  # a READ's object, pinned (None: unknown when it was read)


class Watcher:
    """A thread asleep in poll() on the device while a reopen's copen is written: the copen makes
    the waiting READ deliverable, and the kernel must wake whoever sleeps on the device for it
    (a daemon that answers from another thread than the one that polls would sleep on for good).
    Started only when the device has been quiet for a while (probe_epollin settled, and every
    other thread is kept from reading), so it sleeps until something wakes it; a request that
    arrives meanwhile wakes it too, which can hide a missing wake-up but never fake one."""

    SETTLE_S = 0.02  # for the thread to reach poll() before the copen

    def __init__(self, device_fd: int, bound_s: float) -> None:
        self.bound_s = bound_s  # how long the thread sleeps at most
        self.poller = select.poll()
        self.poller.register(device_fd, select.POLLIN)
        self.woken = threading.Event()
        self.thread = threading.Thread(target=self.sleep, name="wake-probe", daemon=True)
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)  # as serve()'s workers
        try:
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        time.sleep(self.SETTLE_S)

    def sleep(self) -> None:
        if self.poller.poll(int(self.bound_s * 1000)):
            self.woken.set()

    def wait(self) -> bool:
        self.thread.join(self.bound_s + 1)
        return self.woken.is_set()


class Daemon:
    def __init__(self, config: GuestConfig, device_fd: int, incarnation: int,
                 supervisor: Supervisor | None = None) -> None:
        self.config = config
        self.supervisor = supervisor
        self.inherited: dict[int, str] = {}  # object id -> cookie: anon fds taken over (supervise_fds)
        # ... of those, the reopen a dead incarnation had not answered: re-delivered by the
        # restore while its fd is held, it must be refused with EEXIST (Probe.SECOND_FD)
        self.awaiting_eexist: dict[int, str] = {}
        self.device_fd = device_fd
        self.incarnation = incarnation
        self.log = EventLog(config.daemon_log, who="daemon", incarnation=incarnation, pid=os.getpid())
        self.read_delay_s = config.read_delay_s
        self.images = config.images
        self.crash_point = config.crash_point(incarnation)
        self.threads = config.threads
        self.blobs: dict[str, Blob] = {}
        self.objects: dict[int, CacheObject] = {}
        self.lock = threading.Lock()  # objects and blobs, when several threads serve
        self.delivery = threading.Lock()  # a read() from the device and the pinning of what it delivered
        self.local = threading.local()  # each thread's aligned buffer
        self.rng = random.Random(f"{config.seed}/{incarnation}")
        self.wake = Wake()
        self.answered = 0  # requests answered: a crash point is armed after CRASH_ARMED_AFTER
        self.cookies_opened: set[str] = set()  # answered with a size (by this incarnation, or a dead one: load_dead_answers): an OPEN again is a reopen
        self.gate = RestoreGate()
        self.lockless = config.lockless
        self.devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self.closed_ids: set[int] = set()  # objects whose fd this incarnation closed unasked
        # The answers the kernel accepted: msg_id -> the answer's sequence number (0: a dead
        # incarnation's), and the candidates for late answers (Fault.STALE)
        self.answer_seq = 0
        self.answered_at: dict[int, int] = {}
        self.answers: collections.deque[tuple[str, int, int, int, str]] = collections.deque(maxlen=STALE_REMEMBERED)
        self.max_msg_id = 0
        self.deliveries: collections.Counter[int] = collections.Counter()  # msg_id -> times delivered here
        self.closed_at_copen: dict[int, str] = {}  # object_id -> cookie: fd closed before its copen
        self.read_on_closed: set[int] = set()  # msg_ids of READs the close-copen probe found a violation in
        self.device_dead = False  # Fault.CACHE_DEATH: the device fd let go (set before it goes)

    def remember_answer(self, op: str, msg_id: int, object_id: int, size: int = 0, by: str = StaleOrigin.ANSWERED) -> None:
        """An answer the kernel accepted (or a dead incarnation's, `by`="dead", seq 0)."""
        with self.lock:
            if by == StaleOrigin.ANSWERED:
                self.answer_seq += 1
            self.answered_at.setdefault(msg_id, self.answer_seq if by == StaleOrigin.ANSWERED else 0)
            self.answers.append((op, msg_id, object_id, size, by))

    def load_dead_answers(self) -> None:
        """The answers earlier incarnations logged: late answers from the dead (Fault.STALE),
        msg_ids the kernel must never deliver again, and the cookies they opened (an OPEN for one
        now is a reopen, which close_during_copen may take). Read in the background; a delivery checked
        before it is done is checked against less, never wrongly."""
        try:
            with open(self.config.daemon_log, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return
        # a cache that died took its msg_ids with it: the one bound since numbers from 0 again.
        # What the incarnation that let it go logged is the old cache's, even a line written after
        # its device_closed by another of its threads.
        since, old_cache = 0, 0
        for i, line in enumerate(lines):
            if b'"device_closed"' in line:
                try:
                    since, old_cache = i, int(json.loads(line).get("incarnation", 0))
                except ValueError:
                    pass
        asked: dict[tuple[int, int], str] = {}  # (incarnation, msg_id) of an OPEN -> its cookie
        for line in lines[since:]:
            if b'"done"' not in line and b'"OPEN"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            inc = e.get("incarnation", self.incarnation)
            if inc >= self.incarnation or inc <= old_cache or e.get("op") not in ("OPEN", "READ"):
                continue
            if e.get("event") == Event.RECV and e["op"] == "OPEN":
                asked[(inc, e.get("msg_id", -1))] = str(e.get("cookie"))
            elif e.get("event") == Event.DONE:
                self.remember_answer(e["op"], int(e["msg_id"]), int(e.get("object_id", 0)), int(e.get("size", 0)), StaleOrigin.DEAD)
                if e["op"] == "OPEN" and e.get("size", -1) >= 0 and (inc, e["msg_id"]) in asked:
                    with self.lock:  # opened by a dead incarnation: an OPEN for it now is a reopen
                        self.cookies_opened.add(asked[(inc, e["msg_id"])])

    def dawdle(self) -> None:
        """GuestConfig.dawdle_s: inside a step of an answer, so that a kill at a kernel state
        (statekill.py, which sees the state a little after it begins) lands in the step."""
        if self.config.dawdle_s:
            time.sleep(self.config.dawdle_s)

    def point(self, name: str) -> None:
        """Die here, by SIGKILL, if this incarnation was told to, and once it has answered
        CRASH_ARMED_AFTER requests (after_restore: at once, it comes before any): an incarnation
        serves a while before it dies, so that what its predecessor held is served again rather
        than carried through a chain of deaths, a wait that is the fault plan's, not the kernel's."""
        if self.crash_point == name and (name == CrashPoint.AFTER_RESTORE or self.answered >= CRASH_ARMED_AFTER):
            self.log.emit(Event.CRASH_POINT, point=name)
            os.kill(os.getpid(), signal.SIGKILL)

    def done(self, **fields: object) -> None:
        with self.lock:
            self.answered += 1
        self.log.emit(Event.DONE, **fields)

    def let_go(self, object_id: int) -> None:
        """Before the daemon closes (or replaces) an anon fd: the supervisor's copy goes first."""
        if self.supervisor is not None:
            self.supervisor.drop(object_id)

    # -- start-up --------------------------------------------------------------------------
    def take_over(self, held: list[tuple[dict[str, Any], int]]) -> None:
        """supervise_fds, before the `restore`: the anon fds the keeper held across the death.
        Their objects are still OPEN; an OPEN the dead incarnation had not answered is answered
        now by its msg_id (the kernel still holds it, delivered: a `restore` first would deliver
        it again while its fd is open, and the kernel would fail it with EEXIST). A copen refused
        with EINVAL was the dead one's, sent before it could say so: the object is open.

        Except one reopen's OPEN (the keeper saw its cookie before): left unanswered, so that the
        `restore` re-delivers it while its fd is held and the kernel is asked to refuse it
        (Probe.SECOND_FD; a reopen's waiter only tries again). Its object is registered all the
        same: the dead one may have answered it after all, and READs then come."""
        for meta, fd in held:
            oid, name, msg_id = int(meta["object_id"]), str(meta["cookie"]), int(meta["msg_id"])
            blob = self.blob(name)
            copen_errno = None
            # one at most: the kernel's trace says that a read() was refused, not which OPEN it
            # refused; the ledger can tell only while one held OPEN can have been
            awaiting = not meta.get("answered") and bool(meta.get("reopen")) and not self.awaiting_eexist
            if not meta.get("answered") and not awaiting:
                size = blob.size if blob else protocol.copen_error(errno.ENOENT)
                try:
                    os.write(self.device_fd, protocol.copen_command(msg_id, size))
                except OSError as e:
                    copen_errno = e.errno
                else:
                    self.remember_answer("OPEN", msg_id, oid, size)
                    self.done(msg_id=msg_id, op="OPEN", object_id=oid, size=size, inherited=True)
                if self.supervisor is not None:
                    self.supervisor.answered(oid)
            self.log.emit(Event.INHERITED, object_id=oid, cookie=name, msg_id=msg_id,
                          answered=bool(meta.get("answered")), copen_errno=copen_errno, awaiting_eexist=awaiting)
            if blob is None or copen_errno not in (None, errno.EINVAL):
                self.let_go(oid)
                os.close(fd)
                continue
            with self.lock:
                self.objects[oid] = CacheObject(fd, blob, name)
                self.cookies_opened.add(name)
                self.inherited[oid] = name
                if awaiting:
                    self.awaiting_eexist[oid] = name

    def restore(self) -> None:
        """Re-mark every request the kernel still holds as new; only after the old one is gone."""
        self.write_restore(RestoreWhy.START)
        self.wait_for_umount_at_restore()
        self.point(CrashPoint.AFTER_RESTORE)

    def wait_for_umount_at_restore(self) -> None:
        """Fault.UMOUNT_REOPEN at a point of AT_RESTORE: the keeper killed the incarnation that held
        the reopen's OPEN; this one's restore has marked it new again. Nothing is read until the
        keeper says go (it takes the point out of its file, and unmounts the mount at once, or
        once we serve), so that the drop races the OPEN's re-delivery; bounded, as every hold."""
        if self.umount_at() not in AT_RESTORE:
            return
        write_atomically(self.config.reopen_state_file, f"{REOPEN_RESTORED} {os.getpid()}\n")
        start = time.monotonic()
        while self.umount_at() in AT_RESTORE and time.monotonic() - start < self.config.stall_bound_s * HOLD_SHARE:
            time.sleep(0.001)
        self.log.emit(Event.RESTORE_GATE, waited_s=round(time.monotonic() - start, 4))

    def write_restore(self, why: str) -> None:
        """`why`: start (what a dead incarnation held), live (Fault.RESTORE_LIVE: while other
        threads serve), lost (READs this daemon lost when it closed their fd under them)."""
        def write() -> None:
            try:
                os.write(self.device_fd, b"restore")
                self.log.emit(Event.RESTORE, ok=True, why=why)
                self.dawdle()  # still alone: nothing is read until a kill at `restoring` had its chance
            except OSError as e:
                self.log.emit(Event.RESTORE, ok=False, why=why, errno=e.errno, error=e.strerror)
        self.gate.exclusive(write)

    # -- requests --------------------------------------------------------------------------
    def blob(self, fsid: str) -> Blob | None:
        image = fsid.split(".", 1)[0]  # fsids are <image>.<round>: a fresh cookie each round
        path = self.images.get(image)
        if path is None:
            return None
        with self.lock:
            if image not in self.blobs:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self.blobs[image] = Blob(fd, os.fstat(fd).st_size)
            return self.blobs[image]

    def on_open(self, req: protocol.OpenRequest, gate_held: bool = False) -> None:
        try:
            self.answer_open(req)
        finally:
            if gate_held:
                self.gate.leave()

    def answer_open(self, req: protocol.OpenRequest) -> None:
        if self.device_dead:
            self.orphaned(req, "copen")
            return
        name = protocol.blob_name(req.volume_key, req.cookie_key)
        blob = self.blob(name) if req.volume_key.startswith("erofs,") else None
        size = blob.size if blob else protocol.copen_error(errno.ENOENT)
        if size >= 0 and name == self.cookie_to_hold():
            self.hold_open(req, size, name, blob)
            return
        self.point(CrashPoint.OPEN_BEFORE_COPEN)
        self.dawdle()
        # Not once the end check began: its re-read mounts first-round cookies again, new objects
        # whose OPEN, failed, would fail the mount (a reopen's failed OPEN is only sent again).
        if (size >= 0 and name in self.cookies_opened and self.rng.random() < self.config.close_during_copen
                and not os.path.exists(self.config.end_check_file)):
            self.close_during_copen(req, size, name)
            return
        if self.lockless:
            # No lock keeps the other threads from reading: the probes' premise is gone.
            self.copen(req, size, name, blob)
            return
        # The delivery lock from the probe to the copen: no other thread reads a request meanwhile.
        with self.delivery:
            if self.device_dead:  # let go while this thread waited for the lock: no probe of /dev/null
                self.orphaned(req, "copen")
                return
            # A reopen this incarnation can tell (it opened the cookie before) also has its wake-up
            # probed, once nothing has come for QUIET_MS: every reader then waits on a request held
            # here, so nothing but this copen can make the device readable.
            reopen = name in self.cookies_opened and size >= 0  # a refused copen wakes nobody, rightly
            # The end check's re-read mounts first-round cookies again: new objects, whose copen
            # wakes nobody (the cache file holds the data). No question is asked of those.
            held: list[Accepted] = []
            watcher = None
            if not os.path.exists(self.config.end_check_file):
                held, outcome = self.probe_epollin(req, name, settle_ms=QUIET_MS if reopen else 0)
                watcher = Watcher(self.device_fd, WAKE_BOUND_S) if reopen and outcome == ProbeOutcome.QUIET else None
            try:
                os.write(self.device_fd, protocol.copen_command(req.msg_id, size))
            except OSError as e:
                self.let_go(req.object_id)
                os.close(req.fd)
                self.log.emit(Event.ERROR, msg_id=req.msg_id, op="OPEN", object_id=req.object_id,
                              errno=e.errno, error=e.strerror, call="copen")
                answered = False
            else:
                answered = True
                if watcher is not None:
                    woken = watcher.wait()
                    self.log.emit(Event.PROBE, probe=Probe.WAKEUP, msg_id=req.msg_id, object_id=req.object_id,
                                  cookie=name, outcome=ProbeOutcome.WOKEN if woken else ProbeOutcome.ASLEEP)
            # registered before another thread may read: the copen made the object's READs
            # deliverable, and one read before this would find no object to answer it through
            if answered:
                self.opened(req, size, name, blob)
        self.serve_all(held)

    def copen(self, req: protocol.OpenRequest, size: int, name: str, blob: Blob | None, held: bool = False) -> None:
        """Lockless: the object is known before its copen is written, as real daemons do it: the
        moment the copen is in, another thread may be handed a READ for it. `held`: an OPEN held
        while its mount was unmounted (hold_open), whose refusal with EINVAL is the kernel's
        right answer (DROPPED), not an error."""
        if blob is not None:
            with self.lock:
                self.objects[req.object_id] = CacheObject(req.fd, blob, name)
        try:
            os.write(self.device_fd, protocol.copen_command(req.msg_id, size))
        except OSError as e:
            with self.lock:  # refused: no READ can have come for it
                self.objects.pop(req.object_id, None)
            self.let_go(req.object_id)
            os.close(req.fd)
            # held, or an OPEN a restore handed out again as the keeper unmounted its mount
            # (Fault.UMOUNT_REOPEN at a restore: adversarial debug seed 3), its cookie dropped since
            dropped = e.errno == errno.EINVAL and (held or self.cookie_dropped(name))
            self.log.emit(Event.DROPPED if dropped else Event.ERROR, msg_id=req.msg_id,
                          op="OPEN", object_id=req.object_id, errno=e.errno, error=e.strerror, call="copen")
            return
        self.opened(req, size, name, blob)

    @staticmethod
    def cookie_dropped(fsid: str) -> bool:
        """Whether the kernel lists `fsid`'s cookie as dropped, or no more (its object dropped)."""
        return (cookies := text_of(NETFS_COOKIES)) is not None and not cookie_live(cookies, fsid)

    def cookie_to_hold(self) -> str | None:
        """Fault.UMOUNT_REOPEN: the cookie whose OPENs are held, while the keeper's file names it.
        Read afresh at each OPEN: a later incarnation holds the reopen too (its predecessor died
        holding it, and the restore delivered it again)."""
        return self._reopen_line(0)

    def umount_at(self) -> str | None:
        """Fault.UMOUNT_REOPEN: a point of AT_RESTORE once the keeper is to kill the OPEN's holder."""
        return self._reopen_line(1)

    def _reopen_line(self, n: int) -> str | None:
        if not self.config.reopen_file:
            return None
        try:
            with open(self.config.reopen_file) as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        return lines[n].strip() or None if len(lines) > n else None

    def hold_open(self, req: protocol.OpenRequest, size: int, name: str, blob: Blob | None) -> None:
        """Fault.UMOUNT_REOPEN: the reopen's OPEN of the object close_for_umount closed, held
        unanswered (the kernel's reopen work waits on it) until the keeper has unmounted its
        mount and ends the hold, then answered: late, after the drop, so the kernel must refuse
        it. No lock of ours is held meanwhile, but the restore gate is (an OPEN delivered holds
        it until answered, or a restore would deliver it again into EEXIST): a live restore waits
        for the hold, and the threads with it. The hold is bounded, and ends with the device."""
        write_atomically(self.config.reopen_state_file, f"{REOPEN_HELD} {req.msg_id}\n")
        self.log.emit(Event.HELD_OPEN, msg_id=req.msg_id, object_id=req.object_id, cookie=name)
        deadline = time.monotonic() + self.config.stall_bound_s * HOLD_SHARE
        while self.cookie_to_hold() == name and time.monotonic() < deadline and not self.device_dead:
            time.sleep(0.005)
        if self.device_dead:
            self.orphaned(req, "copen")
            return
        self.copen(req, size, name, blob, held=True)

    def opened(self, req: protocol.OpenRequest, size: int, name: str, blob: Blob | None) -> None:
        """The copen was accepted."""
        self.remember_answer("OPEN", req.msg_id, req.object_id, size)
        if self.supervisor is not None:
            self.supervisor.answered(req.object_id)
        self.point(CrashPoint.COPEN_BEFORE_USE)
        if blob is None:
            self.let_go(req.object_id)
            os.close(req.fd)
        else:
            with self.lock:
                self.objects.setdefault(req.object_id, CacheObject(req.fd, blob, name))
                self.cookies_opened.add(name)
        self.done(msg_id=req.msg_id, op="OPEN", object_id=req.object_id, size=size)

    def close_during_copen(self, req: protocol.OpenRequest, size: int, name: str) -> None:
        """The anon fd of this reopen goes before its copen is written, or while (a thread closes
        it as the copen is written: either may come first). The fd number is kept, pointing at
        /dev/null, until both are done, so no fd installed meanwhile is closed by mistake. A
        correct kernel fails the OPEN (or, if the copen came first, sees the object closed) and
        sends another OPEN at the next READ; it never delivers a READ for this object id."""
        variant = "while" if self.rng.random() < 0.5 else "before"
        def close() -> None:
            self.let_go(req.object_id)
            os.dup2(self.devnull, req.fd)
        closer = threading.Thread(target=close, daemon=True)
        with self.lock:
            self.closed_at_copen[req.object_id] = name
        if variant == "before":
            closer.run()
        else:
            closer.start()
        try:
            os.write(self.device_fd, protocol.copen_command(req.msg_id, size))
            error = None
        except OSError as e:
            error = e.errno
        if variant == "while":
            closer.join()
        os.close(req.fd)
        self.log.emit(Event.CLOSE_FD, object_id=req.object_id, cookie=name, msg_id=req.msg_id, at="copen",
                      variant=variant, copen_errno=error)
        if error is None:
            self.remember_answer("OPEN", req.msg_id, req.object_id, size)

    def check_closed_at_copen(self, req: protocol.Request, name: str | None) -> None:
        """Close-copen's question, decided by what the kernel delivers next for the cookie."""
        with self.lock:
            if isinstance(req, protocol.ReadRequest) and (req.object_id in self.closed_at_copen
                                                          or req.object_id == CLOSED_OBJECT_ID):
                cookie = self.closed_at_copen.get(req.object_id, "?")
                outcome = ProbeOutcome.READ_ON_CLOSED
                self.read_on_closed.add(req.msg_id)
            elif name is not None and name in self.closed_at_copen.values():
                cookie = name
                outcome = ProbeOutcome.REOPENED
            else:
                return
            for oid in [o for o, c in self.closed_at_copen.items() if c == cookie or cookie == "?"]:
                del self.closed_at_copen[oid]  # an object id -1 could be any of them: all decided
        self.log.emit(Event.PROBE, probe=Probe.CLOSE_COPEN, msg_id=req.msg_id, object_id=req.object_id,
                      cookie=cookie, outcome=outcome)

    def probe_epollin(self, opening: protocol.OpenRequest, cookie: str, settle_ms: int = 0) -> tuple[list[Accepted], str]:
        """Patch 4's question, asked at the one protocol point where its answer is decidable: an
        OPEN has been read and not yet answered. If it reopens an object, the READ that found the
        object closed is queued, NEW, and read() skips it until this OPEN's copen: it must not make
        the device readable (EPOLLIN for it is a daemon spinning on empty reads).

        poll(0) is asked until the device is quiet (drain); with `settle_ms`, then until nothing
        has come for that long. The outcome is logged for every OPEN; the host knows which OPENs
        were reopens."""
        held: list[Accepted] = []
        outcome, empties = self.drain(opening, held, 0)
        if settle_ms and outcome == ProbeOutcome.QUIET:
            outcome, more = self.drain(opening, held, settle_ms)
            empties += more
        self.log.emit(Event.PROBE, probe=Probe.EPOLLIN, msg_id=opening.msg_id, object_id=opening.object_id,
                      cookie=cookie, outcome=outcome, empties=empties, drained=len(held))
        return held, outcome

    def drain(self, opening: protocol.OpenRequest, held: list[Accepted], wait_ms: int) -> tuple[str, int]:
        """Read what the device delivers until poll(wait_ms) finds it quiet: the outcome (a
        ProbeOutcome) and the empty reads seen. What is delivered is appended to `held`, to be
        served after the copen. An empty read is legitimate once per READ queued on a CLOSE
        object (read() moves that object to REOPENING); the caller holds the delivery lock, so
        no other thread delivers meanwhile and the readers can only add the few requests they
        have not yet issued: PROBE_SPINS empty reads in a row are a kernel raising EPOLLIN for
        what it will not deliver. A READ of the object being opened, delivered before its copen,
        is a kernel that did not hold it back (patch 1's REOPENING state)."""
        poller = select.poll()
        poller.register(self.device_fd, select.POLLIN)
        spins = empties = 0
        outcome = ProbeOutcome.QUIET
        while poller.poll(wait_ms):
            if spins >= PROBE_SPINS:
                return ProbeOutcome.SPIN, empties
            if len(held) >= PROBE_DRAIN:
                return ProbeOutcome.BUSY, empties
            try:
                buf = os.read(self.device_fd, protocol.MAX_MSG_SIZE)
            except OSError as e:
                if e.errno == errno.EEXIST and self.refused_second_fd():
                    continue
                raise
            if not buf:
                spins += 1
                empties += 1
                continue
            spins = 0
            got = self.accept(buf)
            if got is None:
                continue
            held.append(got)
            if isinstance(got.req, protocol.ReadRequest) and got.req.object_id == opening.object_id:
                outcome = ProbeOutcome.EARLY_READ
        return outcome, empties

    def serve_all(self, held: list[Accepted]) -> None:
        for got in held:
            if isinstance(got.req, protocol.ReadRequest) and got.obj is None:
                got = self.pin(got.req)  # read before its object's copen: pinned now, if it exists now
            got.run()

    def buffer(self, length: int) -> mmap.mmap:
        buf = getattr(self.local, "buffer", None)
        if buf is None or len(buf) < length:
            buf = self.local.buffer = mmap.mmap(-1, max(1 << 20, length + -length % (1 << 20)))
        return buf

    def on_read(self, req: protocol.ReadRequest, obj: CacheObject | None) -> None:
        """`obj` was pinned (busy) when the READ was accepted."""
        if obj is None:
            with self.lock:
                # lockless: closed by another thread between the read() and the pin; or delivered
                # with the id of a closed object (-1) as the fd went, which no close around a copen
                # explains (that one is the close-copen probe's violation)
                closed_here = req.object_id in self.closed_ids or (
                    req.object_id == CLOSED_OBJECT_ID and bool(self.closed_ids) and req.msg_id not in self.read_on_closed)
            if closed_here:
                self.log.emit(Event.LOST, msg_id=req.msg_id, op="READ", object_id=req.object_id, call="pin")
                self.write_restore(RestoreWhy.LOST)
                return
            # Should not happen: the kernel reopens a closed object before sending its READs.
            self.log.emit(Event.ERROR, msg_id=req.msg_id, op="READ", object_id=req.object_id,
                          error="unknown object")
            return
        call = "mmap"  # the call that failed, for the error event: the kernel refuses each differently
        try:
            self.point(CrashPoint.READ_RECEIVED)
            if self.read_delay_s:
                time.sleep(self.read_delay_s)  # keeps requests in flight when a kill lands
            start, length = protocol.aligned_span(req.offset, req.length, ALIGN)
            length = min(length, obj.blob.size + -obj.blob.size % ALIGN - start)
            # O_DIRECT underneath: an mmap buffer is page aligned, a bytes object is not.
            view = memoryview(self.buffer(length))[:length]
            try:
                call = "preadv"
                got = os.preadv(obj.blob.fd, [view], start)
                view[got:] = bytes(length - got)
                call = "pwrite"
                os.pwrite(obj.anon_fd, view, start)
                self.point(CrashPoint.READ_BEFORE_COMPLETE)
                self.dawdle()
                call = "READ_COMPLETE"
                fcntl.ioctl(obj.anon_fd, protocol.CACHEFILES_IOC_READ_COMPLETE, req.msg_id)
            finally:
                view.release()
            self.point(CrashPoint.READ_AFTER_COMPLETE)
        except OSError as e:
            self.read_failed(req, obj, call, e)
            return
        finally:
            self.unpin(obj)
        self.remember_answer("READ", req.msg_id, req.object_id)
        self.done(msg_id=req.msg_id, op="READ", object_id=req.object_id)

    def read_failed(self, req: protocol.ReadRequest, obj: CacheObject, call: str, e: OSError) -> None:
        with self.lock:
            closed = obj.closed
            redelivered = self.deliveries[req.msg_id] > 1
        fields = dict(msg_id=req.msg_id, op="READ", object_id=req.object_id, errno=e.errno, error=e.strerror, call=call)
        if self.device_dead and (call, e.errno) in ORPHANED_ERRORS:
            self.log.emit(Event.ORPHANED, **fields)  # the cache failed it with EIO when it died
        elif closed == CLOSED_BY_FAULT:  # its fd went to /dev/null under it (ENOTTY): restored once its last user is done
            # (also when it was a re-delivery: lost twice, it is nobody's answer yet; seen in
            # adversarial seed 3, where calling it redundant made it a daemon error)
            obj.lost += 1
            self.log.emit(Event.LOST, **fields)
        elif redelivered and (closed or (call == "READ_COMPLETE" and e.errno == errno.EINVAL)):
            self.log.emit(Event.REDUNDANT, **fields)
        else:
            self.log.emit(Event.ERROR, **fields)

    def unpin(self, obj: CacheObject) -> None:
        with self.lock:
            obj.busy -= 1
            last = obj.closed and obj.busy == 0
        if last:
            os.close(obj.anon_fd)
            if obj.lost:
                self.write_restore(RestoreWhy.LOST)

    def on_close(self, req: protocol.CloseRequest) -> None:
        with self.lock:
            obj = self.objects.pop(req.object_id, None)
            # A READ delivered twice (a restore while alive) may still be served by one thread
            # after another answered it and the reader unmounted: the fd number must stay ours
            # until that thread is done, or its write lands in whichever anon fd the kernel
            # installs at that number next (another object's cache file).
            if obj is not None and obj.busy:
                self.let_go(req.object_id)
                os.dup2(self.devnull, obj.anon_fd)
                obj.closed = CLOSED_BY_REQUEST
                obj = None
        if obj is not None:
            if self.config.late_close:
                self.late_write(req, obj)
            self.let_go(req.object_id)
            os.close(obj.anon_fd)
            self.point(CrashPoint.CLOSE_FD)
        self.done(msg_id=req.msg_id, op="CLOSE", object_id=req.object_id)

    def late_write(self, req: protocol.CloseRequest, obj: CacheObject) -> None:
        """GuestConfig.late_close (Probe.LATE_WRITE): a CLOSE is sent by the cookie's withdrawal
        (an umount), which goes on to drop the object's cache file once the CLOSE is delivered.
        The fd is sought and written through (the blob's first page, so the cache file stays
        right) until the kernel refuses both with ENOBUFS; the first tries race the drop. The
        outcome is logged with the tries the kernel still accepted. The write names its offset
        (pwrite): a seek the drop refused leaves the file position where the last write ended,
        and a write there, which the kernel may still take, would put the first page into the
        second (seen: adversarial seed 3, a file read back wrong at the end)."""
        deadline = time.monotonic() + self.config.stall_bound_s
        view = memoryview(self.buffer(ALIGN))[:ALIGN]
        try:
            got = os.preadv(obj.blob.fd, [view], 0)
            view[got:] = bytes(ALIGN - got)
            accepted = 0
            while True:
                errnos = [refused(os.lseek, obj.anon_fd, 0, os.SEEK_SET), refused(os.pwrite, obj.anon_fd, view, 0)]
                if errnos == [errno.ENOBUFS, errno.ENOBUFS]:
                    outcome = ProbeOutcome.WITHDRAWN
                elif any(e not in (None, errno.ENOBUFS) for e in errnos):
                    outcome = ProbeOutcome.UNEXPECTED
                elif time.monotonic() > deadline:
                    outcome = ProbeOutcome.WRITABLE
                else:
                    accepted += 1
                    time.sleep(LATE_WRITE_PAUSE_S)
                    continue
                break
        finally:
            view.release()
        self.log.emit(Event.PROBE, probe=Probe.LATE_WRITE, msg_id=req.msg_id, object_id=req.object_id, cookie=obj.name,
                      outcome=outcome, accepted=accepted, errnos=errnos)

    def close_random_fd(self) -> None:
        """What the close-fds scenario asks for: drop a live object's anon fd, unasked. The
        kernel puts the object in CLOSE and must reopen it when the next READ comes.

        Lockless, any object's, also while other threads serve READs through it (a READ just
        delivered for it, or being answered): the fd becomes /dev/null at once (dup2: the number
        stays ours, so no fd the kernel installs meanwhile is closed by mistake) and is closed
        when its last user is done. Those READs fail (LOST) and wait in the kernel, delivered
        and unanswered, until the `restore` the daemon then writes."""
        if not self.lockless:
            # closed before any thread reads again: a READ the kernel delivers for the object
            # meanwhile would find it gone from our table while its fd is still open
            with self.delivery:
                with self.lock:
                    idle = sorted(oid for oid, o in self.objects.items() if o.busy == 0)
                    if not idle:
                        return
                    oid = self.rng.choice(idle)
                    obj = self.objects.pop(oid)
                self.let_go(oid)
                os.close(obj.anon_fd)
            self.log.emit(Event.CLOSE_FD, object_id=oid, cookie=obj.name)
            return
        with self.lock:
            if not self.objects:
                return
            oid = self.rng.choice(sorted(self.objects))
            self.closed_ids.add(oid)
        if (dropped := self.drop_object(oid)) is not None:
            self.log.emit(Event.CLOSE_FD, object_id=oid, cookie=dropped[0], busy=dropped[1])

    def close_for_umount(self) -> None:
        """Fault.UMOUNT_REOPEN, from the keeper: close the anon fd of the cookie it names (a
        waiter's fresh mount, idle) and hold that cookie's next OPEN, the reopen the waiter's
        READ will cause (hold_open). Says which in the reopen state file: none open here means
        that the incarnation which opened it is dead, and its anon fd closed with it."""
        if (fsid := self.cookie_to_hold()) is None:
            return  # the keeper gave up already
        with self.lock:
            oids = sorted(oid for oid, o in self.objects.items() if o.name == fsid)
            self.closed_ids.update(oids)
        closed = [oid for oid in oids if self.drop_object(oid) is not None]
        for oid in closed:
            self.log.emit(Event.CLOSE_FD, object_id=oid, cookie=fsid, fault=Fault.UMOUNT_REOPEN)
        state = f"{REOPEN_CLOSED} {closed[0]}" if closed else REOPEN_NONE
        write_atomically(self.config.reopen_state_file, state + "\n")

    def let_device_go(self) -> None:
        """Fault.CACHE_DEATH: the keeper's device fd is closed; ours is the last reference. It is
        replaced by /dev/null (dup2), so that the fd number no other thread may be using is never
        reused under it; the kernel releases the device once the last thread inside a read() or
        poll() of it has returned, and fails every request queued or delivered with EIO. Then
        every thread is woken to leave; those answering a request finish (the cache refuses their
        READ_COMPLETEs: ORPHANED) and serve() waits for them. Without `lockless` the delivery lock
        is taken first: no probe is left asking questions of /dev/null.

        It waits (a third of the stall bound at most) for a READ being answered: the death then
        finds a request delivered and unanswered, and its reader waiting, as the fault is meant to."""
        deadline = time.monotonic() + self.config.stall_bound_s / 3
        while not self.serving() and time.monotonic() < deadline:
            time.sleep(0.005)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            if self.lockless:
                self.device_dead = True
                os.dup2(null, self.device_fd, inheritable=False)
            else:
                with self.delivery:
                    self.device_dead = True
                    os.dup2(null, self.device_fd, inheritable=False)
        finally:
            os.close(null)
        self.log.emit(Event.DEVICE_CLOSED, serving=self.serving())
        self.wake.request_stop()

    def withdraw(self) -> None:
        """After a cache death, its threads done (or given up on): let the anon fds go, the last
        one after saying so (Event.WITHDRAWING and the withdrawing file). They pin the dead cache:
        the last one's release withdraws it, here, in this thread, while the readers holding dead
        mounts unmount them. Each goes by dup2 of /dev/null, as the device did: a thread still in
        its answer keeps a valid fd number, never one reused by the next open."""
        with self.lock:
            fds = [obj.anon_fd for obj in self.objects.values() if not obj.closed]
            self.objects.clear()
        for fd in fds[:-1]:
            os.dup2(self.devnull, fd)
        if self.config.withdrawing_file:
            write_atomically(self.config.withdrawing_file, f"{self.incarnation}\n")
        self.log.emit(Event.WITHDRAWING, anon_fds=len(fds))
        for fd in fds[-1:]:
            os.dup2(self.devnull, fd)

    def serving(self) -> int:
        """READs being answered now (their objects pinned)."""
        with self.lock:
            return sum(obj.busy for obj in self.objects.values())

    def orphaned(self, req: protocol.OpenRequest, call: str) -> None:
        """An OPEN read before the device went: nothing to answer it to (the cache failed it)."""
        self.let_go(req.object_id)
        os.close(req.fd)
        self.log.emit(Event.ORPHANED, msg_id=req.msg_id, op="OPEN", object_id=req.object_id, call=call)

    def drop_object(self, oid: int) -> tuple[str, int] | None:
        """An object's anon fd closed unasked, whoever uses it: its cookie, and the READs being
        served through it (their fd is /dev/null until the last is done: they are lost). None:
        another thread closed it first."""
        with self.lock:
            obj = self.objects.pop(oid, None)
            if obj is None:
                return None
            self.let_go(oid)
            if obj.busy:
                os.dup2(self.devnull, obj.anon_fd)
                obj.closed = CLOSED_BY_FAULT
            else:
                os.close(obj.anon_fd)
            return obj.name, obj.busy

    def stale_answers(self) -> None:
        """Fault.STALE: late answers, as a daemon sends that answers twice, late, or from a
        thread that lagged behind a death: a copen or a READ_COMPLETE for a msg_id answered
        before (by this incarnation, or a dead one), and for one never delivered. The kernel
        must refuse each with EINVAL: one it accepts completed some other request with it."""
        with self.lock:
            answers = list(self.answers)
            live = sorted(self.objects)
            never = (self.max_msg_id + NEVER_DELIVERED, self.max_msg_id + NEVER_DELIVERED + 1)
        chosen = answers[-STALE_RECENT:]
        rest = answers[:-STALE_RECENT]
        chosen += self.rng.sample(rest, min(STALE_RANDOM, len(rest)))
        chosen += [("OPEN", never[0], 0, 0, StaleOrigin.NEVER_DELIVERED), ("READ", never[1], 0, 0, StaleOrigin.NEVER_DELIVERED)]
        for op, msg_id, object_id, size, origin in chosen:
            if op == "READ" and not live:
                continue
            try:
                if op == "OPEN":
                    os.write(self.device_fd, protocol.copen_command(msg_id, size))
                else:
                    # on its own object's fd if it is still open, else on another's; under the lock,
                    # so that no close takes the fd meanwhile
                    with self.lock:
                        target = object_id if object_id in self.objects else self.rng.choice(live)
                        obj = self.objects.get(target)
                        if obj is None:
                            continue
                        fcntl.ioctl(obj.anon_fd, protocol.CACHEFILES_IOC_READ_COMPLETE, msg_id)
                outcome, err = ProbeOutcome.ACCEPTED, None
            except OSError as e:
                outcome = ProbeOutcome.REFUSED if e.errno == errno.EINVAL else ProbeOutcome.UNEXPECTED
                err = e.errno
            self.log.emit(Event.PROBE, probe=Probe.STALE, msg_id=msg_id, op=op, object_id=object_id,
                          origin=origin, outcome=outcome, errno=err)

    def handle(self, buf: bytes) -> None:
        """One message as read() delivered it, answered (the unit tests' way in)."""
        got = self.accept(buf)
        if got is not None:
            got.run()

    def pin(self, req: protocol.ReadRequest) -> Accepted:
        with self.lock:
            obj = self.objects.get(req.object_id)
            if obj is not None:
                obj.busy += 1
        return Accepted(req, lambda: self.on_read(req, obj), obj)

    def accept(self, buf: bytes, answers_before: int | None = None) -> Accepted | None:
        """Decode and log a message, pin a READ's object; the work to do is returned, to be done
        outside the delivery lock. The pin is what keeps close_random_fd (another thread) from
        closing the fd of an object whose READ the kernel has already handed over: that READ
        would have no fd to be answered through, and only a restore would bring it back.

        `answers_before`: the answers accepted before the read() that delivered `buf` began; a
        msg_id among them delivered now is one the kernel reused (Probe.REUSE). None: not
        known (a read() of the patch-4 probe), not checked."""
        try:
            req = protocol.decode(buf)
        except protocol.ProtocolError as e:
            self.log.emit(Event.ERROR, op="decode", error=f"bad message: {e}", raw=buf[:64].hex())
            return None
        fields: dict[str, object] = {"msg_id": req.msg_id, "object_id": req.object_id}
        if isinstance(req, protocol.OpenRequest):
            fields.update(op="OPEN", volume=req.volume_key,
                          cookie=req.cookie_key.decode("utf-8", "replace"), fd=req.fd)
        elif isinstance(req, protocol.ReadRequest):
            fields.update(op="READ", off=req.offset, len=req.length)
        else:
            fields.update(op="CLOSE")
        if self.threads > 1:
            fields["thread"] = threading.current_thread().name
        self.log.emit(Event.RECV, **fields)
        with self.lock:
            self.deliveries[req.msg_id] += 1
            self.max_msg_id = max(self.max_msg_id, req.msg_id)
            first = self.answered_at.get(req.msg_id)
        if answers_before is not None and first is not None and first <= answers_before:
            self.log.emit(Event.PROBE, probe=Probe.REUSE, msg_id=req.msg_id, object_id=req.object_id,
                          op=fields["op"], outcome=ProbeOutcome.REUSED)
        if self.closed_at_copen:
            self.check_closed_at_copen(req, str(fields.get("cookie")) if isinstance(req, protocol.OpenRequest) else None)
        if isinstance(req, protocol.OpenRequest):
            if self.supervisor is not None:
                self.deposit(req, protocol.blob_name(req.volume_key, req.cookie_key))
            return Accepted(req, lambda: self.on_open(req))
        if isinstance(req, protocol.ReadRequest):
            return self.pin(req)
        return Accepted(req, lambda: self.on_close(req))

    def deposit(self, req: protocol.OpenRequest, cookie: str) -> None:
        """supervise_fds: the OPEN's anon fd to the keeper at once. And the question only a held
        fd lets us ask: is this OPEN for an object we hold open (Probe.SECOND_FD)?"""
        assert self.supervisor is not None
        self.supervisor.deposit(req.object_id, req.fd, cookie, req.msg_id)
        with self.lock:
            held = [oid for oid, name in self.inherited.items() if name == cookie and oid in self.objects]
        if held:
            self.log.emit(Event.PROBE, probe=Probe.SECOND_FD, msg_id=req.msg_id, object_id=req.object_id,
                          cookie=cookie, held_object_id=held[0], outcome=ProbeOutcome.SECOND_FD)

    def refused_second_fd(self) -> bool:
        """read() refused with EEXIST: an OPEN re-delivered for an object whose fd we hold. True
        if the reopen take_over left unanswered explains it: that OPEN failed, and its object
        waits, REOPENING, on the fd we hold; closing that fd lets the next READ reopen it."""
        with self.lock:
            if not self.awaiting_eexist:
                return False
            pending, self.awaiting_eexist = self.awaiting_eexist, {}
        self.log.emit(Event.PROBE, probe=Probe.SECOND_FD, outcome=ProbeOutcome.REFUSED, closed=sorted(pending))
        for oid in pending:
            self.drop_object(oid)
        return True

    # -- the loop --------------------------------------------------------------------------
    def loop(self) -> int:
        poller = select.poll()
        for fd in (self.device_fd, self.wake.stop, *self.wake.requests.values()):
            poller.register(fd, select.POLLIN)
        faults = {self.wake.requests[Fault.CLOSE]: (Fault.CLOSE, self.close_random_fd),
                  self.wake.requests[Fault.RESTORE_LIVE]: (Fault.RESTORE_LIVE, lambda: self.write_restore(RestoreWhy.LIVE)),
                  self.wake.requests[Fault.STALE]: (Fault.STALE, self.stale_answers),
                  self.wake.requests[Fault.CACHE_DEATH]: (Fault.CACHE_DEATH, self.let_device_go),
                  self.wake.requests[Fault.UMOUNT_REOPEN]: (Fault.UMOUNT_REOPEN, self.close_for_umount)}
        while True:
            # No timeout: only the kernel (a request) or a signal handler (Wake) ends this wait.
            ready = {fd for fd, _ in poller.poll()}
            if self.wake.stop in ready or self.device_dead:
                return 0
            for fd, (kind, act) in faults.items():
                if fd in ready and self.wake.take(kind):
                    act()
            if self.device_fd not in ready or self.device_dead:
                continue
            got = None
            self.gate.enter()
            try:
                answers_before = self.answer_seq
                if self.lockless:
                    buf = os.read(self.device_fd, protocol.MAX_MSG_SIZE)
                    got = self.accept(buf, answers_before) if buf else None
                else:
                    with self.delivery:
                        if self.device_dead:
                            return 0
                        buf = os.read(self.device_fd, protocol.MAX_MSG_SIZE)
                        got = self.accept(buf, answers_before) if buf else None
            except OSError as e:
                if e.errno == errno.EEXIST and self.refused_second_fd():
                    continue
                self.log.emit(Event.ERROR, op="read", errno=e.errno, error=e.strerror)
                if e.errno == errno.EIO:  # the cache is dead: nothing more will come
                    return 1
                time.sleep(0.1)
                continue
            finally:
                # an OPEN delivered holds the gate until its copen is written (on_open leaves it)
                opening = got.req if got is not None and isinstance(got.req, protocol.OpenRequest) else None
                if opening is None:
                    self.gate.leave()
            if not buf:
                # poll said readable, read found nothing: what patch 4 narrowed
                self.log.emit(Event.EMPTY_READ)
                continue
            if opening is not None:
                self.on_open(opening, gate_held=True)
            elif got is not None:
                got.run()

    def serve(self) -> int:
        # The workers inherit the mask the main thread has while it starts them: WAKE_SIGNALS
        # blocked from their first instruction, so none is ever delivered to a worker (whose
        # interrupted poll would not run the handler, and the main thread would sleep on).
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
        workers = [threading.Thread(target=self.loop, name=f"worker-{i}", daemon=True) for i in range(1, self.threads)]
        try:
            for worker in workers:
                worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        status = self.loop()
        if self.device_dead:
            # what they were answering meets the dead cache before the process (and its anon
            # fds, which pin the cache) goes; a thread stuck in the kernel is the stall check's
            deadline = time.monotonic() + self.config.stall_bound_s
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
        return status

    def on_request(self, signum: int, _frame: object) -> None:
        self.wake.request(REQUEST_SIGNALS[signum])

    def stop(self, _signum: int, _frame: object) -> None:
        self.wake.request_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    channel = parser.add_mutually_exclusive_group(required=True)
    channel.add_argument("--sock-fd", type=int, help="the channel this process waits on for its activation")
    channel.add_argument("--zygote-fd", type=int, help="be the keeper's zygote on this channel: a daemon process "
                         "forked, ready-made, for each it asks (zygote.py)")
    args = parser.parse_args()
    if args.zygote_fd is not None:
        return zygote.serve(socket.socket(fileno=args.zygote_fd), lambda sock_fd: run(args.config, sock_fd, forked=True))
    return run(args.config, args.sock_fd)


def run(config_path: str, sock_fd: int, forked: bool = False) -> int:
    """A daemon process, from its wait for its activation to its exit; `forked` by the zygote."""
    config = GuestConfig.read(config_path)
    sock = socket.socket(fileno=sock_fd)
    try:
        # A standby waits here, imported, with nothing of the cache: the device fd and its
        # incarnation number (its crash point, its log's lines) come together, only after the
        # incarnation before it is reaped. A cold start finds them queued.
        incarnation, device_fd, waited_s = await_activation(sock)
    except EOFError:
        return 0  # let go unactivated (the keeper stopping): never an incarnation, nothing logged
    supervisor = Supervisor(sock) if config.supervise_fds else None
    held = supervisor.receive_held() if supervisor is not None else []
    try:
        await_go(sock)  # the keeper knows it as its incarnation: only now may it serve
    except (EOFError, OSError):
        return 0  # the keeper gone between the two: nothing served, nothing to restore
    if supervisor is None:
        sock.close()
    daemon = Daemon(config, device_fd, incarnation, supervisor)
    signal.signal(signal.SIGTERM, daemon.stop)
    for signum in REQUEST_SIGNALS:
        signal.signal(signum, daemon.on_request)
    # standby_wait_s: how long it waited for the activation (None: it found it queued, as a cold
    # start does, or a standby that had not finished importing)
    daemon.log.emit(Event.FD_RECEIVED, device_fd=device_fd, crash_point=daemon.crash_point, standby_wait_s=waited_s,
                    forked=forked)
    daemon.take_over(held)
    if incarnation > 1:
        daemon.restore()
        if config.lockless or config.close_during_copen:  # the adversarial daemon checks msg_id reuse
            threading.Thread(target=daemon.load_dead_answers, name="dead-answers", daemon=True).start()
    write_atomically(config.daemon_state_file, daemon_serving(incarnation, os.getpid()))
    daemon.log.emit(Event.SERVING)
    status = daemon.serve()
    if daemon.device_dead:
        daemon.withdraw()
    return status


if __name__ == "__main__":
    sys.exit(main())
