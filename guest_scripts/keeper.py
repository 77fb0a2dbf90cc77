"""Holds /dev/cachefiles across daemon deaths and restarts the daemon: the systemd stand-in.

The device fd is opened and bound once, here. Each daemon process gets a Unix socketpair made
*before* it starts, so a kill that lands while the daemon is still starting cannot wedge the
keeper: there is no accept() to wait in. A process becomes an incarnation by its activation, one
message on that socket with its incarnation number and the device fd (SCM_RIGHTS), sent only
after the previous incarnation has been reaped, so none of its anon fds is still open when the
new one writes `restore`.

With GuestConfig.standby (the default) the process of the next incarnation is started as soon as
the current one is activated, niced, and waits, imported, on its socket: a death then costs the
activation and a `restore`, not a Python start under TCG. Until its activation a standby has no
number (the crash plan is keyed by it), no device fd, no anon fd and no line in the daemon's log;
its pid is in neither DAEMON_PID_FILE nor daemon.state (the host's kill targets) and it is not
`child` (which every keeper fault signals). keeper.jsonl says when one is started (`standby`),
and STARTED, written at the activation, says whether the incarnation was one. Without it (a cold
start) each incarnation's process is started at its activation, as before.

A standby is forked by the zygote (zygote.py) once that has said it is imported: a Python start
and daemon.py's imports cost seconds of CPU under TCG, a fork milliseconds. The keeper starts the
zygote beside the first incarnation, niced as a standby, and is a child subreaper, so that the
daemon process the zygote forks (through a child that exits at once) is re-parented to it: its
child, which it waits for (AdoptedProcess, as Popen does a spawned one's) and statekill.py finds
by its parent. A standby asked for while the zygote imports is spawned; a zygote that is gone,
refuses or does not answer within ZYGOTE_BOUND_S is ended, that standby spawned, and a new one
started. Each `standby` line says how it was made (contract.Made).

With `supervise_fds` the keeper is also the supervisor real daemons have (nydusd's keeps the
anon fds across a restart): the daemon deposits each anon fd here as soon as its OPEN is read,
says when it answered the OPEN, and asks for it back (`drop`) before it closes its own copy. A
death then leaves the objects OPEN, and the next incarnation is handed every fd still held, with
what it was for, before it writes `restore` (HeldFds).

A Fault.CACHE_DEATH (SIGUSR2 from the host) kills the cache instead of the daemon: the keeper
closes its device fd (and every anon fd it holds) and tells the daemon to let its own go, which
is then the last reference: the kernel fails every queued request with EIO. Once the daemon has
exited (its anon fds, which pin the cache, closed with it) the keeper binds a new cache with the
same tag and starts the next incarnation; the readers' fresh mounts use it.

A Fault.KILL_WAITER (SIGUSR1 from the host) asks whether a task waiting on a dead daemon can
be killed: a waiter (waiter.py) mounts while the daemon serves, the keeper SIGKILLs the daemon,
lets the waiter read data nobody can serve, SIGKILLs it as it waits and, before starting the next
incarnation, waits (a sixth of the stall bound) for it to go. The judge asks the trace whether
it went before the next `restore` (harness/judge/killable.py).

A Fault.UMOUNT_REOPEN (SIGRTMIN+4 from the host) unmounts a mount while the kernel reopens its
object: a waiter mounts a fresh fsid while the daemon serves, the daemon closes that object's
anon fd and holds its next OPEN, the waiter reads (its READ finds the object closed: the kernel's
reopen work sends that OPEN), and the keeper detaches the mount and SIGKILLs the waiter at a
UmountAt point, taken in turn: its READ queued, the reopen's OPEN held, or (AT_RESTORE) that
OPEN's holder SIGKILLed and the next incarnation's `restore` written (it waits for the keeper's
word; the keeper unmounts as it goes on, or once it serves). The waiter's exit drops the object
under the reopen work; once its cookie is dropped the keeper ends the hold, and the daemon
answers the OPEN late (harness/judge/reopenumount.py).

In `no_failover` mode the keeper gives its copy of the device fd away: when the daemon dies the
cache dies with it (every queued request fails with EIO). That is the negative control.
"""
from __future__ import annotations

import argparse
import array
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from contract import (AT_RESTORE, CACHE_DEATH_RT_OFFSET, CLOCK_MARK, DAEMON_PID_FILE, INCARNATION, KEEPER_BOUND, NETFS_COOKIES,
                      REOPEN_CLOSED, REOPEN_GO_MARK, REOPEN_HELD, REOPEN_NONE, REOPEN_RESTORED, UMOUNT_AT,
                      UMOUNT_REOPEN_RT_OFFSET, WAITER_GO_MARK, WAITER_MOUNTED, WAITER_WCHAN_PREFIX, Event,
                      GuestConfig, Made, Mode, UmountAt, cookie_dropped_only, cookie_live, parse_daemon_state)
from eventlog import EventLog, trace_mark, write_atomically
from reader import detach, read_proc, umount

HERE = os.path.dirname(os.path.abspath(__file__))
PRUNE_INTERVAL_S = 1.0  # the held fds of dropped cookies let go between hand-overs (HeldFds.watch)
DAEMON_SCRIPT = os.path.join(HERE, "daemon.py")
# A standby imports at this niceness above the keeper's, so that its start-up yields the CPU to the
# incarnation serving and to the readers; it is put back to the keeper's before its activation.
# The zygote runs at it too, and a standby it forks inherits it.
STANDBY_NICE = 10
# How long the keeper waits for the zygote's answer to a fork (milliseconds even under TCG, niced,
# when it is well); past it the zygote is given up, and that standby spawned. It is started anew
# after each such end, this many times in all.
ZYGOTE_BOUND_S = 2.0
ZYGOTE_STARTS = 3
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)


