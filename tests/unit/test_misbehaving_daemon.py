"""The adversarial daemon's misbehaviours (GuestConfig.lockless, close_during_copen, the host's
RESTORE_LIVE and STALE faults) and what the judge makes of its log: a pipe stands in for
/dev/cachefiles and files for anon fds, so what the daemon writes, closes and logs is checked
here; what the kernel answers is the VM tests'."""
import errno
import json
import os

import pytest

import protocol
from contract import Event, Probe, ProbeOutcome
from daemon import CLOSED_OBJECT_ID, NEVER_DELIVERED, Daemon
from harness.judge import misbehaviour
from helpers import guest_config

SIZE = 3 * 4096


@pytest.fixture
def make_daemon(tmp_path):
    made = []

    def make(**fields):
        blob = tmp_path / "img0.erofs"
        blob.write_bytes(os.urandom(SIZE))
        r, w = os.pipe()
        os.set_blocking(r, False)
        d = Daemon(guest_config(tmp_path, images={"img0": str(blob)}, **fields), w, incarnation=2)
        d.test_device_reader = r
        made.append((r, w))
        return d
    yield make
    for r, w in made:
        os.close(r)
        os.close(w)


def writes(d) -> list[str]:
    try:
        return os.read(d.test_device_reader, 65536).decode().replace("restore", "restore\n").split("copen ")
    except BlockingIOError:
        return []


def events(d, kind=None):
    all_ = [json.loads(line) for line in open(d.config.daemon_log)]
    return [e for e in all_ if kind is None or e["event"] == kind]


def anon(tmp_path, name="backing"):
    return os.open(tmp_path / name, os.O_RDWR | os.O_CREAT)


def test_late_answers_go_for_answered_and_never_delivered_msg_ids(make_daemon, tmp_path):
    d = make_daemon(lockless=True)
    d.handle(protocol.encode_open(11, 4, "erofs,img0.0x3", b"img0.0x3", anon(tmp_path)))
    writes(d)
    d.stale_answers()
    sent = "".join(writes(d))
    assert f"11,{SIZE}" in sent and f"{11 + NEVER_DELIVERED},0" in sent
    probes = events(d, Event.PROBE)
    stale = [e for e in probes if e["probe"] == Probe.STALE]
    assert {e["origin"] for e in stale} == {"answered", "never-delivered"}
    # a pipe takes every copen and a file refuses the ioctl (ENOTTY): the daemon reports what it
    # saw, and both are violations to the judge (only EINVAL is a refusal)
    assert {(e["op"], e["outcome"]) for e in stale} == {("OPEN", ProbeOutcome.ACCEPTED), ("READ", ProbeOutcome.UNEXPECTED)}


def test_a_msg_id_answered_before_the_read_began_is_a_reuse_and_one_answered_after_is_not(make_daemon, tmp_path):
    d = make_daemon(lockless=True)
    d.handle(protocol.encode_open(11, 4, "erofs,img0.0x3", b"img0.0x3", anon(tmp_path)))
    before = d.answer_seq
    d.accept(protocol.encode_read(11, 4, 0, 4096), answers_before=before)
    d.accept(protocol.encode_read(11, 4, 0, 4096), answers_before=before - 1)  # the answer raced this read()
    d.accept(protocol.encode_read(12, 4, 0, 4096), answers_before=before)
    reuse = [e for e in events(d, Event.PROBE) if e["probe"] == Probe.REUSE]
    assert [(e["msg_id"], e["outcome"]) for e in reuse] == [(11, ProbeOutcome.REUSED)]


def test_answers_of_dead_incarnations_are_loaded_from_the_log(make_daemon, tmp_path):
    d = make_daemon(lockless=True)
    with open(d.config.daemon_log, "a") as f:
        f.write(json.dumps({"event": "done", "incarnation": 1, "op": "READ", "msg_id": 5, "object_id": 2}) + "\n")
        f.write(json.dumps({"event": "recv", "incarnation": 1, "op": "READ", "msg_id": 6, "object_id": 2}) + "\n")
        f.write(json.dumps({"event": "recv", "incarnation": 1, "op": "OPEN", "msg_id": 3, "cookie": "img0.1x2"}) + "\n")
        f.write(json.dumps({"event": "done", "incarnation": 1, "op": "OPEN", "msg_id": 3, "size": 4096}) + "\n")
    d.load_dead_answers()
    assert d.answered_at == {5: 0, 3: 0}
    assert d.cookies_opened == {"img0.1x2"}  # an OPEN for it now is a reopen
    d.accept(protocol.encode_read(5, 9, 0, 4096), answers_before=0)
    assert [e["msg_id"] for e in events(d, Event.PROBE)] == [5]


