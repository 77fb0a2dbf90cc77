"""The keeper's standby incarnation (GuestConfig.standby), with real processes: the keeper's own
loop (Keeper.serve_incarnations, in a thread; Keeper.run in a process of its own for the ways it
ends) and the real daemon.py (spawned, or forked by the real zygote), whose device is one end of
a SEQPACKET pair the test holds as the kernel would. Nothing here needs /dev/cachefiles."""
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import keeper as keeper_module
from contract import DAEMON_PID_FILE, CrashPoint, Event, Made, parse_daemon_state
from helpers import ROOT, guest_config
from keeper import STANDBY_NICE, AdoptedProcess, Keeper, Spawned, child_subreaper

# what /proc/<pid>/syscall starts with while a process waits in recvmsg(2): a standby, imported
RECVMSG = {"x86_64": 47, "aarch64": 212}.get(platform.machine())
BOUND_S = 20.0  # a Python start under load, and then some: every wait here is bounded


def wait_for(what, timeout_s: float = BOUND_S):
    deadline = time.monotonic() + timeout_s
    while not (got := what()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


def lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def links(pid: int) -> set[str]:
    """What the process's open fds point at."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed as we looked
    return out


def waiting_for_activation(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(RECVMSG)
    except (OSError, IndexError):
        return False


class Rig:
    """A keeper whose device is `device` (the daemon's copies of it have its link), serving
    incarnations in a thread; `kernel` is the other end."""

    def __init__(self, tmp_path: Path, **fields) -> None:
        self.dir = tmp_path
        self.config = guest_config(tmp_path, **fields)
        self.config.write(str(tmp_path / "config.json"))
        self.kernel, self.device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.kernel.settimeout(BOUND_S)
        self.device_link = os.readlink(f"/proc/self/fd/{self.device.fileno()}")
        self.keeper = Keeper(self.config, str(tmp_path / "config.json"))
        self.keeper.device_fd = self.device.fileno()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.keeper.serve_incarnations, name="keeper", daemon=True)
        self.thread.start()

    def keeper_events(self, event: str) -> list[dict]:
        return [e for e in lines(self.dir / "keeper.jsonl") if e["event"] == event]

    def daemon_events(self, event: str | None = None) -> list[dict]:
        return [e for e in lines(self.dir / "daemon.jsonl") if event is None or e["event"] == event]

    def serving(self, incarnation: int) -> int:
        """The pid of incarnation `incarnation` once it says it serves."""
        def said():
            try:
                state = parse_daemon_state((self.dir / "daemon.state").read_text())
            except OSError:
                return None
            return state[1] if state is not None and state[0] == incarnation else None
        pid = wait_for(said)
        assert pid, f"incarnation {incarnation} never served"
        return pid

    def standby_pid(self) -> int:
        """The standby's pid once it waits, imported, for its activation."""
        standby = wait_for(lambda: self.keeper.standby)
        assert standby is not None, "no standby started"
        pid = standby.process.pid
        if RECVMSG is not None:
            assert wait_for(lambda: waiting_for_activation(pid)), "the standby never got to its wait"
        return pid

    def zygote_imported(self) -> int:
        """The zygote's pid once it has said READY (read by the keeper or still queued)."""
        zygote = self.keeper.zygote
        assert zygote is not None, "no zygote started"
        poller = select.poll()
        poller.register(zygote.sock, select.POLLIN)
        assert wait_for(lambda: zygote.import_s is not None or poller.poll(0)), "the zygote never said it was ready"
        return zygote.popen.pid

    def start_with_the_zygote_ready(self) -> tuple[int, int, int]:
        """The loop started, and once incarnation 1 serves, its standby (spawned: the zygote
        imports meanwhile) waits and the zygote is imported: their pids."""
        self.start()
        return self.serving(1), self.standby_pid(), self.zygote_imported()

    def daemons_alive(self) -> set[int]:
        """Our children (of any thread) running daemon.py with this rig's config."""
        pids = set()
        for children in Path("/proc/self/task").glob("*/children"):
            for pid in children.read_text().split():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if str(self.dir / "config.json").encode() in cmdline and any(a.endswith(b"daemon.py") for a in cmdline):
                    pids.add(int(pid))
        return pids

    def stop(self) -> None:
        """What the keeper's SIGTERM handler and run's end do."""
        self.keeper._on_term(signal.SIGTERM, None)
        if self.thread is not None:
            self.thread.join(BOUND_S)
            assert not self.thread.is_alive(), "the keeper's loop did not end"
        self.keeper.end_standby("keeper stopping")
        self.keeper.end_zygote("keeper stopping")

    def close(self) -> None:
        """After a failed test too: the loop stopped first, so that it starts nothing more."""
        self.keeper._on_term(signal.SIGTERM, None)
        for process in (self.keeper.child, self.keeper.standby.process if self.keeper.standby else None):
            if process is not None and process.poll() is None:
                process.kill()
        if self.thread is not None:
            self.thread.join(BOUND_S)
        self.keeper.end_standby("test over")
        self.keeper.end_zygote("test over")
        if self.keeper.child is not None and self.keeper.child.poll() is None:
            self.keeper.child.kill()
            self.keeper.child.wait()
        self.kernel.close()
        self.device.close()


@pytest.fixture
def rig(tmp_path):
    made: list[Rig] = []

    def make(**fields) -> Rig:
        made.append(Rig(tmp_path, **fields))
        return made[-1]
    yield make
    for r in made:
        r.close()
    child_subreaper(False)  # the keeper made this process one


def test_a_death_is_served_by_the_standby_which_got_nothing_before_it(rig):
    """The standby waits, imported, holding neither the device nor a line of the daemon's log;
    once incarnation 1 is dead and reaped it is incarnation 2: it says so everywhere the host
    looks (STARTED, the pid file, daemon.state) and writes `restore` on the device."""
    r = rig()
    r.start()
    first = r.serving(1)
    standby = r.standby_pid()
    assert standby != first
    assert r.device_link in links(first) and r.device_link not in links(standby)
    assert os.getpriority(os.PRIO_PROCESS, standby) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + STANDBY_NICE)
    assert [e["pid"] for e in r.daemon_events()] == [first] * len(r.daemon_events())  # none of the standby's
    assert (r.dir / DAEMON_PID_FILE).read_text() == f"{first}\n"
    assert [e["pid"] for e in r.keeper_events(Event.STANDBY)] == [standby]
    os.kill(first, signal.SIGKILL)
    assert r.serving(2) == standby
    assert r.kernel.recv(64) == b"restore"
    assert (r.dir / DAEMON_PID_FILE).read_text() == f"{standby}\n"
    started = r.keeper_events(Event.STARTED)
    assert [(e["incarnation"], e["pid"], e["standby"]) for e in started] == [(1, first, False), (2, standby, True)]
    if os.geteuid() == 0:  # only a privileged keeper can lower it again (the guest's is root)
        assert started[1]["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    received = r.daemon_events(Event.FD_RECEIVED)
    assert [(e["incarnation"], e["pid"]) for e in received] == [(1, first), (2, standby)]
    assert received[0]["standby_wait_s"] is None  # the first is started cold: its activation was there
    if RECVMSG is not None:
        assert received[1]["standby_wait_s"] > 0  # it was waiting when the activation came
    died = r.keeper_events(Event.DIED)
    assert [(e["incarnation"], e["pid"], e["signal"]) for e in died] == [(1, first, signal.SIGKILL)]
    assert died[0]["t"] <= received[1]["t"]
    third = r.standby_pid()  # and the next one waits already
    assert third not in (first, standby) and r.device_link not in links(third)
    r.stop()
    assert [(e["pid"], e["why"]) for e in r.keeper_events(Event.STANDBY_ENDED)] == [(third, "keeper stopping")]
    assert third not in {e["pid"] for e in r.keeper_events(Event.DIED)}  # it never was an incarnation
    assert third not in {e["pid"] for e in r.daemon_events()}


def test_the_standby_is_not_activated_before_the_dead_incarnation_is_reaped(rig):
    """The negative control of the invariant: incarnation 1 killed, its reaping held back; the
    standby gets no device fd and logs nothing meanwhile. Released, it is activated."""
    r = rig()
    release = threading.Event()
    real_reap = r.keeper.reap

    def held_reap() -> None:
        assert release.wait(BOUND_S)
        real_reap()
    r.keeper.reap = held_reap  # type: ignore[method-assign]
    r.start()
    first = r.serving(1)
    standby = r.standby_pid()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert r.device_link not in links(standby)
        assert not r.daemon_events(Event.FD_RECEIVED)[1:]
        time.sleep(0.02)
    assert waiting_for_activation(standby) or RECVMSG is None
    release.set()
    assert r.serving(2) == standby
    r.stop()


def test_the_standby_takes_its_crash_point_from_its_activation(rig):
    """crash_plan is keyed by incarnation: the process started as a standby while incarnation 1
    served dies at incarnation 2's point, and the one after it serves as incarnation 3."""
    r = rig(crash_plan={"2": CrashPoint.AFTER_RESTORE})
    r.start()
    first = r.serving(1)
    standby = r.standby_pid()
    os.kill(first, signal.SIGKILL)
    third = r.serving(3)
    points = r.daemon_events(Event.CRASH_POINT)
    assert [(e["incarnation"], e["pid"], e["point"]) for e in points] == [(2, standby, CrashPoint.AFTER_RESTORE)]
    died = r.keeper_events(Event.DIED)
    assert [(e["incarnation"], e["pid"]) for e in died] == [(1, first), (2, standby)]
    assert [e["pid"] for e in r.keeper_events(Event.STARTED)] == [first, standby, third]
    r.stop()


def test_a_standby_gone_before_its_turn_is_replaced_by_a_cold_start(rig):
    """Nothing should kill a standby; if something does, the next incarnation starts cold, its
    number the next, and the dead standby is no incarnation (no DIED, no STARTED)."""
    r = rig()
    r.start()
    first = r.serving(1)
    standby = r.standby_pid()
    os.kill(standby, signal.SIGKILL)
    assert wait_for(lambda: _state_of(standby) == "Z")  # dead (not yet reaped) before the death that needs it
    os.kill(first, signal.SIGKILL)
    second = r.serving(2)
    assert second not in (first, standby)
    assert [(e["incarnation"], e["standby"]) for e in r.keeper_events(Event.STARTED)] == [(1, False), (2, False)]
    ended = r.keeper_events(Event.STANDBY_ENDED)
    assert [(e["pid"], e["why"], e["signal"]) for e in ended] == [(standby, "gone at its turn", signal.SIGKILL)]
    assert standby not in {e["pid"] for e in r.keeper_events(Event.DIED)}
    r.stop()


def test_without_standby_each_incarnation_is_started_at_the_death(rig):
    """GuestConfig.standby off (--daemon-restart cold): no process waits beside the one serving;
    the next one is started after the death, and found its activation queued."""
    r = rig(standby=False)
    r.start()
    first = r.serving(1)
    time.sleep(0.5)  # time enough for a standby to be started, were there one
    assert r.keeper.standby is None and not r.keeper_events(Event.STANDBY)
    assert r.daemons_alive() == {first}
    os.kill(first, signal.SIGKILL)
    second = r.serving(2)
    assert r.kernel.recv(64) == b"restore"
    started = r.keeper_events(Event.STARTED)
    assert [(e["incarnation"], e["pid"], e["standby"]) for e in started] == [(1, first, False), (2, second, False)]
    assert [e["standby_wait_s"] for e in r.daemon_events(Event.FD_RECEIVED)] == [None, None]
    assert r.keeper.standby is None and not r.keeper_events(Event.STANDBY)
    r.stop()


def test_a_supervised_standby_gets_the_held_anon_fds_only_at_its_activation(rig, tmp_path):
    """supervise_fds: an anon fd the keeper holds across a death is no fd of the standby's before
    its activation, and is handed to it with its activation."""
    blob = tmp_path / "img0.erofs"
    blob.write_bytes(b"\0" * 4096)
    r = rig(supervise_fds=True, images={"img0": str(blob)})
    assert r.keeper.held is not None
    r.keeper.held.cookies_path = str(tmp_path / "no-cookie-list")  # nothing pruned
    anon = os.open(tmp_path / "anon", os.O_RDWR | os.O_CREAT)
    anon_link = os.readlink(f"/proc/self/fd/{anon}")
    r.keeper.held.fds = {4: (anon, {"op": "deposit", "object_id": 4, "cookie": "img0.4", "msg_id": 9,
                                    "answered": True})}
    r.start()
    first = r.serving(1)
    assert anon_link in links(first)  # handed to the first one, as to each
    standby = r.standby_pid()
    assert anon_link not in links(standby) and r.device_link not in links(standby)
    os.kill(first, signal.SIGKILL)
    assert r.serving(2) == standby
    assert anon_link in links(standby)
    inherited = r.daemon_events(Event.INHERITED)
    assert [(e["incarnation"], e["object_id"]) for e in inherited] == [(1, 4), (2, 4)]
    r.stop()


def test_an_adopted_process_is_waited_for_as_popen_does():
    """AdoptedProcess: Popen's returncode (negative for a signal), poll and a bounded wait, and no
    signal once it is reaped."""
    exits = AdoptedProcess(os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], os.environ))
    assert exits.wait() == 3 and exits.poll() == 3
    sleeper = AdoptedProcess(os.posix_spawn("/bin/sh", ["sh", "-c", "exec sleep 30"], os.environ))
    assert sleeper.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(0.05)
    sleeper.terminate()
    assert sleeper.wait() == -signal.SIGTERM and sleeper.poll() == -signal.SIGTERM
    sleeper.kill()  # reaped: nothing is sent (its pid may be another process's by now)


