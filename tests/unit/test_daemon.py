"""The daemon's answers, with a pipe standing in for /dev/cachefiles and a file for an anon fd.

What only the kernel can say (is READ_COMPLETE accepted, does restore re-deliver) is for the VM
tests; what the daemon writes, where, and what it logs is checked here.
"""
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

import protocol
from contract import parse_daemon_state
import daemon as daemon_module
from daemon import Daemon
from helpers import ROOT, guest_config
from keeper import send_activation, send_go


@pytest.fixture
def daemon(tmp_path):
    blob = tmp_path / "img0.erofs"
    blob.write_bytes(os.urandom(3 * 4096))
    config = guest_config(tmp_path, images={"img0": str(blob)})
    r, w = os.pipe()
    os.set_blocking(r, False)
    d = Daemon(config, w, incarnation=2)
    d.test_device_reader = r
    d.test_blob = blob
    yield d
    os.close(r)
    os.close(w)


def device_writes(d) -> bytes:
    try:
        return os.read(d.test_device_reader, 4096)
    except BlockingIOError:
        return b""


def events(d):
    return [json.loads(line) for line in open(d.config.daemon_log)]


def test_open_of_a_known_blob_answers_its_size(daemon, tmp_path):
    anon = os.open(tmp_path / "backing", os.O_RDWR | os.O_CREAT)
    daemon.handle(protocol.encode_open(11, 4, "erofs,img0.0x3", b"img0.0x3", anon))
    assert device_writes(daemon) == f"copen 11,{3 * 4096}".encode()
    assert daemon.objects[4].anon_fd == anon
    kinds = [(e["event"], e.get("op")) for e in events(daemon)]
    assert kinds == [("recv", "OPEN"), ("probe", None), ("done", "OPEN")]  # logged before it is acted on
    assert events(daemon)[1] == {**events(daemon)[1], "probe": "epollin", "outcome": "quiet", "drained": 0}
    assert events(daemon)[0]["incarnation"] == 2


def test_open_of_an_unknown_blob_fails_cleanly(daemon, tmp_path):
    anon = os.open(tmp_path / "backing", os.O_RDWR | os.O_CREAT)
    daemon.handle(protocol.encode_open(12, 5, "erofs,nothing.0x0", b"nothing.0x0", anon))
    assert device_writes(daemon) == f"copen 12,-{errno.ENOENT}".encode()
    assert 5 not in daemon.objects
    with pytest.raises(OSError):
        os.fstat(anon)  # the anon fd of a failed OPEN is closed


def test_read_writes_the_aligned_range_from_the_blob(daemon, tmp_path):
    backing = tmp_path / "backing"
    anon = os.open(backing, os.O_RDWR | os.O_CREAT)
    daemon.handle(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon))
    device_writes(daemon)
    daemon.handle(protocol.encode_read(2, 4, 4096 + 100, 50))
    data = daemon.test_blob.read_bytes()
    assert backing.read_bytes()[4096:8192] == data[4096:8192]  # the whole aligned page
    # a regular file refuses READ_COMPLETE: logged as an error, never as done
    last = events(daemon)[-1]
    assert last["event"] == "error" and last["msg_id"] == 2 and last["errno"] == errno.ENOTTY


def test_read_for_an_unknown_object_is_logged_not_fatal(daemon):
    daemon.handle(protocol.encode_read(3, 99, 0, 4096))
    assert events(daemon)[-1]["error"] == "unknown object"


def test_close_closes_the_anon_fd(daemon, tmp_path):
    anon = os.open(tmp_path / "backing", os.O_RDWR | os.O_CREAT)
    daemon.handle(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon))
    daemon.handle(protocol.encode_close(2, 4))
    assert 4 not in daemon.objects
    with pytest.raises(OSError):
        os.fstat(anon)


def test_restore_is_written_and_logged(daemon):
    daemon.restore()
    assert device_writes(daemon) == b"restore"
    assert events(daemon)[-1] == {**events(daemon)[-1], "event": "restore", "ok": True}


def test_garbage_is_logged_and_skipped(daemon):
    daemon.handle(b"\x01\x02")
    assert "bad message" in events(daemon)[-1]["error"]