def send_msg(sock: socket.socket, meta: dict[str, Any], fd: int | None = None) -> None:
    """One message of a daemon's channel (a SOCK_SEQPACKET pair): JSON, maybe with an fd."""
    rights = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sock.sendmsg([json.dumps(meta).encode()], rights)


def recv_msg(sock: socket.socket, flags: int = 0) -> tuple[dict[str, Any], int | None]:
    """The next message and its fd; EOFError once the other end is gone."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(fds.itemsize), flags)
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        raise EOFError("channel closed")
    return json.loads(data), (fds[0] if fds else None)


ACTIVATE = "activate"
GO = "go"
# the keeper's channel to the zygote (zygote.py): it says READY once imported; FORK carries the
# new daemon process's end of its activation channel, answered FORKED (its pid) or REFUSED
READY = "ready"
FORK = "fork"
FORKED = "forked"
REFUSED = "refused"


def send_activation(sock: socket.socket, incarnation: int, device_fd: int) -> None:
    """What makes a daemon process an incarnation: its number and the device fd, in one message.
    Sent only once the incarnation before it is reaped; queued in the socket buffer until the
    process gets there (a cold start) or read at once (a standby waiting)."""
    send_msg(sock, {"op": ACTIVATE, INCARNATION: incarnation}, device_fd)


def send_go(sock: socket.socket) -> None:
    """The last word of an activation: the keeper has the incarnation as its child, in the pid file
    and in its log. Before it the incarnation may not write `restore` nor say it serves: a fault
    the host sends once `daemon.state` names it would find the keeper not knowing it yet (a
    standby, imported, would otherwise serve within a millisecond of its activation)."""
    send_msg(sock, {"op": GO})


def await_go(sock: socket.socket) -> None:
    """The daemon's side of send_go; EOFError if the keeper let it go instead."""
    meta, fd = recv_msg(sock)
    if fd is not None:
        os.close(fd)
    if meta.get("op") != GO:
        raise EOFError(f"not the keeper's go: {meta}")


def await_activation(sock: socket.socket) -> tuple[int, int, float | None]:
    """The daemon's side: (incarnation, device fd, how long it waited for them: None when they
    were queued already as it asked, as for a cold start or a standby not yet imported). EOFError
    if the keeper let it go unactivated."""
    start = time.monotonic()
    try:
        meta, fd = recv_msg(sock, socket.MSG_DONTWAIT)
        waited: float | None = None
    except BlockingIOError:
        meta, fd = recv_msg(sock)
        waited = round(time.monotonic() - start, 4)
    if meta.get("op") != ACTIVATE or fd is None:
        if fd is not None:
            os.close(fd)
        raise EOFError(f"not an activation: {meta}")
    return int(meta[INCARNATION]), fd, waited


class HeldFds:
    """The anon fds the daemon deposited (GuestConfig.supervise_fds), by object id, with the
    OPEN each came with; kept across the daemon's deaths and handed to each new incarnation."""

    def __init__(self, log: EventLog, cookies_path: str = NETFS_COOKIES) -> None:
        self.log = log
        self.cookies_path = cookies_path
        self.lock = threading.Lock()
        self.fds: dict[int, tuple[int, dict[str, Any]]] = {}
        self.cookies: set[str] = set()  # deposited before: an OPEN for one again is a reopen

    def serve(self, sock: socket.socket) -> None:
        """One incarnation's deposits, answers and drops, until it is gone."""
        while True:
            try:
                meta, fd = recv_msg(sock)
            except (EOFError, OSError):
                return
            oid = int(meta.get("object_id", -1))
            old = None
            with self.lock:
                if meta["op"] == "deposit" and fd is not None:
                    meta["reopen"] = meta.get("cookie") in self.cookies
                    self.cookies.add(str(meta.get("cookie")))
                    old = self.fds.pop(oid, None)
                    self.fds[oid] = (fd, meta)
                elif meta["op"] == "answered" and oid in self.fds:
                    self.fds[oid][1]["answered"] = True
                elif meta["op"] == "drop":
                    old = self.fds.pop(oid, None)
            if old is not None:
                os.close(old[0])
            if meta["op"] == "drop":
                try:
                    send_msg(sock, {"op": "dropped", "object_id": oid})
                except OSError:
                    return

    def hand_over(self, sock: socket.socket) -> None:
        """Every fd held, then `end`: queued before the incarnation reads them, as the device fd is."""
        self.prune()
        with self.lock:  # sent under it: the watch's prune may not close one as it goes
            held = sorted(self.fds.items())
            for _oid, (fd, meta) in held:
                send_msg(sock, meta, fd)
        send_msg(sock, {"op": "end"})
        if held:
            self.log.emit(Event.HANDED_OVER, object_ids=[oid for oid, _ in held],
                          unanswered=[oid for oid, (_, m) in held if not m.get("answered")])

    def prune(self) -> None:
        """Let go of the fds whose cookie the kernel lists as dropped. A daemon killed between
        reading an object's CLOSE and its `drop` leaves the fd here, and no CLOSE is ever
        delivered again (not even after `restore`): kept, it would pin the object and its volume
        for good, and a later mount of that volume would wait on the collision in D state (what
        the C daemon's supervisor did before its prune: `combined`, seed 1). A cookie is dropped
        only once its CLOSE was delivered and done, so closing the fd is what the drop would have
        done. The list is read in page-sized pieces, its lock let go between them, and a cookie
        freed meanwhile shifts the rest (a row may be skipped): only what two reads agree on goes.
        A cookie not listed at all is left alone (the held fd pins its object, which holds the
        cookie: unlisted, the key is not what we think it is)."""
        def dropped() -> set[int]:
            if (cookies := text_of(self.cookies_path)) is None:
                return set()
            with self.lock:
                return {oid for oid, (_, meta) in self.fds.items()
                        if cookie_dropped_only(cookies, str(meta.get("cookie")))}

        if not (first := dropped()) or not (both := first & dropped()):
            return
        with self.lock:
            gone = {oid: self.fds.pop(oid)[0] for oid in both if oid in self.fds}
        for fd in gone.values():
            os.close(fd)
        if gone:
            self.log.emit(Event.PRUNED, object_ids=sorted(gone))

    def watch(self, stopping: Callable[[], bool], interval_s: float = PRUNE_INTERVAL_S) -> None:
        """Prune between hand-overs too: a cookie still being withdrawn at a hand-over (its
        state not yet D) is dropped a moment later, while the next incarnation serves."""
        while not stopping():
            time.sleep(interval_s)
            self.prune()

    def close_all(self) -> None:
        with self.lock:
            held, self.fds = self.fds, {}
        for fd, _meta in held.values():
            os.close(fd)