# -- Keeper.run's ends: SIGTERM (the end check's) and an error; a process of its own -------------

DRIVER = """
import socket, sys
sys.path.insert(0, sys.argv[1])
import keeper
from contract import GuestConfig
kernel, device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
keeper.open_cache = lambda cache_dir, tag: device.fileno()
keeper.trace_mark = lambda key, value: None
k = keeper.Keeper(GuestConfig.read(sys.argv[2]), sys.argv[2])
if sys.argv[3] == "error":
    import time
    def reap():
        raise RuntimeError("an error in the keeper")
    real_start = k.start_daemon
    def start():
        real_start()  # then the error, once the standby waits
        while not open(f"/proc/{k.standby.process.pid}/syscall").read().startswith(sys.argv[4] + " "):
            time.sleep(0.01)
    k.reap, k.start_daemon = reap, start
sys.exit(k.run())
"""


@pytest.mark.parametrize("end", ["sigterm", "error"])
def test_every_end_of_the_keeper_ends_the_standby(tmp_path, end):
    if RECVMSG is None:
        pytest.skip("no recvmsg number known for this machine")
    config = guest_config(tmp_path)
    config.write(str(tmp_path / "config.json"))
    with open(tmp_path / "keeper.err", "w") as err:  # a file, not a pipe: the daemons inherit it
        keeper = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "guest_scripts"),
                                   str(tmp_path / "config.json"), end, str(RECVMSG)], stderr=err)
    log = tmp_path / "keeper.jsonl"
    started = lambda: [e["pid"] for e in lines(log) if e["event"] == Event.STARTED]  # noqa: E731
    try:
        standby = wait_for(lambda: [e["pid"] for e in lines(log) if e["event"] == Event.STANDBY])
        assert standby, "no standby started"
        if end == "sigterm":
            assert wait_for(lambda: waiting_for_activation(standby[0]))
            assert wait_for(lambda: (tmp_path / "daemon.state").exists())
            keeper.send_signal(signal.SIGTERM)
        status = keeper.wait(BOUND_S)
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait()
        left = [pid for pid in started() if Path(f"/proc/{pid}").exists()]
        for pid in left:  # after an error the serving one is left, as before: not the standby's business
            os.kill(pid, signal.SIGKILL)
    events = lines(log)
    ended = [e for e in events if e["event"] == Event.STANDBY_ENDED]
    assert [(e["pid"], e["why"], e["signal"]) for e in ended] == [(standby[0], "keeper stopping", signal.SIGKILL)]
    assert not Path(f"/proc/{standby[0]}").exists()  # reaped by the keeper, not left to wait
    if end == "sigterm":
        assert status == 0 and events[-1]["event"] == Event.STOPPED and not left
        assert [(e["incarnation"], e["pid"]) for e in events if e["event"] == Event.DIED] == [(1, started()[0])]
    else:
        assert status == 1 and "an error in the keeper" in (tmp_path / "keeper.err").read_text()
    zygote = [e["pid"] for e in events if e["event"] == Event.ZYGOTE]
    assert [(e["pid"], e["why"]) for e in events if e["event"] == Event.ZYGOTE_ENDED] == [(zygote[0], "keeper stopping")]
    assert not Path(f"/proc/{zygote[0]}").exists()