def wait_for(what, timeout_s: float = 5.0):
    """`what()` once it is true; None when it never became so."""
    deadline = time.monotonic() + timeout_s
    while not (got := what()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


def open_objects(d, tmp_path, count: int) -> None:
    for i in range(count):
        anon = os.open(tmp_path / f"backing-{i}", os.O_RDWR | os.O_CREAT)
        d.handle(protocol.encode_open(i, 10 + i, f"erofs,img0.{i}", f"img0.{i}".encode(), anon))


class RecordingPoll:
    """select.poll, recording the arguments of every wait."""
    waits: list[tuple] = []

    def __init__(self, poll=select.poll):
        self._poller = poll()

    def register(self, fd, events):
        self._poller.register(fd, events)

    def poll(self, *timeout):
        self.waits.append(timeout)
        return self._poller.poll(*timeout)


def test_a_close_request_wakes_one_sleeping_thread_and_stop_wakes_them_all(daemon, tmp_path, monkeypatch):
    """Three threads asleep in poll() with no timeout on a device that never says readable (the
    write end of a pipe): a close request is served by exactly one of them, and stop ends all."""
    monkeypatch.setattr(select, "poll", RecordingPoll)
    monkeypatch.setattr(RecordingPoll, "waits", [])
    open_objects(daemon, tmp_path, 3)
    RecordingPoll.waits.clear()  # the OPENs' probes ask poll(0): not a wait
    threads = [threading.Thread(target=daemon.loop, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    daemon.on_request(signal.SIGUSR1, None)  # what the SIGUSR1 handler does, in the main thread
    closes = lambda: [e for e in events(daemon) if e["event"] == "close_fd"]
    assert wait_for(closes), "no thread woke for the close request"
    time.sleep(0.2)  # the others had their chance to take it too
    assert len(closes()) == 1 and len(daemon.objects) == 2
    daemon.stop(signal.SIGTERM, None)
    for t in threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in threads)
    assert [e["event"] for e in events(daemon)].count("empty_read") == 0  # nobody woke for the device
    assert RecordingPoll.waits and set(RecordingPoll.waits) == {()}  # never a timeout to hide a missed wake-up


def test_signals_reach_a_daemon_whose_threads_all_sleep_in_poll(tmp_path):
    """The real process, two serving threads: SIGUSR1 closes an anon fd and SIGTERM ends it at
    once, though nothing ever comes from the device (a SEQPACKET socket standing in for it)."""
    blob = tmp_path / "img0.erofs"
    blob.write_bytes(os.urandom(4096))
    config = guest_config(tmp_path, images={"img0": str(blob)}, threads=2)
    config.write(str(tmp_path / "config.json"))
    device, daemons_device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Both threads wake for a message and one reads it; /dev/cachefiles gives the other nothing
    # (read() returns 0), a blocking socket would keep it, and the delivery lock, for good.
    daemons_device.setblocking(False)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    send_activation(ours, 1, daemons_device.fileno())
    send_go(ours)  # the keeper's word that it knows the incarnation: the daemon may serve
    anon = os.open(tmp_path / "backing", os.O_RDWR | os.O_CREAT)  # same number in the daemon
    proc = subprocess.Popen([sys.executable, "-S", str(ROOT / "guest_scripts" / "daemon.py"),
                             "--config", str(tmp_path / "config.json"), "--sock-fd", str(theirs.fileno())],
                            pass_fds=[theirs.fileno(), anon])
    try:
        for fd in (ours, theirs, daemons_device):
            fd.close()
        os.close(anon)
        assert wait_for(lambda: (tmp_path / "daemon.state").exists() and parse_daemon_state(
            (tmp_path / "daemon.state").read_text()) == (1, proc.pid))
        device.send(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon))
        device.settimeout(5)
        assert device.recv(protocol.MAX_MSG_SIZE) == b"copen 1,4096"
        log = lambda: [json.loads(line) for line in open(config.daemon_log)]
        # the object is the daemon's once `done` is logged (copen is written before): closable
        assert wait_for(lambda: any(e["event"] == "done" and e["object_id"] == 4 for e in log()))
        proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: any(e["event"] == "close_fd" and e["object_id"] == 4 for e in log()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
        device.close()


# -- the probes: a SEQPACKET socket pair stands in for the device, the test for the kernel -----

@pytest.fixture
def wired(tmp_path):
    """A daemon whose device is one end of a SEQPACKET pair; the test holds the kernel's end."""
    blob = tmp_path / "img0.erofs"
    blob.write_bytes(os.urandom(3 * 4096))
    kernel, device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    d = Daemon(guest_config(tmp_path, images={"img0": str(blob)}), device.fileno(), incarnation=1)
    yield d, kernel
    kernel.close()
    device.close()


def probes(d, kind):
    return [e for e in events(d) if e["event"] == "probe" and e["probe"] == kind]


def anon_file(tmp_path, name="backing"):
    return os.open(tmp_path / name, os.O_RDWR | os.O_CREAT)


def test_a_read_of_another_object_is_drained_and_served_after_the_copen(wired, tmp_path):
    d, kernel = wired
    d.handle(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon_file(tmp_path, "a")))
    kernel.recv(64)
    kernel.send(protocol.encode_read(3, 4, 0, 4096))  # pending on object 4 when object 5's OPEN is read
    d.handle(protocol.encode_open(2, 5, "erofs,img0.0x1", b"img0.0x1", anon_file(tmp_path, "b")))
    assert kernel.recv(64).startswith(b"copen 2,")  # answered first, the READ after it
    assert probes(d, "epollin")[-1] == {**probes(d, "epollin")[-1], "outcome": "quiet", "drained": 1, "empties": 0}
    recvs = [e["msg_id"] for e in events(d) if e["event"] == "recv"]
    assert recvs == [1, 2, 3]


def test_a_read_of_the_object_being_opened_before_its_copen_is_a_violation(wired, tmp_path):
    """The negative control of patch 1's REOPENING state: the kernel delivered the READ early."""
    d, kernel = wired
    kernel.send(protocol.encode_read(3, 5, 0, 4096))
    d.handle(protocol.encode_open(2, 5, "erofs,img0.0x1", b"img0.0x1", anon_file(tmp_path)))
    assert probes(d, "epollin")[-1]["outcome"] == "early-read"


def test_a_device_readable_with_nothing_to_read_is_a_spin(wired, tmp_path):
    """The negative control of patch 4: poll() says readable, read() returns nothing, again and
    again (a shut-down peer reads as empty for ever)."""
    d, kernel = wired
    kernel.shutdown(socket.SHUT_WR)
    d.handle(protocol.encode_open(2, 5, "erofs,img0.0x1", b"img0.0x1", anon_file(tmp_path)))
    last = probes(d, "epollin")[-1]
    assert last["outcome"] == "spin" and last["empties"] == daemon_module.PROBE_SPINS


def reopen(d, kernel, tmp_path):
    """Open a cookie, lose its fd, and have the kernel OPEN it again: a reopen the daemon knows."""
    d.handle(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon_file(tmp_path, "a")))
    kernel.recv(64)
    d.close_random_fd()
    d.handle(protocol.encode_open(7, 6, "erofs,img0.0x0", b"img0.0x0", anon_file(tmp_path, "b")))