def test_an_fd_closed_before_its_copen_is_reopened_or_a_read_for_it_is_a_violation(make_daemon, tmp_path):
    d = make_daemon(close_during_copen=1.0)
    d.handle(protocol.encode_open(1, 4, "erofs,img0.0x3", b"img0.0x3", anon(tmp_path)))
    fd = anon(tmp_path, "reopen")
    d.handle(protocol.encode_open(2, 5, "erofs,img0.0x3", b"img0.0x3", fd))  # a reopen: its fd goes
    with pytest.raises(OSError):
        os.fstat(fd)
    assert 5 not in d.objects and d.closed_at_copen == {5: "img0.0x3"}
    (closed,) = [e for e in events(d, Event.CLOSE_FD)]
    assert closed["at"] == "copen" and closed["variant"] in ("before", "while")
    d.accept(protocol.encode_read(3, CLOSED_OBJECT_ID, 0, 4096), answers_before=0)
    d.handle(protocol.encode_open(4, 6, "erofs,img0.0x3", b"img0.0x3", anon(tmp_path, "again")))
    outcomes = [e["outcome"] for e in events(d, Event.PROBE) if e["probe"] == Probe.CLOSE_COPEN]
    assert outcomes == [ProbeOutcome.READ_ON_CLOSED]  # decided once: the READ came first
    assert d.closed_at_copen == {6: "img0.0x3"}  # the next reopen lost its fd too (a share of 1.0)


def test_a_lockless_close_under_a_read_loses_it_and_restores(make_daemon, tmp_path):
    d = make_daemon(lockless=True)
    d.handle(protocol.encode_open(1, 4, "erofs,img0.0x3", b"img0.0x3", anon(tmp_path)))
    writes(d)
    got = d.accept(protocol.encode_read(2, 4, 0, 4096), answers_before=0)  # pinned: busy
    d.close_random_fd()  # another thread closes the fd in use: it becomes /dev/null
    assert d.objects == {} and got.obj.closed
    got.run()  # READ_COMPLETE on /dev/null: ENOTTY, the READ is lost; the last user closes, restores
    (lost,) = events(d, Event.LOST)
    assert lost["msg_id"] == 2 and lost["call"] == "READ_COMPLETE"
    assert [e["why"] for e in events(d, Event.RESTORE)] == ["lost"]
    assert "restore" in "".join(writes(d))
    assert events(d, Event.ERROR) == []


def test_the_judge_counts_misbehaviours_and_a_redundant_answer_nobody_gave_is_an_error():
    log = [
        {"event": "restore", "why": "live", "ok": True, "incarnation": 1},
        {"event": "recv", "msg_id": 7, "incarnation": 1}, {"event": "recv", "msg_id": 7, "incarnation": 1},
        {"event": "done", "msg_id": 7, "incarnation": 1},
        {"event": "redundant", "msg_id": 7, "incarnation": 1, "errno": 22},
        {"event": "redundant", "msg_id": 8, "incarnation": 1, "errno": 22},
        {"event": "close_fd", "busy": 1}, {"event": "close_fd", "busy": 0},
        {"event": "close_fd", "at": "copen"},
        {"event": "probe", "probe": "close-copen", "outcome": "reopened"},
        {"event": "probe", "probe": "stale", "origin": "answered", "outcome": "refused"},
        {"event": "probe", "probe": "stale", "origin": "never-delivered", "outcome": "refused"},
        {"event": "probe", "probe": "late-write", "outcome": "withdrawn", "accepted": 1},
        # supervise_fds: two fds inherited by incarnation 2, one of them an OPEN it answered; a
        # READ for the other comes to it (decided), one for the same object id to incarnation 3
        # (which did not inherit it) does not count
        {"event": "inherited", "object_id": 3, "answered": True, "copen_errno": None, "incarnation": 2},
        {"event": "inherited", "object_id": 4, "answered": False, "copen_errno": None, "incarnation": 2},
        {"event": "recv", "op": "READ", "msg_id": 30, "object_id": 3, "incarnation": 2},
        {"event": "recv", "op": "READ", "msg_id": 31, "object_id": 3, "incarnation": 3},
    ]
    f = misbehaviour.facts(log)
    assert {n: (m.ran, m.decided) for n, m in f.by_name.items()} == {
        "restore-live": (1, 1), "stale": (2, 1), "lockless-close": (2, 1), "close-copen": (1, 1), "late-close": (1, 1),
        "supervised-fds": (2, 2)}
    assert [e["msg_id"] for e in f.unanswered_redundant] == [8]
    assert misbehaviour.expected({"restores_live": 3, "lockless": True, "fd_closes": 0}) == ("restore-live",)