# -- the zygote: each standby forked ready-made ----------------------------------------------------

def test_the_zygote_forks_a_standby_ready_at_once_that_is_the_keepers_child(rig, capsys):
    """A fork is the keeper's child (re-parented: the keeper is a child subreaper), waits for its
    activation within milliseconds of the request, holds nothing of the zygote's but stdio, and is
    made an incarnation, killed and reaped as a spawned one is."""
    if RECVMSG is None:
        pytest.skip("no recvmsg number known for this machine")
    r = rig()
    r.keeper.start_zygote()
    zygote = r.zygote_imported()
    asked = time.monotonic()
    forked = r.keeper.fork_standby()
    assert isinstance(forked, Spawned) and forked.made == Made.FORKED
    pid = forked.process.pid
    deadline = asked + BOUND_S
    while not waiting_for_activation(pid) and time.monotonic() < deadline:
        time.sleep(0.0005)
    ready_s = time.monotonic() - asked
    with capsys.disabled():
        print(f"\nfork to ready: {ready_s * 1000:.1f} ms (the zygote's answer after {forked.fork_s * 1000:.1f} ms)")
    assert ready_s < 1.0  # a spawned one takes a Python start: seconds under TCG
    assert _status(pid)["PPid"] == str(os.getpid())
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # ours to wait for (ChildProcessError otherwise)
    fds = os.listdir(f"/proc/{pid}/fd")
    zygote_end = os.readlink(f"/proc/{zygote}/fd/{_arg(zygote, '--zygote-fd')}")
    assert len(set(fds) - {"0", "1", "2"}) == 1 and zygote_end not in links(pid) and r.device_link not in links(pid)
    spawned = r.keeper.spawn()  # the same start, a Python of its own: the same signal state
    assert wait_for(lambda: waiting_for_activation(spawned.process.pid))
    for field in ("SigBlk", "SigIgn", "SigCgt"):
        assert _status(pid)[field] == _status(spawned.process.pid)[field], field
    r.keeper.end_standby("compared", spawned)
    # imported, the zygote forks at the keeper's niceness (where it may lower it: root), and its
    # fork is the zygote's; start_standby nices the standby down as a spawned one is
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, zygote) \
        in (os.getpriority(os.PRIO_PROCESS, 0), min(19, os.getpriority(os.PRIO_PROCESS, 0) + STANDBY_NICE))
    r.keeper.standby = forked  # what the loop activates first
    r.start()
    assert r.serving(1) == pid
    started = r.keeper_events(Event.STARTED)
    assert [(e["pid"], e["standby"], e["made"]) for e in started] == [(pid, True, Made.FORKED)]
    received = r.daemon_events(Event.FD_RECEIVED)
    assert [(e["pid"], e["forked"]) for e in received] == [(pid, True)] and received[0]["standby_wait_s"] > 0
    assert (r.dir / DAEMON_PID_FILE).read_text() == f"{pid}\n"
    os.kill(pid, signal.SIGKILL)
    second = r.serving(2)
    assert r.kernel.recv(64) == b"restore"
    died = r.keeper_events(Event.DIED)
    assert [(e["incarnation"], e["pid"], e["signal"]) for e in died] == [(1, pid, signal.SIGKILL)]
    assert _state_of(pid) is None  # reaped by the keeper
    assert second != pid and r.keeper_events(Event.STARTED)[1]["made"] in (Made.FORKED, Made.SPAWNED)
    r.stop()


