"""The keeper's SCM_RIGHTS hand-overs (the activation, the held anon fds), over real socketpairs."""
import json
import os
import socket
import threading

import pytest

from helpers import COOKIES_HEADER, cookie_row
from keeper import await_activation, send_activation, send_msg


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_the_activation_carries_the_incarnation_and_the_device_fd(tmp_path):
    path = tmp_path / "device"
    path.write_bytes(b"cachefiles")
    fd = os.open(path, os.O_RDONLY)
    ours, theirs = seqpacket_pair()
    with ours, theirs:
        send_activation(ours, 7, fd)
        os.close(fd)  # the sender's copy is gone: only the passed one remains
        incarnation, got, waited = await_activation(theirs)
    try:
        assert incarnation == 7 and os.pread(got, 10, 0) == b"cachefiles"
        assert waited is None  # queued before it asked: a cold start, not a standby
    finally:
        os.close(got)


def test_sent_before_the_receiver_exists():
    """A cold start: the keeper sends before the daemon runs, the fd waits in the socket buffer."""
    r, w = os.pipe()
    ours, theirs = seqpacket_pair()
    send_activation(ours, 1, w)
    ours.close()
    pid = os.fork()
    if pid == 0:
        try:
            _, got, _ = await_activation(theirs)
            os.write(got, b"ok")
        finally:
            os._exit(0)
    theirs.close()
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 2) == b"ok"
    os.close(r)


def test_a_standby_waits_for_its_activation_and_says_how_long():
    r, w = os.pipe()
    ours, theirs = seqpacket_pair()
    with ours, theirs:
        sender = threading.Timer(0.3, send_activation, args=(ours, 2, w))
        sender.start()
        incarnation, got, waited = await_activation(theirs)
        sender.join()
    assert incarnation == 2 and waited is not None and waited >= 0.25
    for fd in (r, w, got):
        os.close(fd)


def test_nothing_sent_is_an_error():
    """A standby let go unactivated: its keeper's end closed."""
    ours, theirs = seqpacket_pair()
    ours.close()
    with theirs, pytest.raises(EOFError):
        await_activation(theirs)


def test_anything_but_an_activation_is_refused_and_its_fd_closed():
    r, w = os.pipe()
    ours, theirs = seqpacket_pair()
    with ours, theirs:
        send_msg(ours, {"op": "end"}, w)
        os.close(w)
        with pytest.raises(EOFError, match="not an activation"):
            await_activation(theirs)
    assert os.read(r, 1) == b""  # no copy of the write end is left open
    os.close(r)


def test_the_supervisor_keeps_deposited_fds_across_a_death_and_hands_them_over(tmp_path):
    """supervise_fds, over real SEQPACKET pairs: what one incarnation deposits and does not take
    back outlives it (its end of the channel closed), with whether its OPEN was answered; a drop
    is answered once the keeper's copy is closed."""
    from contract import Event
    from daemon import Supervisor
    from eventlog import EventLog
    from keeper import HeldFds

    cookies = tmp_path / "cookies"
    cookies.write_text(COOKIES_HEADER + "".join(cookie_row(oid, f"img0.{oid}", "A") for oid in (3, 4, 5)))
    held = HeldFds(EventLog(str(tmp_path / "keeper.jsonl"), who="keeper"), str(cookies))
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


@pytest.mark.parametrize("listed", ["dropped", "dropped, and live under a new mount", "not listed",
                                    "dropped in one read only", "unreadable"])
def test_only_the_fd_of_a_cookie_the_kernel_lists_dropped_goes(tmp_path, monkeypatch, listed):
    """A daemon killed between reading an object's CLOSE and its `drop` leaves the fd with the
    keeper; once the kernel lists its cookie dropped (and none of its key live), in two reads
    that agree, the next incarnation does not get it and the keeper's copy is closed. Anything
    less certain keeps it: a row a read skipped, a key not listed, a list that cannot be read."""
    import keeper
    from contract import Event
    from daemon import Supervisor
    from eventlog import EventLog

    live = cookie_row(3, "img0.3", "A")
    reads = {"dropped": [live + cookie_row(4, "img0.4", "D")] * 2,
             "dropped, and live under a new mount": [live + cookie_row(4, "img0.4", "D") + cookie_row(5, "img0.4", "L")] * 2,
             "not listed": [live] * 2,
             "dropped in one read only": [live + cookie_row(4, "img0.4", "D"), live],
             "unreadable": [None, None]}[listed]
    texts = iter([None if r is None else COOKIES_HEADER + r for r in reads])
    monkeypatch.setattr(keeper, "text_of", lambda path: next(texts))
    held = keeper.HeldFds(EventLog(str(tmp_path / "keeper.jsonl"), who="keeper"), "cookies")
    r, w = os.pipe()
    held.fds = {3: (os.dup(w), {"object_id": 3, "cookie": "img0.3", "msg_id": 1}),
                4: (os.dup(w), {"object_id": 4, "cookie": "img0.4", "msg_id": 2})}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        held.hand_over(ours)
        got = Supervisor(theirs).receive_held()
    pruned = listed == "dropped"
    assert [m["object_id"] for m, _ in got] == ([3] if pruned else [3, 4])
    assert sorted(held.fds) == ([3] if pruned else [3, 4])
    for _, fd in got:
        os.close(fd)
    events = [json.loads(line) for line in open(tmp_path / "keeper.jsonl")]
    assert [e["object_ids"] for e in events if e["event"] == Event.PRUNED] == ([[4]] if pruned else [])
    if pruned:
        os.close(w)
        held.close_all()
        assert os.read(r, 1) == b""  # every copy of the write end closed: the pruned one too
    else:
        held.close_all()
        os.close(w)
    os.close(r)


def test_the_watch_prunes_between_hand_overs(tmp_path):
    """A cookie still being withdrawn at a hand-over is dropped a moment later: the watch lets
    its fd go while the next incarnation serves."""
    from contract import Event
    from eventlog import EventLog
    from keeper import HeldFds

    cookies = tmp_path / "cookies"
    cookies.write_text(COOKIES_HEADER + cookie_row(4, "img0.4", "D"))
    held = HeldFds(EventLog(str(tmp_path / "keeper.jsonl"), who="keeper"), str(cookies))
    r, w = os.pipe()
    held.fds = {4: (w, {"object_id": 4, "cookie": "img0.4", "msg_id": 2})}
    rounds = iter([False, True])
    held.watch(lambda: next(rounds), interval_s=0.01)
    assert held.fds == {}
    assert os.read(r, 1) == b""
    os.close(r)
    assert [json.loads(line)["event"] for line in open(tmp_path / "keeper.jsonl")] == [Event.PRUNED]
