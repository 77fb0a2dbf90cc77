"""The daemon's answers, with a pipe standing in for /dev/cachefiles and a file for an anon fd.

What only the kernel can say (is READ_COMPLETE accepted, does restore re-deliver) is for the VM
tests; what the daemon writes, where, and what it logs is checked here.
"""
import errno
import json
import os

import pytest

import protocol
from daemon import Daemon
from helpers import guest_config


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
    assert kinds == [("recv", "OPEN"), ("done", "OPEN")]  # logged before it is acted on
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