def open_cache(cache_dir: str, tag: str) -> int:
    """/dev/cachefiles opened and bound. The kernel lets it be open once at a time: while the
    last cache is not yet freed (its anon fds pin it) the open fails with EBUSY, and an fd left
    open after a failed bind would refuse every later open."""
    fd = os.open("/dev/cachefiles", os.O_RDWR | os.O_CLOEXEC)
    try:
        for command in (f"dir {cache_dir}", f"tag {tag}", "bind ondemand"):
            os.write(fd, command.encode())
    except OSError:
        os.close(fd)
        raise
    return fd


class DaemonProcess(Protocol):
    """What the keeper does with a daemon process: a spawned one's subprocess.Popen and a forked
    one's AdoptedProcess are both one."""

    pid: int

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class AdoptedProcess:
    """A child the keeper did not start but was given: a daemon process forked by the zygote and
    re-parented to the keeper (a child subreaper). Waited for and signalled as subprocess.Popen
    does its own: one waitpid at a time (a poll while another thread waits says None), the
    returncode negative for a signal, and no signal once it is reaped (its pid may be another's)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._waitpid_lock = threading.Lock()

    def _waitpid(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            self.returncode = 0  # not ours to wait for after all: Popen says 0 too
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def poll(self) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    self._waitpid(os.WNOHANG)
            finally:
                self._waitpid_lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            with self._waitpid_lock:
                while self.returncode is None:
                    self._waitpid(0)
            return self.returncode
        deadline = time.monotonic() + timeout
        while (status := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.005)
        return status

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Spawned:
    """A daemon process (spawned, or forked by the zygote: `made`) and the keeper's end of its
    channel, on which it waits for its activation."""

    process: DaemonProcess
    sock: socket.socket
    made: str = Made.SPAWNED
    fork_s: float | None = None  # forked: the zygote's answer came this long after the keeper asked


class ZygoteFailed(Exception):
    """The zygote is given up: why."""


@dataclass
class Zygote:
    """The keeper's side of the zygote (zygote.py): the process and the keeper's end of its channel."""

    popen: subprocess.Popen[bytes]
    sock: socket.socket
    started: float  # time.time() as the keeper started it
    import_s: float | None = None  # once it said READY: how long after its start

    def ready(self) -> bool:
        """Whether it has said READY, read without waiting. ZygoteFailed if it is gone. Once it
        has, nothing more is read here: a late answer waits for `late_forks`."""
        if self.import_s is not None:
            return True
        try:
            for _ in self._queued():
                if self.import_s is not None:
                    break
        except (EOFError, OSError) as e:
            raise ZygoteFailed("gone") from e
        return self.import_s is not None

    def fork(self, theirs: socket.socket, bound_s: float) -> int:
        """A daemon process forked to wait on `theirs` (its activation channel), the keeper's
        child by now: its pid. ZygoteFailed if the zygote is gone, refuses or does not answer
        within the bound."""
        try:
            send_msg(self.sock, {"op": FORK}, theirs.fileno())
        except OSError as e:
            raise ZygoteFailed("gone") from e
        deadline = time.monotonic() + bound_s
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            if not poller.poll(max(0, round((deadline - time.monotonic()) * 1000))):
                raise ZygoteFailed(f"no answer within {bound_s} s")
            try:
                meta, fd = recv_msg(self.sock)
            except (EOFError, OSError) as e:
                raise ZygoteFailed("gone") from e
            if meta.get("op") == FORKED:
                return int(meta["pid"])
            if meta.get("op") == REFUSED:
                raise ZygoteFailed(f"refused: {meta.get('error')}")
            self._take(meta, fd)

    def late_forks(self) -> list[int]:
        """The pids it answered after the keeper had given up on it (queued, read without waiting)."""
        pids: list[int] = []
        try:
            pids.extend(int(meta["pid"]) for meta in self._queued() if meta.get("op") == FORKED)
        except (EOFError, OSError):
            pass  # gone: what it sent before is all there is
        return pids

    def _queued(self) -> Iterator[dict[str, Any]]:
        """What it has sent and the keeper not yet read, without waiting, each message taken
        (`_take`) as it is read. EOFError or OSError once it is gone."""
        while True:
            try:
                meta, fd = recv_msg(self.sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self._take(meta, fd)
            yield meta

    def _take(self, meta: dict[str, Any], fd: int | None) -> None:
        if fd is not None:
            os.close(fd)
        if meta.get("op") == READY and self.import_s is None:
            self.import_s = round(float(meta.get("t", self.started)) - self.started, 4)


def child_subreaper(on: bool = True) -> str | None:
    """prctl(PR_SET_CHILD_SUBREAPER): an orphan among the caller's descendants (a daemon process
    the zygote forked, once the zygote's child has exited) is re-parented to it, not to init.
    None, or why it was refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as e:
        return f"prctl(PR_SET_CHILD_SUBREAPER): {e}"
    return None