def test_once_the_zygote_is_ready_every_standby_is_forked(rig):
    """The loop: the first standby is spawned (the zygote still imports), the ones after it forked;
    STANDBY and STARTED say which, and a forked incarnation dies and is reaped as any."""
    r = rig()
    first, spawned, zygote = r.start_with_the_zygote_ready()
    os.kill(first, signal.SIGKILL)
    assert r.serving(2) == spawned
    forked = r.standby_pid()
    assert _status(forked)["PPid"] == str(os.getpid())
    os.kill(spawned, signal.SIGKILL)
    assert r.serving(3) == forked
    os.kill(forked, signal.SIGKILL)
    fourth = r.serving(4)
    r.stop()
    standbys = r.keeper_events(Event.STANDBY)
    assert [(e["pid"], e["made"]) for e in standbys] == [(spawned, Made.SPAWNED), (forked, Made.FORKED),
                                                         (fourth, Made.FORKED), (standbys[3]["pid"], Made.FORKED)]
    assert standbys[0]["why_spawned"] == "zygote importing" and standbys[0]["fork_s"] is None
    assert all(e["fork_s"] < 1.0 and e["why_spawned"] is None for e in standbys[1:])
    started = r.keeper_events(Event.STARTED)
    assert [(e["pid"], e["made"]) for e in started] == [(first, Made.SPAWNED), (spawned, Made.SPAWNED),
                                                        (forked, Made.FORKED), (fourth, Made.FORKED)]
    died = r.keeper_events(Event.DIED)
    assert [(e["pid"], e["signal"]) for e in died] == [(first, 9), (spawned, 9), (forked, 9), (fourth, None)]
    assert [e["pid"] for e in r.keeper_events(Event.ZYGOTE_READY)] == [zygote]
    assert [(e["pid"], e["why"]) for e in r.keeper_events(Event.ZYGOTE_ENDED)] == [(zygote, "keeper stopping")]
    assert [e["forked"] for e in r.daemon_events(Event.FD_RECEIVED)] == [False, False, True, True]


