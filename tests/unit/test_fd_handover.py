"""The keeper's SCM_RIGHTS hand-over, over a real socketpair."""
import json
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


def test_the_supervisor_keeps_deposited_fds_across_a_death_and_hands_them_over(tmp_path):
    """supervise_fds, over real SEQPACKET pairs: what one incarnation deposits and does not take
    back outlives it (its end of the channel closed), with whether its OPEN was answered; a drop
    is answered once the keeper's copy is closed."""
    import threading

    from contract import Event
    from daemon import Supervisor
    from eventlog import EventLog
    from keeper import HeldFds

    held = HeldFds(EventLog(str(tmp_path / "keeper.jsonl"), who="keeper"))
    files = {oid: os.open(tmp_path / f"anon{oid}", os.O_RDWR | os.O_CREAT) for oid in (3, 4, 5)}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    serving = threading.Thread(target=held.serve, args=(ours,))
    serving.start()
    dead = Supervisor(theirs)
    for oid, fd in files.items():
        dead.deposit(oid, fd, f"img0.{oid}", 10 + oid)
    dead.answered(3)
    dead.drop(5)  # returns once the keeper closed its copy
    assert sorted(held.fds) == [3, 4]
    for fd in files.values():
        os.close(fd)  # the daemon's own copies: it dies
    theirs.close()
    serving.join(5)
    assert not serving.is_alive()

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        held.hand_over(ours)
        got = Supervisor(theirs).receive_held()
    assert [(m["object_id"], m["cookie"], m["msg_id"], m["answered"]) for m, _ in got] == [
        (3, "img0.3", 13, True), (4, "img0.4", 14, False)]
    for meta, fd in got:
        os.write(fd, b"x")  # the same open file the dead one deposited
        os.close(fd)
        assert (tmp_path / f"anon{meta['object_id']}").read_bytes() == b"x"
    handed = [json.loads(line) for line in open(tmp_path / "keeper.jsonl")]
    assert [(e["event"], e["object_ids"], e["unanswered"]) for e in handed] == [(Event.HANDED_OVER, [3, 4], [4])]
    held.close_all()
    assert held.fds == {}
