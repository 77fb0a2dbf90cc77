"""The cachefiles on-demand daemon: serves EROFS blobs to the kernel, one incarnation a process.

Started by keeper.py with the /dev/cachefiles fd waiting on a socket. An incarnation after the
first writes `restore` so that requests its dead predecessor had read but not answered are
delivered again. Every message is logged (eventlog.py) before it is acted on and again when it
is answered, so the host can tell which requests a killed incarnation was holding.

Fault injection, all driven by the host: SIGUSR1 makes the daemon close the anon fd of a live
object (the kernel must reopen it on the next READ); `crash_plan` names, per incarnation, a
protocol point at which it SIGKILLs itself; `threads` > 1 serves the device from several threads.

Every serving thread blocks in poll() with no timeout, as the series' own demo daemon does: a
kernel that forgets to wake the daemon for a request then leaves it asleep for good, and the
readers' watchdog reports the stall. A poll with a timeout would serve that request a tick
later and hide the kernel's bug. What else must wake a thread reaches it through an eventfd in
the same poll set (`Wake`).
"""
from __future__ import annotations

import argparse
import errno
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
from typing import Callable
from dataclasses import dataclass

import protocol
from contract import CrashPoint, Event, GuestConfig, Probe, ProbeOutcome, daemon_serving
from eventlog import EventLog, write_atomically
from keeper import recv_fd

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
WAKE_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

@dataclass
class Blob:
    fd: int
    size: int


class Wake:
    """How a signal handler (main thread) reaches every thread that sleeps in poll() with no
    timeout: two eventfds, polled beside the device fd by each of them.

    `stop` is written once and never read: readable for good, it wakes every thread, now and
    whenever it polls again, and each one leaves. `close_requests` is a semaphore eventfd: each
    SIGUSR1 adds one, and a read() takes exactly one, so however many threads wake for it, the
    kernel gives each request to one of them; the others find it empty and sleep again."""

    def __init__(self) -> None:
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        self.stop = os.eventfd(0, flags)
        self.close_requests = os.eventfd(0, flags | os.EFD_SEMAPHORE)

    def request_stop(self) -> None:
        os.eventfd_write(self.stop, 1)

    def request_close(self) -> None:
        os.eventfd_write(self.close_requests, 1)

    def take_close_request(self) -> bool:
        """Whether this thread got a close request to serve (False: another thread took it)."""
        try:
            os.eventfd_read(self.close_requests)
        except BlockingIOError:
            return False
        return True