def test_a_dead_zygote_makes_the_next_standby_a_spawned_one(rig):
    """The control: the zygote killed, the next standby is spawned (and serves), the zygote's end
    logged, and a new one started, which forks the standby after it."""
    r = rig()
    first, spawned, zygote = r.start_with_the_zygote_ready()
    os.kill(zygote, signal.SIGKILL)
    assert wait_for(lambda: _state_of(zygote) == "Z")
    os.kill(first, signal.SIGKILL)
    assert r.serving(2) == spawned
    after = r.standby_pid()
    standby = r.keeper_events(Event.STANDBY)[-1]
    assert (standby["pid"], standby["made"], standby["why_spawned"]) == (after, Made.SPAWNED, "zygote gone")
    ended = r.keeper_events(Event.ZYGOTE_ENDED)
    assert [(e["pid"], e["why"], e["signal"]) for e in ended] == [(zygote, "gone", signal.SIGKILL)]
    assert _state_of(zygote) is None
    zygotes = [e["pid"] for e in r.keeper_events(Event.ZYGOTE)]
    assert len(zygotes) == 2 and zygotes[0] == zygote and r.zygote_imported() == zygotes[1]
    os.kill(spawned, signal.SIGKILL)
    assert r.serving(3) == after
    assert r.standby_pid() != after and r.keeper_events(Event.STANDBY)[-1]["made"] == Made.FORKED
    r.stop()