def test_a_reopen_whose_copen_wakes_nobody_is_caught(wired, tmp_path, monkeypatch):
    """The kernel's end answers nothing after the copen: the watcher stays asleep (the negative
    control of the wake_up_all a reopen's copen owes the daemon)."""
    d, kernel = wired
    monkeypatch.setattr(daemon_module, "WAKE_BOUND_S", 0.3)
    reopen(d, kernel, tmp_path)
    assert [p["outcome"] for p in probes(d, "wakeup")] == ["asleep"]


def test_a_reopen_whose_copen_wakes_the_watcher_holds(wired, tmp_path, monkeypatch):
    """A kernel that wakes the device for the copen (here: the READ made deliverable by it)."""
    d, kernel = wired
    monkeypatch.setattr(daemon_module, "WAKE_BOUND_S", 5.0)

    def kernel_side():
        kernel.recv(64)  # the first copen
        if kernel.recv(64).startswith(b"copen 7,"):
            kernel.send(protocol.encode_read(8, 6, 0, 4096))
    t = threading.Thread(target=kernel_side, daemon=True)
    d.handle(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon_file(tmp_path, "a")))
    d.close_random_fd()
    t.start()
    d.handle(protocol.encode_open(7, 6, "erofs,img0.0x0", b"img0.0x0", anon_file(tmp_path, "b")))
    t.join(5)
    assert [p["outcome"] for p in probes(d, "wakeup")] == ["woken"]


