"""The C daemon (guest_scripts/cdaemon/), without a VM.

Its codec's own unit tests (test_msg.c); the codec cross-checked against protocol.py, the same
bytes decoded by both; the daemon built with warnings as errors, and its command line;
harness.guest.cdaemon's build, reused while the sources are the same; and the daemon at work
with a SOCK_SEQPACKET socket standing in for /dev/cachefiles (one record a message, as the
device reads and writes) and a regular file for an anon fd. What only the kernel can say (is
READ_COMPLETE accepted, does `restore` deliver again) is for the VM tests: here a regular file
refuses the ioctl, and the test plays the kernel.

The compiler is the system's `cc` (ci/setup.sh installs gcc and libc6-dev): these tests never skip.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import protocol
from helpers import COOKIES_HEADER, cookie_row
from harness import proc
from harness.errors import UntestableError
from harness.guest import cdaemon as cbuild

SOURCES = cbuild.SOURCE_DIR
# as the brief of the daemon and harness.guest.cdaemon build it
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"]
BLOB_SIZE = 10000  # two pages and a partial third
TIMEOUT_S = 10.0


def compile_c(out: Path, *sources: str) -> Path:
    done = subprocess.run(["cc", *CFLAGS, "-pthread", "-o", str(out), *(str(SOURCES / s) for s in sources)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # not a warning either
    return out


@pytest.fixture(scope="module")
def test_msg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory.mktemp("test_msg") / "test_msg", "test_msg.c", "msg.c")


@pytest.fixture(scope="module")
def cdaemon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory.mktemp("cdaemon") / "cdaemon", "cdaemon.c", "msg.c")


# -- the codec -------------------------------------------------------------------------------

def test_codec_unit_tests_pass(test_msg):
    done = subprocess.run([str(test_msg)], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout
    assert [l for l in lines if not l.startswith("ok ")] == []
    names = {l.split()[1] for l in lines}
    # each decode error, each opcode, and the helpers
    assert {"short_message_is_refused", "header_length_must_match_the_read", "short_open_payload_is_refused",
            "open_key_sizes_must_add_up", "read_payload_must_be_one_struct", "unknown_opcode_is_refused",
            "open_decodes", "read_decodes", "close_decodes", "copen_commands", "blob_names",
            "aligned_spans", "layout_matches_uapi"} <= names


def python_fields(buf: bytes) -> str:
    """protocol.decode's answer, in test_msg --decode-hex's format."""
    try:
        req = protocol.decode(buf)
    except protocol.ProtocolError as e:
        return f"error: {e}"
    if isinstance(req, protocol.OpenRequest):
        return (f"OPEN msg_id={req.msg_id} object_id={req.object_id} volume_key={req.volume_key.encode().hex()}"
                f" cookie_key={req.cookie_key.hex()} fd={req.fd} flags={req.flags}")
    if isinstance(req, protocol.ReadRequest):
        return f"READ msg_id={req.msg_id} object_id={req.object_id} off={req.offset} len={req.length}"
    return f"CLOSE msg_id={req.msg_id} object_id={req.object_id}"


def with_len(buf: bytes) -> bytes:
    """The header's len set to the buffer's: a payload error, not a length one."""
    return buf[:8] + len(buf).to_bytes(4, "little") + buf[12:]


OPEN = protocol.encode_open(7, 3, "erofs,img0.1x2", b"img0.1x2", 12)
MESSAGES = {
    "open": OPEN,
    "open-flags-nul-key": protocol.encode_open(1, 0xFFFFFFFF, "erofs,dom", b"img1.2.waiter3\0", 255, flags=1),
    "read": protocol.encode_read(9, 4, 1 << 40, 131072),
    "read-max": protocol.encode_read(0xFFFFFFFF, 1, (1 << 64) - 1, (1 << 64) - 1),
    "close": protocol.encode_close(2, 4),
    "short": b"\0" * 8,
    "empty": b"",
    "length": protocol.encode_read(1, 2, 3, 4)[:-1],
    "opcode": protocol.encode_close(1, 1)[:4] + (9).to_bytes(4, "little") + protocol.encode_close(1, 1)[8:],
    "open-short": with_len(OPEN[:16 + 12]),
    "keys": OPEN[:16] + (OPEN[16] + 1).to_bytes(1, "little") + OPEN[17:],
    "read-short": with_len(protocol.encode_read(1, 2, 3, 4)[:-8]),
    "read-long": with_len(protocol.encode_read(1, 2, 3, 4) + b"\0" * 8),
}


@pytest.mark.parametrize("name", MESSAGES)
def test_c_decodes_as_python_does(test_msg, name):
    buf = MESSAGES[name]
    done = subprocess.run([str(test_msg), "--decode-hex", buf.hex()], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == python_fields(buf)


def test_every_decode_error_and_opcode_is_cross_checked():
    answers = [python_fields(buf) for buf in MESSAGES.values()]
    kinds = ("error: short message", "error: header says", "error: short OPEN payload", "error: OPEN keys",
             "error: READ payload", "error: unknown opcode", "OPEN ", "READ ", "CLOSE ")
    assert {kind for kind in kinds for answer in answers if answer.startswith(kind)} == set(kinds)


@pytest.mark.parametrize("msg_id, value", [(5, 4096), (6, -errno.ENOENT), (7, -4095), (8, -4096), (0xFFFFFFFF, 0)])
def test_c_copen_as_python(test_msg, msg_id, value):
    try:
        expected = protocol.copen_command(msg_id, value).decode()
    except ValueError:
        expected = "error"
    done = subprocess.run([str(test_msg), "--copen", str(msg_id), str(value)], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == expected


@pytest.mark.parametrize("off, length", [(0, 0), (4196, 50), (4095, 2), (1 << 20, 131072), (12288, 1)])
def test_c_aligned_span_as_python(test_msg, off, length):
    done = subprocess.run([str(test_msg), "--span", str(off), str(length)], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == [str(v) for v in protocol.aligned_span(off, length)]


@pytest.mark.parametrize("key", [b"img0.1x2", b"img1.3.waiter2\0\0", b"plain"])
def test_c_blob_name_as_python(test_msg, key):
    done = subprocess.run([str(test_msg), "--blob-hex", key.hex()], capture_output=True, text=True, timeout=30)
    name = protocol.blob_name("erofs,x", key)
    assert done.stdout.split() == [name, name.split(".", 1)[0]]


# -- the daemon's build and command line ------------------------------------------------------

def test_help_exits_0(cdaemon):
    done = subprocess.run([str(cdaemon), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: cdaemon ")
    for option in ("--cache-dir", "--tag", "--image", "--log", "--pid-file", "--worker-pid-file", "--threads",
                   "--restart-delay-ms", "--read-delay-ms", "--no-restore", "--cookies-file"):
        assert option in done.stdout


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["--tag", "t", "--log", "l", "--image", "a=b"],  # no --cache-dir
    ["--cache-dir", "c", "--tag", "t", "--log", "l"],  # no --image
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "--threads"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "--threads", "0"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "noequals"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "--image", "a=c"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "--read-delay-ms", "-1"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "--no-restore=1"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "stray"],
    ["--cache-dir", "c", "--tag", "t", "--log", "l", "--image", "a=b", "--cookies-file", ""],
], ids=["unknown", "no-cache-dir", "no-image", "no-value", "threads-0", "image-form", "image-twice",
        "negative-delay", "flag-value", "stray", "empty-cookies-file"])
def test_bad_or_missing_option_exits_2_with_one_line(cdaemon, args, tmp_path):
    done = subprocess.run([str(cdaemon), *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("cdaemon: ")
    assert done.stdout == ""
    assert not (tmp_path / "l").exists()  # nothing was started


def test_build_cdaemon_builds_once_and_reuses(tmp_path, monkeypatch):
    first = cbuild.build_cdaemon(tmp_path / "bin")
    assert first.name == f"cdaemon-{cbuild.source_hash()}" and os.access(first, os.X_OK)
    assert subprocess.run([str(first), "--help"], capture_output=True, timeout=30).returncode == 0
    assert [p.name for p in (tmp_path / "bin").iterdir()] == [first.name]  # no temporary left

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt unchanged sources")

    monkeypatch.setattr(proc, "run", no_build)
    stamp = first.stat().st_mtime_ns
    assert cbuild.build_cdaemon(tmp_path / "bin") == first
    assert first.stat().st_mtime_ns == stamp


def test_a_source_change_names_a_new_build(tmp_path):
    sources = tmp_path / "src"
    sources.mkdir()
    for name in cbuild.SOURCES:
        (sources / name).write_bytes((SOURCES / name).read_bytes())
    before = cbuild.source_hash(sources)
    (sources / "msg.c").write_text((sources / "msg.c").read_text() + "\n/* changed */\n")
    assert cbuild.source_hash(sources) != before
    built = cbuild.build_cdaemon(tmp_path / "bin", sources)
    assert built.name == f"cdaemon-{cbuild.source_hash(sources)}"


def test_without_a_static_libc_the_build_is_dynamic(tmp_path, monkeypatch):
    real_run = proc.run
    tried = []

    def no_static(argv, **kwargs):
        tried.append("-static" in argv)
        if "-static" in argv:
            return proc.Completed(tuple(argv), 1, "ld: cannot find -lc", 0.1, False)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(proc, "run", no_static)
    built = cbuild.build_cdaemon(tmp_path)
    assert tried == [True, False]
    assert subprocess.run([str(built), "--help"], capture_output=True, timeout=30).returncode == 0


def test_a_source_that_does_not_build_is_untestable(tmp_path):
    sources = tmp_path / "src"
    sources.mkdir()
    for name in cbuild.SOURCES:
        (sources / name).write_bytes((SOURCES / name).read_bytes())
    (sources / "msg.c").write_text((sources / "msg.c").read_text() + "\nstatic int unused_and_warned;\n")
    with pytest.raises(UntestableError, match="did not build"):
        cbuild.build_cdaemon(tmp_path / "bin", sources)
    assert not (tmp_path / "bin").exists() or list((tmp_path / "bin").iterdir()) == []


# -- the daemon at work, a socket standing for /dev/cachefiles ----------------------------------

def wait_for(what, predicate, timeout_s=TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeKernel:
    """The kernel's end of the device, the daemon at the other; a file as every anon fd; a file
    of our own as the kernel's cookie list (none until list_cookies writes it: the daemon then
    prunes nothing)."""

    def __init__(self, binary: Path, tmp: Path, *args: str, small_device_buffer: bool = False,
                 nonblocking: bool = False) -> None:
        self.tmp = tmp
        self.blob = tmp / "img0.blob"
        self.blob.write_bytes(os.urandom(BLOB_SIZE))
        self.cache_file = tmp / "cache-file"
        self.log = tmp / "cdaemon.jsonl"
        self.pid_file = tmp / "cdaemon.pid"
        self.worker_pid_file = tmp / "worker.pid"
        self.cookies = tmp / "cookies"
        self.kernel, device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.kernel.settimeout(TIMEOUT_S)
        if small_device_buffer:
            # the daemon's writes (copen) block once a few are unread: a worker is held in a copen
            device.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        if nonblocking:
            # as /dev/cachefiles, whose read(2) never waits (0 with no request): a thread woken
            # for a message another took must not sit in read(2), where it holds the worker's
            # gate (the close fault waits for it); a socket says EAGAIN, which the daemon logs
            device.setblocking(False)
        # an anon fd the daemon inherits at this number, as the kernel installs one in the reader
        self.anon = os.open(self.cache_file, os.O_RDWR | os.O_CREAT, 0o644)
        self.spare = os.open(tmp / "spare-file", os.O_RDWR | os.O_CREAT, 0o644)
        # one more, for an object the kernel opens later (a reopen after a close)
        self.extra = os.open(tmp / "extra-file", os.O_RDWR | os.O_CREAT, 0o644)
        self.process = subprocess.Popen(
            [str(binary), "--cache-dir", str(tmp / "cache"), "--tag", "fake", "--image", f"img0={self.blob}",
             "--log", str(self.log), "--pid-file", str(self.pid_file), "--worker-pid-file", str(self.worker_pid_file),
             "--device-fd", str(device.fileno()), "--cookies-file", str(self.cookies), *args],
            pass_fds=[device.fileno(), self.anon, self.spare, self.extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        device.close()
        assert [self.receive() for _ in range(3)] == [f"dir {tmp / 'cache'}", "tag fake", "bind ondemand"]

    def send(self, buf: bytes) -> None:
        self.kernel.send(buf)

    def list_cookies(self, states: dict[str, str], aux: str = "") -> None:
        """The cookie list: each blob name's cookie in its state; written whole (renamed over it),
        as the daemon never sees the kernel's list half printed."""
        rows = "".join(cookie_row(0x20 + i, name, state, aux) for i, (name, state) in enumerate(states.items()))
        tmp = self.cookies.with_name("cookies.tmp")
        tmp.write_text(COOKIES_HEADER + rows)
        tmp.rename(self.cookies)

    def receive(self) -> str:
        return self.kernel.recv(4096).decode()

    def events(self) -> list[dict]:
        """The log's lines so far: a last one still being written (no newline yet) is not one."""
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]

    def worker(self, previous: int = 0) -> int:
        def read_pid() -> int:
            try:
                pid = int(self.worker_pid_file.read_text())
            except (OSError, ValueError):
                return 0
            return pid if pid != previous else 0
        return wait_for("a worker", read_pid)

    def event(self, what: str, **fields) -> dict:
        return wait_for(what, lambda: next((e for e in self.events() if all(e.get(k) == v for k, v in fields.items())), None))

    def supervisor_fds_on(self, path: Path) -> int:
        return fds_on(self.process.pid, path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # its workers go with it (PR_SET_PDEATHSIG)
        self.process.communicate(timeout=TIMEOUT_S)
        for fd in (self.anon, self.spare, self.extra):
            os.close(fd)
        self.kernel.close()


@pytest.fixture
def fake(cdaemon, tmp_path):
    started: list[FakeKernel] = []

    def start(*args: str, **kwargs) -> FakeKernel:
        started.append(FakeKernel(cdaemon, tmp_path, *args, **kwargs))
        return started[-1]

    yield start
    for k in started:
        k.stop()


def fds_on(pid: int, path: Path) -> int:
    """How many of the process's fds are open on `path`."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            pass
    return count


def check_log(k: FakeKernel) -> list[dict]:
    events = k.events()
    for e in events:
        assert {"t", "event", "who", "incarnation", "pid"} <= set(e), e
        assert e["who"] in ("cdaemon", "cdaemon-supervisor")
    return events


def test_serves_opens_reads_and_closes(fake):
    k = fake("--threads", "1")
    k.worker()
    blob = k.blob.read_bytes()
    k.send(protocol.encode_open(1, 1, "erofs,img0.1", b"img0.1", k.anon))
    assert k.receive() == f"copen 1,{BLOB_SIZE}"
    k.send(protocol.encode_open(2, 2, "erofs,nothing.1", b"nothing.1", k.spare))
    assert k.receive() == f"copen 2,-{errno.ENOENT}"
    k.send(protocol.encode_read(3, 1, 8192 + 5, 100))  # the last, partial page
    # a regular file refuses READ_COMPLETE: the data is written, then the ioctl fails
    failed = k.event("the READ's ioctl", event="error", msg_id=3)
    assert failed["why"] == "READ_COMPLETE" and failed["op"] == "READ"
    assert k.cache_file.read_bytes()[8192:] == blob[8192:] + bytes(12288 - BLOB_SIZE)
    k.send(protocol.encode_read(4, 77, 0, 4096))
    assert k.event("an unknown object", event="error", msg_id=4)["why"] == "unknown object"
    k.send(b"\0" * 8)
    k.event("a bad message", event="error", why="short message: 8 bytes")
    k.send(protocol.encode_close(5, 1))
    k.event("the CLOSE", event="done", msg_id=5, op="CLOSE")
    events = check_log(k)
    kinds = [(e["event"], e.get("op"), e.get("msg_id")) for e in events if e["who"] == "cdaemon" and "msg_id" in e]
    assert kinds == [("recv", "OPEN", 1), ("done", "OPEN", 1), ("recv", "OPEN", 2), ("done", "OPEN", 2),
                     ("recv", "READ", 3), ("error", "READ", 3), ("recv", "READ", 4), ("error", "READ", 4),
                     ("recv", "CLOSE", 5), ("done", "CLOSE", 5)]
    opened = next(e for e in events if e["event"] == "recv" and e["msg_id"] == 1)
    assert opened["volume"] == "erofs,img0.1" and opened["cookie"] == "img0.1" and opened["fd"] == k.anon
    # the supervisor held the fds deposited, and let them go with the CLOSE and the failed OPEN
    wait_for("the supervisor's copies closed", lambda: k.supervisor_fds_on(k.cache_file) == 1)  # its inherited one
    assert k.supervisor_fds_on(k.tmp / "spare-file") == 1
    assert int(k.pid_file.read_text()) == k.process.pid
    k.process.send_signal(signal.SIGTERM)
    assert k.process.wait(TIMEOUT_S) == 0
    last = check_log(k)[-1]
    assert (last["event"], last["who"], last["why"], last["status"]) == ("exit", "cdaemon-supervisor", "SIGTERM", 0)
    died = [e for e in check_log(k) if e["event"] == "worker_died"]
    assert len(died) == 1 and died[0]["signal"] == signal.SIGKILL


def test_a_new_worker_answers_what_the_dead_one_held_then_restores(fake):
    """A worker held in a copen (the device's buffer full) is killed: the next one is handed every
    anon fd, answers the OPEN left unanswered before its `restore`, and serves the objects the
    dead one opened through the fds handed over."""
    k = fake("--threads", "1", "--restart-delay-ms", "50", small_device_buffer=True)
    first = k.worker()
    blob = k.blob.read_bytes()
    ids = range(10, 40)
    for i in ids:
        k.send(protocol.encode_open(i, i, f"erofs,img0.{i}", f"img0.{i}".encode(), k.anon))

    def held_in_copen() -> int | None:
        events = [e for e in k.events() if e.get("op") == "OPEN" and e["who"] == "cdaemon"]
        received = [e["msg_id"] for e in events if e["event"] == "recv"]
        done = [e["msg_id"] for e in events if e["event"] == "done"]
        return received[-1] if received and len(received) == len(done) + 1 else None

    def settled() -> int | None:
        """The worker held in a copen: its log stopped growing (for a second: a worker only slow
        under load goes on within it), its last OPEN unanswered."""
        size = k.log.stat().st_size
        for _ in range(4):
            time.sleep(0.25)
            if k.log.stat().st_size != size:
                return None
        return held_in_copen()

    blocked = wait_for("a copen to block", settled)
    assert blocked < ids[-1]
    os.kill(first, signal.SIGKILL)
    second = k.worker(previous=first)
    records = [k.receive() for _ in range(len(ids) + 1)]
    answered_first = [f"copen {i},{BLOB_SIZE}" for i in range(ids[0], blocked)]
    assert records == answered_first + [f"copen {blocked},{BLOB_SIZE}", "restore"] + \
        [f"copen {i},{BLOB_SIZE}" for i in range(blocked + 1, ids[-1] + 1)]
    started = k.event("the second worker", event="worker_started", incarnation=2)
    assert started["worker_pid"] == second and started["held"] == blocked - ids[0] + 1 and started["unanswered"] == 1
    inherited = k.event("the held OPEN answered", event="done", incarnation=2, msg_id=blocked)
    assert inherited["inherited"] is True and inherited["size"] == BLOB_SIZE
    received = [e for e in check_log(k) if e["event"] == "fd_received"]
    assert sorted(e["object_id"] for e in received) == list(range(ids[0], blocked + 1))
    assert all(e["incarnation"] == 2 and e["answered"] == (e["object_id"] != blocked) for e in received)
    assert k.event("the restore", event="restore", incarnation=2)["ok"] is True
    # an object the dead worker opened, served through the fd handed over
    k.send(protocol.encode_read(100, ids[0], 4096, 4096))
    assert k.event("the READ", event="error", msg_id=100)["why"] == "READ_COMPLETE"
    assert k.cache_file.read_bytes()[4096:8192] == blob[4096:8192]
    died = k.event("the death", event="worker_died", incarnation=1)
    assert died["signal"] == signal.SIGKILL and died["worker_pid"] == first
    for i in ids:
        k.send(protocol.encode_close(1000 + i, i))
    wait_for("every CLOSE", lambda: len([e for e in k.events() if e["event"] == "done" and e.get("op") == "CLOSE"]) == len(ids))
    wait_for("the supervisor's copies closed", lambda: k.supervisor_fds_on(k.cache_file) == 1)
    assert [e for e in check_log(k) if e["event"] == "error" and e.get("why") != "READ_COMPLETE"] == []


def test_no_restore_never_writes_restore(fake):
    k = fake("--no-restore")
    first = k.worker()
    os.kill(first, signal.SIGKILL)
    k.worker(previous=first)
    k.event("the second worker serving", event="serving", incarnation=2, who="cdaemon")
    k.send(protocol.encode_open(1, 1, "erofs,img0.1", b"img0.1", k.anon))
    assert k.receive() == f"copen 1,{BLOB_SIZE}"  # and no `restore` before it
    assert [e for e in check_log(k) if e["event"] == "restore"] == []


def test_threads_share_the_device_with_no_lock(fake):
    k = fake("--threads", "4", "--read-delay-ms", "20")
    k.worker()
    k.send(protocol.encode_open(1, 1, "erofs,img0.1", b"img0.1", k.anon))
    assert k.receive() == f"copen 1,{BLOB_SIZE}"
    for i in range(2, 42):
        k.send(protocol.encode_read(i, 1, (i % 3) * 4096, 4096))
    wait_for("every READ answered", lambda: len([e for e in k.events() if e["event"] == "error" and e.get("op") == "READ"]) == 40)
    recv = [e for e in check_log(k) if e["event"] == "recv" and e["op"] == "READ"]
    assert sorted(e["msg_id"] for e in recv) == list(range(2, 42))  # each delivered once
    assert k.cache_file.read_bytes()[:12288] == k.blob.read_bytes() + bytes(12288 - BLOB_SIZE)


def test_a_dead_device_stops_the_supervisor(fake):
    k = fake()
    k.worker()
    k.kernel.shutdown(socket.SHUT_RDWR)
    assert k.process.wait(TIMEOUT_S) == 1
    events = check_log(k)
    assert events[-1]["event"] == "exit" and events[-1]["why"] == "device dead" and events[-1]["status"] == 1
    assert next(e for e in events if e["event"] == "worker_died")["exit_code"] == 1


# -- the close fault (SIGUSR1 to the worker) ----------------------------------------------------

def open_two(k: FakeKernel) -> dict[int, Path]:
    """Objects 1 and 2 opened and answered, each on a file of its own: their paths by object id."""
    k.send(protocol.encode_open(1, 1, "erofs,img0.1", b"img0.1", k.anon))
    k.send(protocol.encode_open(2, 2, "erofs,img0.2", b"img0.2", k.spare))
    assert sorted(k.receive() for _ in range(2)) == [f"copen 1,{BLOB_SIZE}", f"copen 2,{BLOB_SIZE}"]
    for i in (1, 2):  # `done` is logged once the object may be closed: its copen accepted
        k.event(f"OPEN {i} answered", event="done", op="OPEN", msg_id=i)
    paths = {1: k.cache_file, 2: k.tmp / "spare-file"}
    # the supervisor: its inherited fd on each file and the copy deposited (it takes the deposit
    # in its own time); the worker: its own
    worker = int(k.worker_pid_file.read_text())
    wait_for("the deposits", lambda: [(fds_on(worker, p), k.supervisor_fds_on(p)) for p in paths.values()] == [(1, 2)] * 2)
    return paths


def test_sigusr1_closes_one_objects_fd_in_worker_and_supervisor(fake):
    """The worker closes one object's anon fd, unasked, and has the supervisor close its copy
    first (a stopped supervisor holds the worker's close back): the fd is gone from both
    processes, the other object's stays, a READ that comes for the closed id is an error (a
    correct kernel reopens instead), and the reopen's OPEN is served."""
    k = fake("--threads", "2", nonblocking=True)
    worker = k.worker()
    k.event("serving", event="serving", who="cdaemon")
    paths = open_two(k)
    # the supervisor stopped: the worker closes nothing of its own until the supervisor's copy is gone
    os.kill(k.process.pid, signal.SIGSTOP)
    try:
        os.kill(worker, signal.SIGUSR1)
        time.sleep(0.5)
        assert [fds_on(worker, p) for p in paths.values()] == [1, 1]
        assert [e for e in k.events() if e["event"] == "close_fd"] == []
    finally:
        os.kill(k.process.pid, signal.SIGCONT)
    closed = k.event("the close", event="close_fd", who="cdaemon")
    gone = closed["object_id"]
    kept = 3 - gone
    assert closed["cookie"] == f"img0.{gone}" and closed["incarnation"] == 1 and closed["pid"] == worker
    assert closed["supervisor_held"] is True and closed["idle"] == 2 and "skipped" not in closed
    # gone from both (the supervisor's inherited fd aside), once the log says so: the worker's was last
    assert (fds_on(worker, paths[gone]), k.supervisor_fds_on(paths[gone])) == (0, 1)
    assert (fds_on(worker, paths[kept]), k.supervisor_fds_on(paths[kept])) == (1, 2)
    assert int(k.worker_pid_file.read_text()) == worker and k.process.poll() is None  # no death

    # the object kept is served on; a READ for the closed id has no fd to be answered through
    k.send(protocol.encode_read(5, kept, 0, 4096))
    assert k.event("the READ kept", event="error", msg_id=5)["why"] == "READ_COMPLETE"
    assert paths[kept].read_bytes()[:4096] == k.blob.read_bytes()[:4096]
    k.send(protocol.encode_read(6, gone, 0, 4096))
    assert k.event("the READ for the closed id", event="error", msg_id=6)["why"] == \
        "READ for an object whose fd the close fault closed"
    # a CLOSE the kernel delivered before the fd went: done, not an unknown object
    k.send(protocol.encode_close(7, gone))
    assert k.event("the CLOSE", event="done", msg_id=7)["closed_by"] == "close_fd"

    # the reopen: a new OPEN for the cookie, a new object id and anon fd, answered as any other
    k.send(protocol.encode_open(8, 3, f"erofs,img0.{gone}", f"img0.{gone}".encode(), k.extra))
    assert k.receive() == f"copen 8,{BLOB_SIZE}"
    k.send(protocol.encode_read(9, 3, 4096, 4096))
    assert k.event("the READ after the reopen", event="error", msg_id=9)["why"] == "READ_COMPLETE"
    assert (k.tmp / "extra-file").read_bytes()[4096:8192] == k.blob.read_bytes()[4096:8192]
    wait_for("the reopen's fd deposited",
             lambda: (fds_on(worker, k.tmp / "extra-file"), k.supervisor_fds_on(k.tmp / "extra-file")) == (1, 2))
    errors = [e for e in check_log(k) if e["event"] == "error"
              and (e.get("why"), e.get("errno")) != ("read", errno.EAGAIN)]  # the socket's wake-ups
    assert [e.get("msg_id") for e in errors] == [5, 6, 9]
    assert [e for e in check_log(k) if e["event"] == "close_fd"] == [closed]


def test_sigusr1_closes_nothing_when_every_object_is_in_a_read(fake):
    """The control: with no object, and with every object pinned by a READ being answered, the
    fault closes nothing and says why; once the READs are done it closes one."""
    k = fake("--threads", "3", "--read-delay-ms", "2000", nonblocking=True)
    worker = k.worker()
    k.event("serving", event="serving", who="cdaemon")
    os.kill(worker, signal.SIGUSR1)
    assert k.event("nothing to close", event="close_fd")["skipped"] == "no object"
    paths = open_two(k)
    k.send(protocol.encode_read(3, 1, 0, 4096))
    k.send(protocol.encode_read(4, 2, 0, 4096))
    for i in (3, 4):  # `recv` is logged once the READ pinned its object
        k.event(f"READ {i} received", event="recv", msg_id=i)
    os.kill(worker, signal.SIGUSR1)
    busy = k.event("every object busy", event="close_fd", skipped="all busy")
    assert busy["objects"] == 2 and busy["pid"] == worker
    assert [(fds_on(worker, p), k.supervisor_fds_on(p)) for p in paths.values()] == [(1, 2), (1, 2)]
    for i in (3, 4):  # the READs went on through their fds (the ioctl is the file's refusal)
        assert k.event(f"READ {i} answered", event="error", msg_id=i)["why"] == "READ_COMPLETE"
    assert [e for e in check_log(k) if e["event"] == "close_fd" and "object_id" in e] == []
    os.kill(worker, signal.SIGUSR1)
    closed = k.event("a close once idle", event="close_fd", supervisor_held=True)
    assert fds_on(worker, paths[closed["object_id"]]) == 0


def test_sigusr1_to_the_supervisor_is_logged_and_ignored(fake):
    k = fake()
    worker = k.worker()
    k.event("serving", event="serving", who="cdaemon")
    os.kill(k.process.pid, signal.SIGUSR1)
    said = k.event("the stray signal", event="error", who="cdaemon-supervisor")
    assert "the close fault is the worker's" in said["why"] and said["sender_pid"] == os.getpid()
    k.send(protocol.encode_open(1, 1, "erofs,img0.1", b"img0.1", k.anon))
    assert k.receive() == f"copen 1,{BLOB_SIZE}"
    assert int(k.worker_pid_file.read_text()) == worker and k.process.poll() is None
    assert [e for e in check_log(k) if e["event"] in ("close_fd", "worker_died")] == []


# -- letting go of the fds of dropped cookies (the kernel's cookie list) ---------------------------

def pruned(k: FakeKernel) -> list[dict]:
    return [e for e in k.events() if e["event"] == "fd_pruned"]


def test_the_supervisor_prunes_the_fds_of_dropped_and_gone_cookies(fake):
    """A held fd whose cookie the list shows dropped, or no more, is closed by the supervisor
    within a second of the change, logged, and the live worker told (it closes its copy: one it
    was handed after its predecessor read the CLOSE would pin the object for good); the fd of a
    live cookie stays. A CLOSE read before the word is done, and a READ after it an error."""
    k = fake("--threads", "2", nonblocking=True)
    k.list_cookies({"img0.1": "A", "img0.2": "A", "img0.3": "A"})
    worker = k.worker()
    k.event("serving", event="serving", who="cdaemon")
    paths = open_two(k)
    k.send(protocol.encode_open(3, 3, "erofs,img0.3", b"img0.3", k.extra))
    assert k.receive() == f"copen 3,{BLOB_SIZE}"
    paths[3] = k.tmp / "extra-file"
    wait_for("the third deposit", lambda: (fds_on(worker, paths[3]), k.supervisor_fds_on(paths[3])) == (1, 2))
    time.sleep(0.7)  # a prune went by: every cookie live, nothing pruned
    assert pruned(k) == []

    written = time.time()
    k.list_cookies({"img0.1": "D", "img0.3": "A"}, aux="0011")  # img0.2's gone; a key followed by its aux
    wait_for("two fds pruned", lambda: len(pruned(k)) == 2)
    by_id = {e["object_id"]: e for e in pruned(k)}
    assert sorted(by_id) == [1, 2]
    assert (by_id[1]["why"], by_id[2]["why"]) == ("cookie dropped", "cookie gone")
    for i, e in by_id.items():
        assert e["who"] == "cdaemon-supervisor" and e["pid"] == k.process.pid
        assert (e["msg_id"], e["cookie"], e["answered"], e["at"], e["tell_worker"]) == (i, f"img0.{i}", True, "watch", True)
        assert e["t"] - written < 1.0, e
    # gone from the supervisor (its inherited fd aside) and, told, from the worker
    wait_for("the worker's copies closed", lambda: [fds_on(worker, paths[i]) for i in (1, 2)] == [0, 0])
    assert [k.supervisor_fds_on(paths[i]) for i in (1, 2)] == [1, 1]
    told = [e for e in k.events() if e["event"] == "prune_told"]
    assert sorted((e["object_id"], e["msg_id"], e["closed"], e["pid"]) for e in told) == [(1, 1, True, worker), (2, 2, True, worker)]

    # the control: the live cookie's fd stays, across more prunes
    time.sleep(1.2)
    assert (fds_on(worker, paths[3]), k.supervisor_fds_on(paths[3])) == (1, 2)
    assert len(pruned(k)) == 2
    # the kernel delivered object 1's CLOSE before its cookie was dropped: read after the word, done
    k.send(protocol.encode_close(20, 1))
    assert k.event("the CLOSE", event="done", msg_id=20)["closed_by"] == "pruned"
    k.send(protocol.encode_read(21, 2, 0, 4096))
    assert k.event("a READ for a pruned id", event="error", msg_id=21)["why"] == \
        "READ for an object whose fd was pruned (its cookie dropped)"
    k.send(protocol.encode_read(22, 3, 0, 4096))
    assert k.event("the live object's READ", event="error", msg_id=22)["why"] == "READ_COMPLETE"
    assert paths[3].read_bytes()[:4096] == k.blob.read_bytes()[:4096]
    assert int(k.worker_pid_file.read_text()) == worker and k.process.poll() is None


def test_a_handover_after_a_death_passes_no_pruned_fd(fake):
    """What a run found: a worker killed after reading a CLOSE, before it told the supervisor
    (a CLOSE is never delivered again). The supervisor, stopped meanwhile, learns of the death
    after the cookie was dropped: the next worker is not handed its fd, which is closed."""
    k = fake("--threads", "1", nonblocking=True)
    k.list_cookies({"img0.1": "A", "img0.2": "A"})
    first = k.worker()
    k.event("serving", event="serving", who="cdaemon")
    paths = open_two(k)
    os.kill(k.process.pid, signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        # dead (a zombie: its parent, stopped, has not reaped it), its fds closed
        wait_for("the worker's death", lambda: Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        k.list_cookies({"img0.1": "D", "img0.2": "A"})
    finally:
        os.kill(k.process.pid, signal.SIGCONT)
    second = k.worker(previous=first)
    started = k.event("the second worker", event="worker_started", incarnation=2)
    gone = k.event("the dropped cookie's fd pruned", event="fd_pruned", object_id=1)
    assert gone["why"] == "cookie dropped" and gone["cookie"] == "img0.1" and gone["t"] <= started["t"]
    # pruned at the handover (or, if the supervisor stopped between a poll and a due prune, by
    # that prune, with the dead worker to tell)
    assert (gone["at"], gone["tell_worker"]) in {("handover", False), ("watch", True)}
    assert started["held"] == 1 and started["worker_pid"] == second
    k.event("the second worker serving", event="serving", incarnation=2)
    received = [e for e in check_log(k) if e["event"] == "fd_received"]
    assert [(e["object_id"], e["incarnation"]) for e in received] == [(2, 2)]
    # every process of the daemon has the fake's own fd on each file (the supervisor's, by fork)
    # and the second worker a copy of the fd handed over: none of the pruned one's
    assert (fds_on(second, paths[1]), k.supervisor_fds_on(paths[1])) == (1, 1)
    wait_for("the live fd handed over", lambda: (fds_on(second, paths[2]), k.supervisor_fds_on(paths[2])) == (2, 2))


def test_an_unreadable_cookie_list_prunes_nothing(fake):
    """No list (or one without its header: a file being written) is no verdict: nothing is pruned,
    and that is said once; once the list can be read, its dropped cookie's fd goes."""
    k = fake("--threads", "1")
    worker = k.worker()
    k.send(protocol.encode_open(1, 1, "erofs,img0.1", b"img0.1", k.anon))
    assert k.receive() == f"copen 1,{BLOB_SIZE}"
    wait_for("the deposit", lambda: (fds_on(worker, k.cache_file), k.supervisor_fds_on(k.cache_file)) == (1, 2))
    time.sleep(1.2)
    k.cookies.write_text(cookie_row(0x20, "img0.1", "D"))  # no header
    time.sleep(1.2)
    said = [e for e in check_log(k) if e["event"] == "cookies_unreadable"]
    assert len(said) == 1 and said[0]["errno"] == errno.ENOENT and said[0]["path"] == str(k.cookies)
    assert said[0]["who"] == "cdaemon-supervisor"
    assert pruned(k) == [] and (fds_on(worker, k.cache_file), k.supervisor_fds_on(k.cache_file)) == (1, 2)
    k.list_cookies({"img0.1": "D"})
    assert k.event("the fd pruned", event="fd_pruned", object_id=1)["why"] == "cookie dropped"
    wait_for("both copies closed", lambda: (fds_on(worker, k.cache_file), k.supervisor_fds_on(k.cache_file)) == (0, 1))