def test_a_zygote_that_does_not_answer_is_given_up(rig, monkeypatch):
    """A zygote stopped after it said READY: no answer within the bound, so it is ended (killed,
    reaped, logged), that standby spawned by the caller, and a new zygote started."""
    monkeypatch.setattr(keeper_module, "ZYGOTE_BOUND_S", 0.2)
    r = rig()
    r.keeper.start_zygote()
    zygote = r.zygote_imported()
    os.kill(zygote, signal.SIGSTOP)
    assert r.keeper.fork_standby() == "zygote no answer within 0.2 s"
    ended = r.keeper_events(Event.ZYGOTE_ENDED)
    assert [(e["pid"], e["why"], e["signal"]) for e in ended] == [(zygote, "no answer within 0.2 s", signal.SIGKILL)]
    assert _state_of(zygote) is None
    assert r.keeper.zygote is not None and r.keeper.zygote.popen.pid != zygote


def test_no_zygote_when_the_keeper_cannot_adopt_its_forks(rig, monkeypatch):
    """prctl(PR_SET_CHILD_SUBREAPER) refused: a fork would be init's child, not the keeper's, so no
    zygote is started and every standby is spawned, as before it; the keeper says why once."""
    monkeypatch.setattr(keeper_module, "child_subreaper", lambda on=True: "refused (the test)")
    r = rig()
    r.start()
    first = r.serving(1)
    standby = r.standby_pid()
    os.kill(first, signal.SIGKILL)
    assert r.serving(2) == standby
    r.standby_pid()
    r.stop()
    assert [(e["pid"], e["why"]) for e in r.keeper_events(Event.ZYGOTE)] == [(None, "refused (the test)")]
    assert {(e["made"], e["why_spawned"]) for e in r.keeper_events(Event.STANDBY)} == {(Made.SPAWNED, "refused (the test)")}
    assert r.keeper.zygote is None and not r.keeper_events(Event.ZYGOTE_ENDED)