def test_a_crash_point_fires_only_once_the_incarnation_has_served(daemon, tmp_path, monkeypatch):
    """An incarnation serves CRASH_ARMED_AFTER requests before its crash point fires (but
    after_restore, which comes before any): a chain of deaths is the plan's wait, not the kernel's."""
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig))
    daemon.crash_point = "close_fd"
    daemon.point("close_fd")
    assert killed == []
    open_objects(daemon, tmp_path, daemon_module.CRASH_ARMED_AFTER)
    daemon.point("close_fd")
    assert killed == [signal.SIGKILL]
    daemon.crash_point, daemon.answered = "after_restore", 0
    daemon.point("after_restore")
    assert killed == [signal.SIGKILL, signal.SIGKILL]


def test_a_cache_death_lets_the_device_go_and_what_was_read_is_orphaned(daemon, tmp_path):
    """Fault.CACHE_DEATH: the device fd is replaced by /dev/null (its last reference goes: the
    kernel's end of it sees the close), every thread is told to stop, an OPEN read before is
    left unanswered (its anon fd closed), and only the cache's own refusals are `orphaned`: a
    READ_COMPLETE refused otherwise (a regular file: ENOTTY) stays an error."""
    daemon.config = replace(daemon.config, stall_bound_s=0.03)  # nothing is being served: no wait
    backing = tmp_path / "backing"
    anon = os.open(backing, os.O_RDWR | os.O_CREAT)
    daemon.handle(protocol.encode_open(1, 4, "erofs,img0.0x0", b"img0.0x0", anon))
    assert device_writes(daemon).startswith(b"copen 1,")
    daemon.let_device_go()
    assert os.read(daemon.test_device_reader, 10) == b""  # the device's end: closed
    assert daemon.device_dead and os.path.samestat(os.fstat(daemon.device_fd), os.stat(os.devnull))
    late = os.open(tmp_path / "late", os.O_RDWR | os.O_CREAT)
    daemon.handle(protocol.encode_open(2, 5, "erofs,img0.0x1", b"img0.0x1", late))
    with pytest.raises(OSError):
        os.fstat(late)
    daemon.handle(protocol.encode_read(3, 4, 0, 4096))
    got = [(e["event"], e.get("msg_id"), e.get("call")) for e in events(daemon)[-5:]]
    assert got == [("device_closed", None, None), ("recv", 2, None), ("orphaned", 2, "copen"), ("recv", 3, None),
                   ("error", 3, "READ_COMPLETE")]
    assert events(daemon)[-1]["errno"] == errno.ENOTTY
    assert os.eventfd_read(daemon.wake.stop) == 1  # every thread told to leave



@pytest.mark.parametrize("go", [False, True])
def test_an_activated_daemon_serves_only_after_the_keeper_s_go(tmp_path, go):
    """Activated (its number and the device fd), the daemon waits for the keeper's go before it
    says it serves: until then the keeper may not yet know it as its child (a fault the host
    sends once daemon.state names it would miss). A keeper gone before its go: the daemon never
    serves, and exits. The control: the go, and it serves."""
    config = guest_config(tmp_path, images={}, threads=1)
    config.write(str(tmp_path / "config.json"))
    device, daemons_device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    daemons_device.setblocking(False)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    send_activation(ours, 1, daemons_device.fileno())
    if go:
        send_go(ours)
    proc = subprocess.Popen([sys.executable, "-S", str(ROOT / "guest_scripts" / "daemon.py"),
                             "--config", str(tmp_path / "config.json"), "--sock-fd", str(theirs.fileno())],
                            pass_fds=[theirs.fileno()])
    state = tmp_path / "daemon.state"
    try:
        theirs.close()
        daemons_device.close()
        if go:
            assert wait_for(lambda: state.exists() and parse_daemon_state(state.read_text()) == (1, proc.pid))
            proc.send_signal(signal.SIGTERM)
        else:
            ours.close()  # the keeper's end gone with no go
        assert proc.wait(timeout=10) == 0
        assert state.exists() is go
    finally:
        proc.kill()
        proc.wait()
        ours.close()
        device.close()
