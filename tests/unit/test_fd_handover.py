"""The keeper's SCM_RIGHTS hand-over, over a real socketpair."""
import os
import socket

import pytest

from keeper import recv_fd, send_fd


def test_fd_survives_the_hand_over(tmp_path):
    path = tmp_path / "device"
    path.write_bytes(b"cachefiles")
    fd = os.open(path, os.O_RDONLY)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        send_fd(ours, fd)
        os.close(fd)  # the sender's copy is gone: only the passed one remains
        got = recv_fd(theirs)
    try:
        assert os.pread(got, 10, 0) == b"cachefiles"
    finally:
        os.close(got)


def test_sent_before_the_receiver_exists():
    """The keeper sends before the daemon runs: the fd waits in the socket buffer."""
    r, w = os.pipe()
    ours, theirs = socket.socketpair()
    send_fd(ours, w)
    ours.close()
    pid = os.fork()
    if pid == 0:
        try:
            got = recv_fd(theirs)
            os.write(got, b"ok")
        finally:
            os._exit(0)
    theirs.close()
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 2) == b"ok"
    os.close(r)


def test_nothing_sent_is_an_error():
    ours, theirs = socket.socketpair()
    ours.close()
    with theirs, pytest.raises(EOFError):
        recv_fd(theirs)