def end_process(process: DaemonProcess) -> int:
    """Killed if it lives, and reaped: its returncode."""
    if process.poll() is None:
        process.kill()
    return process.wait()


def exit_fields(status: int) -> dict[str, int | None]:
    """A Popen returncode as the keeper's events give it."""
    return {"signal": -status if status < 0 else None, "exit_code": status if status >= 0 else None}


class Keeper:
    def __init__(self, config: GuestConfig, config_path: str, daemon_script: str = DAEMON_SCRIPT) -> None:
        self.config = config
        self.config_path = config_path  # handed on to each daemon incarnation
        self.daemon_script = daemon_script
        self.log = EventLog(config.keeper_log, who="keeper")
        self.stopping = False
        self.child: DaemonProcess | None = None  # the incarnation activated last: never a standby
        self.standby: Spawned | None = None  # GuestConfig.standby: the next one's process, waiting
        self.zygote: Zygote | None = None  # GuestConfig.standby: what forks the standbys
        self.zygotes = 0  # started
        self.no_zygote: str | None = None  # why none is started any more: every standby is spawned
        self.device_fd = -1
        self.incarnation = 0
        self.held = HeldFds(self.log) if config.supervise_fds else None
        self.supervision: tuple[socket.socket, threading.Thread] | None = None
        self.waiters = 0  # Fault.KILL_WAITER: waiters started
        self.killing_waiter: threading.Thread | None = None
        # ... once it has killed the daemon: no next incarnation until it is done (not before: a
        # daemon that dies of another fault while the waiter mounts is restarted, or the mount
        # would wait on no daemon: 2 of 4 waiters unmounted in 30 s, adversarial debug seed 2)
        self.waiter_holds_restart = False
        self.waiter_lock = threading.RLock()  # taken by a signal handler too
        self.killed_waiters: list[tuple[subprocess.Popen[str], str]] = []  # to unmount once a daemon serves
        self.cleanups: list[threading.Thread] = []
        self.unmounts_asked = 0  # Fault.UMOUNT_REOPEN: signals taken
        self.reopen_umounts = 0  # ... and carried out (or missed)
        self.unmounting: threading.Thread | None = None
        self.unmount_lock = threading.RLock()  # taken by a signal handler, which a second signal may re-enter

    def bind(self) -> None:
        self.device_fd = open_cache(self.config.cache_dir, self.config.tag)
        trace_mark(CLOCK_MARK, round(time.time() * 1000))
        self.log.emit(Event.BOUND, cache_dir=self.config.cache_dir, mode=self.config.mode)

    def rebind(self) -> bool:
        """A new cache after the old one died (Fault.CACHE_DEATH; no_failover: a naive restart, the
        old mounts stay dead). Refused (EBUSY) until the old cache is freed: tried again every
        second."""
        try:
            self.bind()
            return True
        except OSError as e:
            self.log.emit(Event.BIND_FAILED, errno=e.errno, error=e.strerror)
            time.sleep(1.0)
            return False

    def spawn(self) -> Spawned:
        """A daemon process, blocked (once imported) on its end of a new socketpair until its
        activation. It is given nothing else of ours (close_fds): no device fd, no anon fd."""
        return Spawned(*self.start_script("--sock-fd"))

    def start_script(self, option: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """daemon.py, given one end of a new socketpair (`option`) and nothing else of ours; the
        keeper's end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            cmd = [sys.executable, "-S", self.daemon_script, "--config", self.config_path, option, str(theirs.fileno())]
            return subprocess.Popen(cmd, pass_fds=[theirs.fileno()], close_fds=True), ours
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()

    def start_zygote(self) -> None:
        """GuestConfig.standby: the zygote (zygote.py), niced as a standby, unless one is there
        or none can be: the keeper could not become a child subreaper (the zygote's forks would
        not be its children), or ZYGOTE_STARTS have been given up. It imports while the keeper
        goes on: a standby asked for before it is READY is spawned."""
        if self.zygote is not None or self.no_zygote is not None or self.stopping:
            return
        if self.zygotes >= ZYGOTE_STARTS:
            self.no_zygote = f"{self.zygotes} zygotes given up"
        elif self.zygotes == 0:
            self.no_zygote = child_subreaper()
        if self.no_zygote is not None:
            self.log.emit(Event.ZYGOTE, pid=None, why=self.no_zygote)
            return
        started = time.time()
        popen, ours = self.start_script("--zygote-fd")
        self.zygote = Zygote(popen, ours, started)
        self.zygotes += 1
        nice_down(popen.pid)
        self.log.emit(Event.ZYGOTE, pid=popen.pid)

    def end_zygote(self, why: str) -> None:
        """The zygote killed and reaped, and what it forked after the keeper gave up on it."""
        zygote, self.zygote = self.zygote, None
        if zygote is None:
            return
        status = end_process(zygote.popen)
        for pid in zygote.late_forks():  # its channel closed with it: nothing will activate them
            end_process(AdoptedProcess(pid))
        zygote.sock.close()
        self.log.emit(Event.ZYGOTE_ENDED, pid=zygote.popen.pid, why=why, **exit_fields(status))

    def fork_standby(self) -> Spawned | str:
        """A daemon process forked by the zygote, adopted; or why none was (the caller spawns
        one). A zygote that fails is ended, and another started for the standbys after this one."""
        if (zygote := self.zygote) is None:
            return self.no_zygote or "no zygote"
        try:
            seen = zygote.import_s is not None
            if not zygote.ready():
                return "zygote importing"
            if not seen:
                self.log.emit(Event.ZYGOTE_READY, pid=zygote.popen.pid, import_s=zygote.import_s)
                # imported: its forks are on the keeper's path to the next reap, so they go at the
                # keeper's niceness (the standbys it forks are niced like spawned ones, below)
                nice_as_keeper(zygote.popen.pid)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            asked = time.monotonic()
            try:
                pid = zygote.fork(theirs, ZYGOTE_BOUND_S)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
        except ZygoteFailed as e:
            self.end_zygote(str(e))
            self.start_zygote()
            return f"zygote {e}"
        return Spawned(AdoptedProcess(pid), ours, Made.FORKED, round(time.monotonic() - asked, 4))

    def start_standby(self) -> None:
        """The next incarnation's process, forked by the zygote if it is ready, else started now
        to wait, niced while it imports. Only the keeper knows it: its pid is in no file the host
        or statekill.py read, it is no `child` any fault signals, and it writes nothing to the
        daemon's log until activated."""
        self.start_zygote()
        forked = self.fork_standby()
        if isinstance(forked, Spawned):
            spawned, why = forked, None
        else:
            spawned, why = self.spawn(), forked
        nice_down(spawned.process.pid)
        self.standby = spawned
        self.log.emit(Event.STANDBY, pid=spawned.process.pid, made=spawned.made, fork_s=spawned.fork_s,
                      why_spawned=why)

    def end_standby(self, why: str, spawned: Spawned | None = None) -> None:
        """The standby (or `spawned`, one taken from it) ended unactivated: killed if it lives (it
        holds nothing of the cache), reaped, logged. Never a DIED: it was no incarnation."""
        if spawned is None:
            spawned, self.standby = self.standby, None
        if spawned is None:
            return
        status = end_process(spawned.process)
        spawned.sock.close()
        self.log.emit(Event.STANDBY_ENDED, pid=spawned.process.pid, why=why, **exit_fields(status))

    def activate(self, spawned: Spawned) -> int | None:
        """Make `spawned` incarnation self.incarnation: back to the keeper's niceness (before any of
        its threads is started: they inherit it), then its number and the device fd. Returns the
        niceness it serves at (None: unknown); OSError if it is gone (nothing can be queued)."""
        pid = spawned.process.pid
        nice_as_keeper(pid)  # gone: the send says so
        try:
            nice: int | None = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            nice = None
        send_activation(spawned.sock, self.incarnation, self.device_fd)
        return nice

    def start_daemon(self) -> None:
        """The next incarnation, always after the one before it was reaped (the loop in run): the
        standby (GuestConfig.standby) if it is still there, else a process started now (a cold
        start), activated. Then, with GuestConfig.standby, the process of the one after it."""
        self.incarnation += 1
        spawned, self.standby = self.standby, None
        standby = spawned is not None
        if spawned is not None:
            try:
                nice = self.activate(spawned)
            except OSError:  # gone before its turn: its end is closed, the activation refused (EPIPE)
                self.end_standby("gone at its turn", spawned)
                spawned, standby = None, False
        if spawned is None:
            spawned = self.spawn()
            nice = self.activate(spawned)  # queued in the socket buffer: read whenever it gets there
        # after the activation (datagrams in order): supervise_fds, the held anon fds both ways;
        # then the go, once the keeper knows it as its incarnation (its child, the pid file, the log)
        kept = False
        try:
            if self.held is not None:
                self.held.hand_over(spawned.sock)
            self.child = spawned.process
            if self.config.mode == Mode.NO_FAILOVER:
                os.close(self.device_fd)
                self.device_fd = -1
            write_atomically(os.path.join(self.config.log_dir, DAEMON_PID_FILE), f"{self.child.pid}\n")
            self.log.emit(Event.STARTED, incarnation=self.incarnation, pid=self.child.pid, standby=standby,
                          made=spawned.made, nice=nice)
            try:
                send_go(spawned.sock)
            except OSError:
                pass  # dead already: reap() says so
            if self.held is not None:
                thread = threading.Thread(target=self.held.serve, args=(spawned.sock,), name="held-fds", daemon=True)
                thread.start()
                self.supervision, kept = (spawned.sock, thread), True
        finally:
            if not kept:
                spawned.sock.close()
        # The one after it, waiting from now on. In no_failover too: what the negative control
        # differs in is the device fd dying with the daemon, not how fast the next one starts (it
        # binds a new cache, which the mounts the death failed never use).
        if self.config.standby and not self.stopping:
            self.start_standby()

    def reap(self) -> None:
        assert self.child is not None
        status = self.child.wait()
        if self.supervision is not None:  # its end of the channel is closed: what it sent is read
            sock, thread = self.supervision
            thread.join(10)
            sock.close()
            self.supervision = None
        self.log.emit(Event.DIED, incarnation=self.incarnation, pid=self.child.pid, **exit_fields(status))
        self.child = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR2, self.kill_cache)
        signal.signal(signal.SIGUSR1, self.kill_waiter)
        signal.signal(signal.SIGRTMIN + UMOUNT_REOPEN_RT_OFFSET, self.umount_in_reopen)
        self.bind()
        write_atomically(self.config.keeper_state_file, KEEPER_BOUND)
        if (held := self.held) is not None:
            threading.Thread(target=held.watch, args=(lambda: self.stopping,), name="prune", daemon=True).start()
        try:
            self.serve_incarnations()
        finally:  # an error too: no process of ours is left waiting
            try:
                self.end_standby("keeper stopping")
            finally:
                self.end_zygote("keeper stopping")
        self.clean_up_waiters()  # a waiter killed as the keeper stopped
        if (unmounting := self.unmounting) is not None:  # stopping: it takes no further one
            unmounting.join(self.config.stall_bound_s)
        for thread in self.cleanups:
            thread.join(self.config.stall_bound_s / 3)
        if self.held is not None:
            self.held.close_all()  # before the device: the cache is withdrawn when the last fd goes
        if self.device_fd >= 0:
            os.close(self.device_fd)
        self.log.emit(Event.STOPPED)
        return 0

    def serve_incarnations(self) -> None:
        """Each incarnation started (activated) only once the one before it is reaped, until the
        keeper is told to stop."""
        if self.config.standby:
            self.start_zygote()  # importing beside the first incarnation, for the standbys after it
        while not self.stopping:
            if self.device_fd < 0 and not self.rebind():
                continue
            self.start_daemon()
            if self.stopping and self.child is not None:
                self.child.terminate()  # the SIGTERM came as it was being started: it saw no child
            self.clean_up_waiters()
            self.reap()
            with self.waiter_lock:  # the death was the waiter's kill: no daemon until the waiter is done
                waiting = self.killing_waiter if self.waiter_holds_restart else None
            if waiting is not None:
                waiting.join()
                with self.waiter_lock:
                    self.killing_waiter, self.waiter_holds_restart = None, False
            if not self.stopping:
                time.sleep(self.config.restart_delay_s)

    def kill_cache(self, _signum: int, _frame: object) -> None:
        """Fault.CACHE_DEATH: our references go first, so that the daemon's is the last."""
        if self.device_fd < 0 or self.child is None:
            return
        if self.held is not None:
            self.held.close_all()
        os.close(self.device_fd)
        self.device_fd = -1
        self.log.emit(Event.CACHE_DEATH, incarnation=self.incarnation, pid=self.child.pid)
        try:
            self.child.send_signal(signal.SIGRTMIN + CACHE_DEATH_RT_OFFSET)
        except ProcessLookupError:
            pass  # dead already: its device fd went with it

    def kill_waiter(self, _signum: int, _frame: object) -> None:
        """Fault.KILL_WAITER, in a thread of its own (it waits on the waiter); once it has killed
        the daemon, the main loop starts the next incarnation only when it is done."""
        with self.waiter_lock:
            child = self.child
            if child is None or child.poll() is not None or self.killing_waiter is not None:
                missed = "a waiter is being killed" if self.killing_waiter is not None else "no daemon serving"
                self.log.emit(Event.WAITER_KILLED, pid=None, fsid=None, waiting_in=None, gone_s=None, missed=missed)
                return
            self.killing_waiter = threading.Thread(target=self._kill_a_waiter, name="waiter", daemon=True)
            self.killing_waiter.start()

    def _kill_the_daemon_for_the_waiter(self, deadline: float) -> None:
        """The fault's kill, of the incarnation serving now (the one serving when the fault came
        may have died of another fault since), holding its restart until the waiter is done. One
        kill, always: the host counts it."""
        while True:
            with self.waiter_lock:
                child = self.child
                if child is not None and child.poll() is None or time.monotonic() >= deadline:
                    self.waiter_holds_restart = True
                    break
            time.sleep(0.01)
        if child is not None:
            child.kill()
            child.wait()

    def _kill_a_waiter(self) -> None:
        """Whatever fails here, a daemon is killed (the host waits for the next incarnation), the
        waiter too, and its mount is left to clean_up_waiters."""
        self.waiters += 1
        images = sorted(self.config.images)
        fsid = f"{images[self.waiters % len(images)]}.waiter{self.waiters}"
        target = os.path.join(self.config.mount_dir, fsid)
        bound = self.config.stall_bound_s / 6
        waiter: subprocess.Popen[str] | None = None
        mounted, killed, waiting_in, gone_s = False, False, None, None
        try:
            waiter = start_waiter(fsid, target)
            mounted = waiter_mounted(waiter, 3 * bound)
            self._kill_the_daemon_for_the_waiter(time.monotonic() + 2 * bound)  # mounted or not
            killed = True
            if mounted:
                trace_mark(WAITER_GO_MARK, waiter.pid)
                waiter.stdin.write("read\n")
                waiter.stdin.flush()
                deadline = time.monotonic() + bound
                waiting_in = waiting_on_request(waiter, deadline)
                # the next incarnation starts anyway if it has not gone: it will answer, and the waiter go
                gone_s = kill_and_wait(waiter, bound)
        finally:
            if not killed:
                self._kill_the_daemon_for_the_waiter(time.monotonic())
            if waiter is not None:
                end_waiter(waiter, mounted)
                self.killed_waiters.append((waiter, target))
            self.log.emit(Event.WAITER_KILLED, pid=None if waiter is None else waiter.pid, fsid=fsid, mounted=mounted,
                          waiting_in=waiting_in, gone_s=gone_s)

    def umount_in_reopen(self, _signum: int, _frame: object) -> None:
        """Fault.UMOUNT_REOPEN, in a thread of its own (it waits on the waiter and the daemon),
        one at a time: one asked for while another is under way waits its turn. The daemon
        serves on meanwhile."""
        with self.unmount_lock:
            self.unmounts_asked += 1
            if self.unmounting is None:
                self.unmounting = threading.Thread(target=self._umount_in_reopen_all, name="reopen-umount", daemon=True)
                self.unmounting.start()

    def _umount_in_reopen_all(self) -> None:
        while True:
            with self.unmount_lock:
                if self.reopen_umounts == self.unmounts_asked or self.stopping:
                    self.unmounting = None  # the next signal starts a thread again
                    return
                self.reopen_umounts += 1
            at = UMOUNT_AT[(self.reopen_umounts - 1) % len(UMOUNT_AT)]
            try:
                self._umount_in_reopen(at)
            except Exception as e:  # noqa: BLE001 - logged; the next one goes on
                self.log.emit(Event.REOPEN_UMOUNTED, pid=None, fsid=None, at=at, missed=f"{type(e).__name__}: {e}")

    def _umount_in_reopen(self, at: str) -> None:
        """Whatever fails here, the hold is ended, the waiter killed and its mount let go."""
        n = self.reopen_umounts
        images = sorted(self.config.images)
        fsid = f"{images[n % len(images)]}.reopen{n}"
        target = os.path.join(self.config.mount_dir, fsid)
        bound = self.config.stall_bound_s / 6
        waiter: subprocess.Popen[str] | None = None
        mounted, closed, reached, detached, gone_s, dropped_s = False, "", False, None, None, None
        try:
            waiter = start_waiter(fsid, target)
            # as long as a daemon's restart may take (4.5-5 s under TCG, adversarial seed 1) and the mount after it
            if mounted := waiter_mounted(waiter, 3 * bound):
                for stale in (self.config.reopen_state_file, self.config.reopen_file):
                    remove(stale)
                write_atomically(self.config.reopen_file, fsid + "\n")
                # the incarnation serving now (the one that served the mount may have died since:
                # its anon fds closed with it, and this one is told to hold the reopen), once it
                # says so: before, its handler may not be there, and the signal would kill it. As
                # long as the mount may take: a daemon killed meanwhile is restarted, and a new
                # incarnation under the debug flavour took longer than a sixth of the stall bound
                # to serve (adversarial debug seed 1)
                if (pid := self.serving_pid(time.monotonic() + 2 * bound)) is not None:
                    os.kill(pid, signal.SIGRTMIN + UMOUNT_REOPEN_RT_OFFSET)
                    replaced = lambda: self.child is None or self.child.pid != pid  # noqa: E731
                    closed = wait_for_file(self.config.reopen_state_file, "", time.monotonic() + bound, gone=replaced)
                    if not closed and replaced():
                        # killed before it said (adversarial debug seed 2: it had closed the fd,
                        # then nothing for 1.5 s, then the host's kill): its anon fds went with
                        # it, and the next incarnation holds the reopen (the file names the cookie)
                        closed = REOPEN_NONE
            if closed.startswith((REOPEN_CLOSED, REOPEN_NONE)) and waiter is not None and waiter.stdin is not None:
                trace_mark(REOPEN_GO_MARK, waiter.pid)
                waiter.stdin.write("read\n")
                waiter.stdin.flush()
                if at == UmountAt.READ:
                    reached = waiting_on_request(waiter, time.monotonic() + bound).startswith(WAITER_WCHAN_PREFIX)
                else:
                    # the daemon that closed the fd may die before the OPEN comes: the next one
                    # holds it, once started (adversarial seed 1: killed 0.5 s after the close, its
                    # successor read the device 4.5 s later)
                    reached = wait_for_file(self.config.reopen_state_file, REOPEN_HELD,
                                            time.monotonic() + 2 * bound).startswith(REOPEN_HELD)
                if at in AT_RESTORE and reached:
                    reached = self._kill_holder_until_restored(fsid, at, bound)
                # detached first: the mount goes with the waiter's last file, as it dies
                detached = detach(target)
            if waiter is not None and mounted:
                gone_s = kill_and_wait(waiter, bound)
            if detached == 0:
                dropped_s = cookie_dropped(fsid, bound)
        finally:
            remove(self.config.reopen_file)  # the hold ends
            remove(self.config.reopen_state_file)
            if waiter is not None:
                end_waiter(waiter, mounted)
            thread = threading.Thread(target=_unmount_after, args=(waiter, target), name="reopen-umount-end", daemon=True)
            thread.start()
            self.cleanups.append(thread)
            self.log.emit(Event.REOPEN_UMOUNTED, pid=None if waiter is None else waiter.pid, fsid=fsid, at=at,
                          closed=closed.strip() or None, reached=reached, detached=detached, gone_s=gone_s,
                          dropped_s=dropped_s)

    def _kill_holder_until_restored(self, fsid: str, at: str, bound: float) -> bool:
        """AT_RESTORE: SIGKILL the incarnation that holds the reopen's OPEN (or its successor,
        which holds it again), wait until the next one has written `restore` (it then waits), and
        let it go on; the caller unmounts at once (RESTORE), or once it says it serves (REDELIVER:
        its threads start reading). Whether it got that far."""
        remove(self.config.reopen_state_file)  # first: a `restored` written after the next line is kept
        write_atomically(self.config.reopen_file, f"{fsid}\n{at}\n")
        if (child := self.child) is not None:
            child.kill()
        restored = wait_for_file(self.config.reopen_state_file, REOPEN_RESTORED,
                                 time.monotonic() + self.config.restart_delay_s + 2 * bound)
        # go: the hold goes on (the file names the cookie); no later incarnation waits
        write_atomically(self.config.reopen_file, fsid + "\n")
        if not restored.startswith(REOPEN_RESTORED):
            return False
        return at != UmountAt.REDELIVER or self.serving_pid(time.monotonic() + bound) is not None

    def serving_pid(self, deadline: float) -> int | None:
        """The pid of the incarnation that says it serves (daemon.state), if it is our child's."""
        while True:
            child = self.child
            said = parse_daemon_state(text_of(self.config.daemon_state_file) or "")
            if child is not None and child.poll() is None and said is not None and said[1] == child.pid:
                return child.pid
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def clean_up_waiters(self) -> None:
        """The killed waiters' mounts go once a daemon serves (the umount's CLOSE waits for one)."""
        pending, self.killed_waiters = self.killed_waiters, []
        for waiter, target in pending:
            thread = threading.Thread(target=_unmount_after, args=(waiter, target), name="waiter-umount", daemon=True)
            thread.start()
            self.cleanups.append(thread)

    def _on_term(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()


def nice_as_keeper(pid: int) -> None:
    """Back to the keeper's niceness (a zygote done importing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))
    except OSError:
        pass  # not allowed to lower it (no CAP_SYS_NICE: the unit tests), or gone


def nice_down(pid: int) -> None:
    """A process that imports (a spawned standby, the zygote) at STANDBY_NICE above the keeper."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + STANDBY_NICE)
    except OSError:
        pass  # gone already: found so when it is needed, and ended then


def _unmount_after(waiter: subprocess.Popen[str] | None, target: str) -> None:
    if waiter is not None:
        waiter.wait()
    umount(target)  # EINVAL if detached already, or never mounted
    try:
        os.rmdir(target)
    except OSError:
        pass


def start_waiter(fsid: str, target: str) -> subprocess.Popen[str]:
    os.makedirs(target, exist_ok=True)
    return subprocess.Popen([sys.executable, "-S", os.path.join(HERE, "waiter.py"), "--fsid", fsid, "--target", target],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def waiter_mounted(waiter: subprocess.Popen[str], bound_s: float) -> bool:
    """Whether the waiter said it mounted within the bound. Its mount, which the daemon serves,
    may queue behind a busy daemon's work and a daemon's restart: half the stall bound (a sixth,
    5 s under TCG, missed one of 4 in adversarial seed 1)."""
    assert waiter.stdout is not None
    ready, _, _ = select.select([waiter.stdout], [], [], bound_s)
    return bool(ready) and waiter.stdout.readline().startswith(WAITER_MOUNTED)


def waiting_on_request(waiter: subprocess.Popen[str], deadline: float) -> str:
    """The waiter's wchan once it waits on an on-demand request, or the last one seen by the deadline."""
    while not (waiting_in := read_proc(f"/proc/{waiter.pid}/wchan")).startswith(WAITER_WCHAN_PREFIX) \
            and time.monotonic() < deadline and waiter.poll() is None:
        time.sleep(0.005)
    return waiting_in


def kill_and_wait(waiter: subprocess.Popen[str], bound_s: float) -> float | None:
    """SIGKILL; how soon it went, None if not within the bound."""
    waiter.kill()
    killed = time.monotonic()
    try:
        waiter.wait(bound_s)
    except subprocess.TimeoutExpired:
        return None
    return round(time.monotonic() - killed, 4)


def end_waiter(waiter: subprocess.Popen[str], mounted: bool) -> None:
    """Killed once mounted. A waiter still mounting is left to finish and leave on its own (its
    stdin closed): a SIGKILL would end its mount's requests, which the daemon was given, and
    refuse the daemon's answers (adversarial seed 1: a READ_COMPLETE refused, a daemon error)."""
    if mounted:
        waiter.kill()
    for pipe in (waiter.stdin, waiter.stdout):
        if pipe is not None:
            pipe.close()


def wait_for_file(path: str, prefix: str, deadline: float, gone: Callable[[], bool] = lambda: False) -> str:
    """The file's text once it starts with `prefix` (any text, for ""), or what it says by the
    deadline, or once whoever was to write it is `gone` ("" if it had not)."""
    while True:
        text = text_of(path) or ""
        if text and text.startswith(prefix) or time.monotonic() >= deadline:
            return text
        if gone():
            return text_of(path) or ""
        time.sleep(0.005)


def cookie_dropped(fsid: str, bound_s: float) -> float | None:
    """How soon the mount's cookie (its key: the fsid) was dropped or gone from the kernel's
    list: withdrawn, its object dropped. None if not within the bound."""
    start = time.monotonic()
    while (cookies := text_of(NETFS_COOKIES)) is None or cookie_live(cookies, fsid):
        if time.monotonic() - start > bound_s:
            return None
        time.sleep(0.005)
    return round(time.monotonic() - start, 4)


def text_of(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    return Keeper(GuestConfig.read(args.config), args.config).run()


if __name__ == "__main__":
    sys.exit(main())