def opened_object(d, tmp_path, object_id=4, name="backing"):
    """An object the daemon opened (its copen written), with a file for its anon fd."""
    fd = anon(tmp_path, name)
    d.handle(protocol.encode_open(11, object_id, "erofs,img0.0x3", b"img0.0x3", fd))
    writes(d)
    return fd


def late_write_probe(d):
    """The last late-write probe in the log (two daemons of one test share it)."""
    return [e for e in events(d, Event.PROBE) if e["probe"] == Probe.LATE_WRITE][-1]


def test_a_close_is_answered_by_late_writes_until_the_bound_then_the_fd_is_closed(make_daemon, tmp_path):
    # a file never refuses: it is still writable a stall bound after the CLOSE (the violation)
    d = make_daemon(late_close=True, stall_bound_s=0.05)
    fd = opened_object(d, tmp_path)
    d.handle(protocol.encode_close(12, 4))
    probe = late_write_probe(d)
    assert probe["outcome"] == ProbeOutcome.WRITABLE and probe["accepted"] >= 1 and probe["errnos"] == [None, None]
    blob = open(tmp_path / "img0.erofs", "rb").read()
    assert (tmp_path / "backing").read_bytes() == blob[:4096]  # what it wrote is the cache's right content
    with pytest.raises(OSError):
        os.fstat(fd)  # closed after the probe
    assert [e["op"] for e in events(d, Event.DONE)] == ["OPEN", "CLOSE"]


def test_a_late_write_refused_with_enobufs_is_withdrawn_and_another_errno_is_unexpected(make_daemon, tmp_path, monkeypatch):
    import daemon as daemon_module
    answers = iter([None, None, None, errno.ENOBUFS, errno.ENOBUFS, errno.ENOBUFS])
    monkeypatch.setattr(daemon_module, "refused", lambda call, *args: next(answers))
    d = make_daemon(late_close=True)
    opened_object(d, tmp_path)
    d.handle(protocol.encode_close(12, 4))
    probe = late_write_probe(d)
    # seek and write accepted once; then the seek passed and the write was refused (the drop in
    # between): tried again; then both refused
    assert (probe["outcome"], probe["accepted"], probe["errnos"]) == (ProbeOutcome.WITHDRAWN, 2, [errno.ENOBUFS] * 2)

    monkeypatch.setattr(daemon_module, "refused", lambda call, *args: errno.EBADF)
    d = make_daemon(late_close=True)
    opened_object(d, tmp_path, name="other")
    d.handle(protocol.encode_close(12, 4))
    assert late_write_probe(d)["outcome"] == ProbeOutcome.UNEXPECTED


def test_without_late_close_a_close_writes_nothing(make_daemon, tmp_path):
    d = make_daemon()
    opened_object(d, tmp_path)
    d.handle(protocol.encode_close(12, 4))
    assert (tmp_path / "backing").read_bytes() == b""
    assert not [e for e in events(d, Event.PROBE) if e["probe"] == Probe.LATE_WRITE]


class RecordingSupervisor:
    """Stands in for the keeper's end of the channel (test_fd_handover has the real one)."""

    def __init__(self):
        self.calls = []

    def deposit(self, object_id, fd, cookie, msg_id):
        self.calls.append(("deposit", object_id))

    def answered(self, object_id):
        self.calls.append(("answered", object_id))

    def drop(self, object_id):
        self.calls.append(("drop", object_id))