@pytest.mark.parametrize("end", ["sigterm", "sigkill"])
def test_the_keepers_end_leaves_no_zygote_and_no_forked_standby(tmp_path, end):
    """Keeper.run in a process of its own, a forked standby waiting: SIGTERM ends both (logged);
    SIGKILL leaves them nothing to wait on, and both exit by themselves."""
    if RECVMSG is None:
        pytest.skip("no recvmsg number known for this machine")
    config = guest_config(tmp_path)
    config.write(str(tmp_path / "config.json"))
    with open(tmp_path / "keeper.err", "w") as err:
        keeper = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "guest_scripts"),
                                   str(tmp_path / "config.json"), "run", str(RECVMSG)], stderr=err)
    log = tmp_path / "keeper.jsonl"
    pids = lambda event, **match: [e["pid"] for e in lines(log)  # noqa: E731
                                   if e["event"] == event and all(e.get(k) == v for k, v in match.items())]
    started: list[int] = []
    try:
        zygote = wait_for(lambda: pids(Event.ZYGOTE))[0]
        started = wait_for(lambda: pids(Event.STARTED))
        assert wait_for(lambda: waiting_for_activation(zygote))  # imported, waiting for a fork
        assert wait_for(lambda: waiting_for_activation(pids(Event.STANDBY)[0]))
        os.kill(started[0], signal.SIGKILL)
        forked = wait_for(lambda: pids(Event.STANDBY, made=Made.FORKED))
        assert forked, "no standby forked"
        assert wait_for(lambda: waiting_for_activation(forked[0]))
        keeper.send_signal(signal.SIGTERM if end == "sigterm" else signal.SIGKILL)
        keeper.wait(BOUND_S)
        started = pids(Event.STARTED)
        gone = {"sigterm": (None,), "sigkill": (None, "Z")}[end]  # orphans: reaped by whoever adopts them
        assert wait_for(lambda: _state_of(zygote) in gone and _state_of(forked[0]) in gone), \
            f"left: the zygote {_state_of(zygote)}, the standby {_state_of(forked[0])}"
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait()
        for pid in started:
            if _state_of(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)
    if end == "sigterm":
        ended = [(e["event"], e["pid"], e["why"]) for e in lines(log) if e["event"] in (Event.ZYGOTE_ENDED, Event.STANDBY_ENDED)]
        assert sorted(ended) == sorted([(Event.STANDBY_ENDED, forked[0], "keeper stopping"),
                                        (Event.ZYGOTE_ENDED, zygote, "keeper stopping")])


