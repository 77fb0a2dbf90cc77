"""Holds /dev/cachefiles across daemon deaths and restarts the daemon: the systemd stand-in.

The device fd is opened and bound once, here. Each daemon incarnation gets it over a Unix
socketpair made *before* the incarnation starts (SCM_RIGHTS), so a kill that lands while the
daemon is still starting cannot wedge the keeper: there is no accept() to wait in. The next
incarnation is started only after the previous one has been reaped, so none of its anon fds is
still open when the new one writes `restore`.

In `no_failover` mode the keeper gives its copy of the device fd away: when the daemon dies the
cache dies with it (every queued request fails with EIO). That is the negative control.
"""
from __future__ import annotations

import argparse
import array
import os
import signal
import socket
import subprocess
import sys
import time

from contract import KEEPER_BOUND, Event, GuestConfig, Mode
from eventlog import EventLog, write_atomically

HERE = os.path.dirname(os.path.abspath(__file__))


def send_fd(sock: socket.socket, fd: int) -> None:
    sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def recv_fd(sock: socket.socket) -> int:
    """The device fd from the keeper; raises EOFError if the keeper sent nothing."""
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not msg or not fds:
        raise EOFError("no fd received")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


def open_cache(cache_dir: str, tag: str) -> int:
    fd = os.open("/dev/cachefiles", os.O_RDWR | os.O_CLOEXEC)
    for command in (f"dir {cache_dir}", f"tag {tag}", "bind ondemand"):
        os.write(fd, command.encode())
    return fd


class Keeper:
    def __init__(self, config: GuestConfig, config_path: str) -> None:
        self.config = config
        self.config_path = config_path  # handed on to each daemon incarnation
        self.log = EventLog(config.keeper_log, who="keeper")
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.device_fd = -1
        self.incarnation = 0

    def bind(self) -> None:
        self.device_fd = open_cache(self.config.cache_dir, self.config.tag)
        self.log.emit(Event.BOUND, cache_dir=self.config.cache_dir, mode=self.config.mode)

    def rebind(self) -> bool:
        """no_failover: a naive restart opens the device anew; the old mounts stay dead."""
        try:
            self.bind()
            return True
        except OSError as e:
            self.log.emit(Event.BIND_FAILED, errno=e.errno, error=e.strerror)
            time.sleep(1.0)
            return False

    def start_daemon(self) -> None:
        self.incarnation += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            cmd = [sys.executable, "-S", os.path.join(HERE, "daemon.py"),
                   "--config", self.config_path, "--sock-fd", str(theirs.fileno()),
                   "--incarnation", str(self.incarnation)]
            self.child = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], close_fds=True)
            # Queued in the socket buffer: the daemon picks it up whenever it gets there.
            send_fd(ours, self.device_fd)
        finally:
            ours.close()
            theirs.close()
        if self.config.mode == Mode.NO_FAILOVER:
            os.close(self.device_fd)
            self.device_fd = -1
        self.log.emit(Event.STARTED, incarnation=self.incarnation, pid=self.child.pid)

    def reap(self) -> None:
        assert self.child is not None
        status = self.child.wait()
        self.log.emit(Event.DIED, incarnation=self.incarnation, pid=self.child.pid,
                      signal=-status if status < 0 else None, exit_code=status if status >= 0 else None)
        self.child = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        self.bind()
        write_atomically(self.config.keeper_state_file, KEEPER_BOUND)
        while not self.stopping:
            if self.device_fd < 0 and not self.rebind():
                continue
            self.start_daemon()
            self.reap()
            if not self.stopping:
                time.sleep(self.config.restart_delay_s)
        if self.device_fd >= 0:
            os.close(self.device_fd)
        self.log.emit(Event.STOPPED)
        return 0

    def _on_term(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    return Keeper(GuestConfig.read(args.config), args.config).run()


if __name__ == "__main__":
    sys.exit(main())
