"""The zygote's side (GuestConfig.standby): daemon.py imported once, forked for each standby.

Under TCG a Python start and daemon.py's imports cost seconds of CPU, so a standby started as a
process of its own was often still importing at its turn. The keeper starts this one once
(`daemon.py --zygote-fd N`, niced as a standby is), which has imported daemon.py and all it
needs, holds nothing of the cache, starts no thread and waits on its channel to the keeper (a
SOCK_SEQPACKET pair). Each FORK there carries, by SCM_RIGHTS, the daemon's end of a new
activation channel, the one Keeper.spawn would hand a spawned process. The zygote forks; the
child forks the daemon process and exits at once; the zygote reaps the child and only then
answers FORKED with the daemon process's pid: by then it is the keeper's child (the keeper is a
child subreaper, so an orphan of its descendants is re-parented to it), which the keeper waits
for, and statekill.py finds by its parent, as a spawned one. The daemon process closes every
fd but its activation channel and stdio, puts back the signal dispositions and mask the zygote
started with (a fresh Python's), and goes on as a spawned one does after its imports: it waits
for its activation (daemon.run). What must differ per process is made only there, after the
fork: the config read, the Daemon (its log, stamped with its pid; its rng, seeded by its
incarnation; its locks, eventfds and threads). daemon.py's imports set up constants only, and the
random module reseeds itself at a fork.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from keeper import FORK, FORKED, READY, REFUSED, recv_msg, send_msg

UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


@dataclass(frozen=True)
class SignalState:
    """The dispositions and mask a process started with: what a forked daemon process is given
    back, whatever the zygote did since."""

    handlers: dict[int, Any]
    mask: set[int | signal.Signals]

    @classmethod
    def now(cls) -> "SignalState":
        handlers = {}
        for signum in signal.valid_signals():
            try:
                handler = signal.getsignal(signum)
            except (OSError, ValueError):
                continue
            if handler is not None and signum not in UNCATCHABLE:  # None: not Python's to set
                handlers[int(signum)] = handler
        return cls(handlers, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def restore(self) -> None:
        for signum, handler in self.handlers.items():
            if signal.getsignal(signum) != handler:
                signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


def serve(channel: socket.socket, run: Callable[[int], int]) -> int:
    """The zygote: READY once (everything imported), then a daemon process for each FORK, until
    the keeper closes its end (or dies)."""
    started = SignalState.now()
    try:
        send_msg(channel, {"op": READY, "t": time.time()})
        while True:
            meta, fd = recv_msg(channel)
            if meta.get("op") != FORK or fd is None:
                reply: dict[str, Any] = {"op": REFUSED, "error": f"not a fork: {meta}"}
            else:
                try:
                    reply = {"op": FORKED, "pid": fork_daemon(channel, fd, run, started)}
                except OSError as e:
                    reply = {"op": REFUSED, "error": f"{type(e).__name__}: {e}"}
            if fd is not None:
                os.close(fd)  # the daemon process's now: its end is closed when it exits
            send_msg(channel, reply)
    except (EOFError, OSError):
        return 0  # the keeper let us go


def fork_daemon(channel: socket.socket, sock_fd: int, run: Callable[[int], int], signals: SignalState) -> int:
    """The pid of a daemon process forked to wait on `sock_fd`, once it is no child of ours."""
    readable, writable = os.pipe()  # the child's word: the daemon process's pid
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered here is written again by a fork
        child = os.fork()
        if child == 0:
            _fork_and_exit(channel, sock_fd, run, signals, readable, writable)
        os.close(writable)
        writable = -1
        _, status = os.waitpid(child, 0)  # reaped: its child is the keeper's now
        said = b""
        while chunk := os.read(readable, 64):
            said += chunk
    finally:
        os.close(readable)
        if writable >= 0:
            os.close(writable)
    if not said:
        raise ChildProcessError(f"no daemon process forked (the child's exit status {status})")
    return int(said)


def _fork_and_exit(channel: socket.socket, sock_fd: int, run: Callable[[int], int], signals: SignalState,
                   readable: int, writable: int) -> NoReturn:
    """The zygote's child: the daemon process forked, its pid said, gone (never back into the
    zygote's loop, whatever fails)."""
    code = 1
    try:
        os.close(readable)
        pid = os.fork()
        if pid == 0:
            os.close(writable)
            _be_the_daemon(channel, sock_fd, run, signals)
        os.write(writable, str(pid).encode())
        code = 0
    finally:
        os._exit(code)


def _be_the_daemon(channel: socket.socket, sock_fd: int, run: Callable[[int], int], signals: SignalState) -> NoReturn:
    """The daemon process: nothing of the zygote's kept, then the daemon's own start; it exits
    as a Python process does (a SystemExit's code, 1 and the traceback for an error)."""
    status: int = 1
    try:
        channel.close()  # the keeper's EOF on it is the zygote's end, and nobody else's
        for fd in {int(name) for name in os.listdir("/proc/self/fd")} - {0, 1, 2, sock_fd}:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own, closed already
        signals.restore()
        status = run(sock_fd)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported as the interpreter would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