# -- the host's side: the run option, down to the guest's config ------------------------------------

@pytest.mark.parametrize("restart, standby", [("standby", True), ("cold", False)])
def test_the_run_option_reaches_the_guest_config(tmp_path, restart, standby):
    from guest_scripts.contract import GuestConfig
    from harness.guest import dataset, vm
    from harness.request import RunRequest
    from harness.runner import Run

    req = RunRequest(daemon_restart=restart, output=tmp_path / "runs", cache=tmp_path / "cache").validate()
    run = Run(req)
    data = dataset.Dataset(dataset.DatasetSpec(seed=1), {"img0": tmp_path / "img0.erofs"}, {"img0": {}})
    config = run.guest_config(data, vm.Timeouts.for_accel("tcg"))
    assert config.standby is standby and GuestConfig.read(str(run.config_path)).standby is standby
    assert f"--daemon-restart {restart}" in req.reproduce()


def test_a_cold_restart_is_refused_for_a_daemon_that_restarts_itself(tmp_path):
    from harness.errors import InputError
    from harness.request import RunRequest

    with pytest.raises(InputError, match="--daemon cdaemon restarts itself"):
        RunRequest(daemon="cdaemon", daemon_restart="cold", output=tmp_path, cache=tmp_path).validate()
    RunRequest(daemon="cdaemon", output=tmp_path, cache=tmp_path).validate()  # the default says nothing of it
    with pytest.raises(InputError, match="unknown --daemon-restart"):
        RunRequest(daemon_restart="warm", output=tmp_path, cache=tmp_path).validate()


def _state_of(pid: int) -> str | None:
    """/proc/PID/stat's state letter; None once the process is reaped."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _status(pid: int) -> dict[str, str]:
    """/proc/PID/status, by field."""
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (row.partition(":") for row in rows)}


def _arg(pid: int, option: str) -> str:
    """The value given `option` on the process's command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index(option) + 1]


def test_the_zygote_s_queued_messages_are_read_once_by_ready_or_late_forks():
    """`ready` reads up to READY and no further (an answer behind it is `late_forks`'), reads
    nothing once READY was seen, and says a closed channel is a zygote gone; `late_forks` takes
    every FORKED queued, and a closed channel is no error to it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote = keeper_module.Zygote(popen=None, sock=ours, started=time.time())  # type: ignore[arg-type]
    assert not zygote.ready()  # nothing sent yet
    keeper_module.send_msg(theirs, {"op": keeper_module.READY, "t": time.time()})
    keeper_module.send_msg(theirs, {"op": keeper_module.FORKED, "pid": 4242})
    keeper_module.send_msg(theirs, {"op": keeper_module.FORKED, "pid": 4243})
    assert zygote.ready() and zygote.import_s is not None
    assert zygote.ready()  # again: nothing more read
    theirs.close()
    assert zygote.late_forks() == [4242, 4243]
    assert zygote.late_forks() == []
    ours.close()

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gone = keeper_module.Zygote(popen=None, sock=ours, started=time.time())  # type: ignore[arg-type]
    theirs.close()
    with pytest.raises(keeper_module.ZygoteFailed, match="gone"):
        gone.ready()
    ours.close()