def test_a_new_incarnation_takes_over_held_fds_answers_held_opens_and_asks_for_a_second_fd(make_daemon, tmp_path):
    d = make_daemon(supervise_fds=True)
    d.supervisor = RecordingSupervisor()
    held = [({"object_id": 3, "cookie": "img0.0x3", "msg_id": 13, "answered": True}, anon(tmp_path, "a3")),
            ({"object_id": 4, "cookie": "img0.0x4", "msg_id": 14, "answered": False}, anon(tmp_path, "a4"))]
    d.take_over(held)
    assert writes(d) == ["", f"14,{SIZE}"]  # only the OPEN the dead one had not answered, by its msg_id
    assert sorted(d.objects) == [3, 4] and d.supervisor.calls == [("answered", 4)]
    assert [(e["object_id"], e["answered"], e["copen_errno"]) for e in events(d, Event.INHERITED)] == [
        (3, True, None), (4, False, None)]
    d.handle(protocol.encode_read(20, 3, 0, 4096))  # the restore met object 3 still OPEN
    assert (tmp_path / "a3").read_bytes() == open(tmp_path / "img0.erofs", "rb").read()[:4096]
    probes = lambda: [e for e in events(d, Event.PROBE) if e["probe"] == Probe.SECOND_FD]
    d.handle(protocol.encode_open(21, 9, "erofs,img0.0x5", b"img0.0x5", anon(tmp_path, "a9")))
    assert not probes() and ("deposit", 9) in d.supervisor.calls
    d.handle(protocol.encode_open(22, 10, "erofs,img0.0x3", b"img0.0x3", anon(tmp_path, "a10")))
    [probe] = probes()  # an OPEN for the object held open: a second anon fd for it
    assert (probe["outcome"], probe["held_object_id"]) == (ProbeOutcome.SECOND_FD, 3)
    d.handle(protocol.encode_close(23, 4))
    assert ("drop", 4) in d.supervisor.calls  # the keeper's copy goes before the daemon's


def test_a_held_reopen_is_left_for_the_restore_to_be_refused_then_its_fd_closed(make_daemon, tmp_path):
    d = make_daemon(supervise_fds=True)
    d.supervisor = RecordingSupervisor()
    fd = anon(tmp_path, "a7")
    d.take_over([({"object_id": 7, "cookie": "img0.0x7", "msg_id": 17, "answered": False, "reopen": True}, fd)])
    assert writes(d) == [] and 7 in d.objects  # no copen: the restore re-delivers it, EEXIST is asked for
    [inherited] = events(d, Event.INHERITED)
    assert inherited["awaiting_eexist"] is True
    assert d.refused_second_fd() is True  # read() refused with EEXIST: as it must be
    [probe] = [e for e in events(d, Event.PROBE) if e["probe"] == Probe.SECOND_FD]
    assert (probe["outcome"], probe["closed"]) == (ProbeOutcome.REFUSED, [7])
    assert 7 not in d.objects and ("drop", 7) in d.supervisor.calls
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: the next READ reopens the object
    assert d.refused_second_fd() is False  # an EEXIST nothing explains is a daemon error


def test_answers_given_to_a_cache_that_died_are_not_the_new_cache_s(make_daemon):
    """A cache death: the cache bound after it numbers its msg_ids from 0 again, so the answers
    logged by the incarnation that let the device go (even a line written after its
    device_closed, by another of its threads) and by those before it are not loaded; the
    answers of the incarnations after it are."""
    d = make_daemon(lockless=True)
    d.incarnation = 5  # the log below is its predecessors'
    with open(d.config.daemon_log, "a") as f:
        for e in ({"event": "done", "incarnation": 1, "op": "READ", "msg_id": 5, "object_id": 2},
                  {"event": "device_closed", "incarnation": 2, "serving": 1},
                  {"event": "done", "incarnation": 2, "op": "READ", "msg_id": 6, "object_id": 2},
                  {"event": "done", "incarnation": 3, "op": "READ", "msg_id": 7, "object_id": 1}):
            f.write(json.dumps(e) + "\n")
    d.load_dead_answers()
    assert d.answered_at == {7: 0}