@dataclass
class CacheObject:
    anon_fd: int
    blob: Blob
    name: str
    busy: int = 0  # READs being served on it: its fd is not closed under them


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
    def __init__(self, config: GuestConfig, device_fd: int, incarnation: int) -> None:
        self.config = config
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
        self.cookies_opened: set[str] = set()  # answered with a size by this incarnation: an OPEN again is a reopen

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

    # -- start-up --------------------------------------------------------------------------
    def restore(self) -> None:
        """Re-mark every request the kernel still holds as new; only after the old one is gone."""
        try:
            os.write(self.device_fd, b"restore")
            self.log.emit(Event.RESTORE, ok=True)
        except OSError as e:
            self.log.emit(Event.RESTORE, ok=False, errno=e.errno, error=e.strerror)
        self.point(CrashPoint.AFTER_RESTORE)

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

    def on_open(self, req: protocol.OpenRequest) -> None:
        name = protocol.blob_name(req.volume_key, req.cookie_key)
        blob = self.blob(name) if req.volume_key.startswith("erofs,") else None
        size = blob.size if blob else protocol.copen_error(errno.ENOENT)
        self.point(CrashPoint.OPEN_BEFORE_COPEN)
        # The delivery lock from the probe to the copen: no other thread reads a request meanwhile.
        with self.delivery:
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
        if answered:
            self.point(CrashPoint.COPEN_BEFORE_USE)
            if blob is None:
                os.close(req.fd)
            else:
                with self.lock:
                    self.objects[req.object_id] = CacheObject(req.fd, blob, name)
                    self.cookies_opened.add(name)
            self.done(msg_id=req.msg_id, op="OPEN", object_id=req.object_id, size=size)
        self.serve_all(held)

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
            buf = os.read(self.device_fd, protocol.MAX_MSG_SIZE)
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
                call = "READ_COMPLETE"
                fcntl.ioctl(obj.anon_fd, protocol.CACHEFILES_IOC_READ_COMPLETE, req.msg_id)
            finally:
                view.release()
            self.point(CrashPoint.READ_AFTER_COMPLETE)
        except OSError as e:
            self.log.emit(Event.ERROR, msg_id=req.msg_id, op="READ", object_id=req.object_id,
                          errno=e.errno, error=e.strerror, call=call)
            return
        finally:
            with self.lock:
                obj.busy -= 1
        self.done(msg_id=req.msg_id, op="READ", object_id=req.object_id)

    def on_close(self, req: protocol.CloseRequest) -> None:
        with self.lock:
            obj = self.objects.pop(req.object_id, None)
        if obj is not None:
            os.close(obj.anon_fd)
            self.point(CrashPoint.CLOSE_FD)
        self.done(msg_id=req.msg_id, op="CLOSE", object_id=req.object_id)

    def close_random_fd(self) -> None:
        """What the close-fds scenario asks for: drop a live object's anon fd, unasked. The
        kernel puts the object in CLOSE and must reopen it when the next READ comes."""
        with self.delivery, self.lock:
            idle = sorted(oid for oid, o in self.objects.items() if o.busy == 0)
            if not idle:
                return
            oid = self.rng.choice(idle)
            obj = self.objects.pop(oid)
        os.close(obj.anon_fd)
        self.log.emit(Event.CLOSE_FD, object_id=oid, cookie=obj.name)

    def handle(self, buf: bytes) -> None:
        got = self.accept(buf)
        if got is not None:
            got.run()

    def pin(self, req: protocol.ReadRequest) -> Accepted:
        with self.lock:
            obj = self.objects.get(req.object_id)
            if obj is not None:
                obj.busy += 1
        return Accepted(req, lambda: self.on_read(req, obj), obj)

    def accept(self, buf: bytes) -> Accepted | None:
        """Decode and log a message, pin a READ's object; the work to do is returned, to be done
        outside the delivery lock. The pin is what keeps close_random_fd (another thread) from
        closing the fd of an object whose READ the kernel has already handed over: that READ
        would have no fd to be answered through, and only a restore would bring it back."""
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
        if isinstance(req, protocol.OpenRequest):
            return Accepted(req, lambda: self.on_open(req))
        if isinstance(req, protocol.ReadRequest):
            return self.pin(req)
        return Accepted(req, lambda: self.on_close(req))

    # -- the loop --------------------------------------------------------------------------
    def loop(self) -> int:
        poller = select.poll()
        for fd in (self.device_fd, self.wake.stop, self.wake.close_requests):
            poller.register(fd, select.POLLIN)
        while True:
            # No timeout: only the kernel (a request) or a signal handler (Wake) ends this wait.
            ready = {fd for fd, _ in poller.poll()}
            if self.wake.stop in ready:
                return 0
            if self.wake.close_requests in ready and self.wake.take_close_request():
                self.close_random_fd()
            if self.device_fd not in ready:
                continue
            try:
                with self.delivery:
                    buf = os.read(self.device_fd, protocol.MAX_MSG_SIZE)
                    got = self.accept(buf) if buf else None
            except OSError as e:
                self.log.emit(Event.ERROR, op="read", errno=e.errno, error=e.strerror)
                if e.errno == errno.EIO:  # the cache is dead: nothing more will come
                    return 1
                time.sleep(0.1)
                continue
            if not buf:
                # poll said readable, read found nothing: what patch 4 narrowed
                self.log.emit(Event.EMPTY_READ)
                continue
            if got is not None:
                got.run()

    def serve(self) -> int:
        # The workers inherit the mask the main thread has while it starts them: WAKE_SIGNALS
        # blocked from their first instruction, so none is ever delivered to a worker (whose
        # interrupted poll would not run the handler, and the main thread would sleep on).
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, WAKE_SIGNALS)
        try:
            for i in range(1, self.threads):
                threading.Thread(target=self.loop, name=f"worker-{i}", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        return self.loop()

    def on_usr1(self, _signum: int, _frame: object) -> None:
        self.wake.request_close()

    def stop(self, _signum: int, _frame: object) -> None:
        self.wake.request_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--sock-fd", type=int, required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    args = parser.parse_args()
    config = GuestConfig.read(args.config)
    with socket.socket(fileno=args.sock_fd) as sock:
        device_fd = recv_fd(sock)
    daemon = Daemon(config, device_fd, args.incarnation)
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGUSR1, daemon.on_usr1)
    daemon.log.emit(Event.FD_RECEIVED, device_fd=device_fd, crash_point=daemon.crash_point)
    if args.incarnation > 1:
        daemon.restore()
    write_atomically(config.daemon_state_file, daemon_serving(args.incarnation, os.getpid()))
    daemon.log.emit(Event.SERVING)
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
