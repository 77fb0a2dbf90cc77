"""The fault loop's incarnation arithmetic, against a stand-in guest: a session that records the
host's commands and writes the keeper's and daemon's log lines and state file as the guest would,
on a fake clock (a wait of minutes takes no time)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from guest_scripts.contract import (STATEKILL_LOG, Event, Fault, HeldKill, KernelState, KillGate, Probe, ProbeOutcome,
                                    daemon_serving)
from harness.guest.faults import KILL_GATE_S, FaultLoop
from harness.guest.logs import DECIDED_BY_PROBE, STALLED, Clock, GuestLogs
from harness.guest.session import CommandResult, GuestGone
from harness.guest.vm import Timeouts
from harness.progress import Progress
from harness.scenarios import Action
from helpers import guest_config

TIMEOUTS = Timeouts(boot=10, command=10, stall_bound=10, recovery=60, drain=10)
FIRST_PID = 100


class StandInGuest:
    """The keeper restarting the daemon: each death (a kill from the host, a crash point, one of
    its own) is logged and the next incarnation serves, answering a request unless told not to."""

    def __init__(self, guest_dir: Path, crash_plan: dict[str, str] | None = None,
                 never_reach_point: tuple[int, ...] = ()) -> None:
        self.dir = guest_dir
        self.crash_plan = crash_plan or {}
        self.never_reach_point = set(never_reach_point)  # crash-point incarnations whose point never comes
        self.commands: list[str] = []
        self.now = 0.0
        self.incarnation = 0
        self.pid = FIRST_PID
        self.dies_by_itself: set[int] = set()  # incarnations that die unasked on the next tick
        self.silent: set[int] = set()  # incarnations that serve but never answer
        self.stall_on_command = False  # a reader reports a stall as the host sends a signal
        self.stall_at: float | None = None  # ... or once the clock reaches this
        self.probe_fails_on_command = False  # the daemon logs a probe the kernel failed as the host signals
        self.is_alive = True
        self.states_at_once: set[str] = set()  # kernel states reached as soon as statekill.py is armed
        self.states_provoked: set[str] = set()  # ... reached once the host provokes them
        self.armed: str | None = None
        self.agent_gone = False  # statekill.py carries out no gated kill
        self.fifo_unread = False  # ... nor reads its FIFO: a non-blocking write of it fails
        self.gate_after_s: float | None = None  # a gated kill lands this long after its arming (at a delivery)
        self.gated: tuple[int, float] | None = None  # (pid, when) of a gated kill yet to land
        self.start_next()

    # -- the guest's side
    def log(self, name: str, **event: object) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps(event) + "\n")

    def start_next(self) -> None:
        self.incarnation += 1
        self.pid += 1
        self.log("keeper.jsonl", event=Event.STARTED, incarnation=self.incarnation, pid=self.pid)
        if str(self.incarnation) in self.crash_plan and self.incarnation not in self.never_reach_point:
            return  # it dies at its point before it ever serves
        (self.dir / "daemon.state").write_text(daemon_serving(self.incarnation, self.pid))
        if self.incarnation not in self.silent:
            self.log("daemon.jsonl", event=Event.DONE, incarnation=self.incarnation, op="READ")

    def die(self) -> None:
        self.log("keeper.jsonl", event=Event.DIED, incarnation=self.incarnation, pid=self.pid, signal=9)
        self.start_next()

    def tick(self) -> None:
        if self.gated is not None and self.now >= self.gated[1]:
            pid, self.gated = self.gated[0], None
            self.log(STATEKILL_LOG, event=Event.HELD_KILL, pid=pid, gate=KillGate.DELIVERY, killed=pid == self.pid,
                     waited_s=self.gate_after_s)
            if pid == self.pid:
                self.die()
        if self.stall_at is not None and self.now >= self.stall_at:
            self.log("reader-0.jsonl", event=Event.STALL, what="img0.0x0:a@0", waited_s=31.0)
            self.stall_at = None
        crashes = str(self.incarnation) in self.crash_plan and self.incarnation not in self.never_reach_point
        if crashes or self.incarnation in self.dies_by_itself:
            self.die()

    # -- the clock the host waits on
    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.tick()

    def clock(self) -> Clock:
        return Clock(now=lambda: self.now, sleep=self.sleep)

    # -- the Session the host drives
    def state_kill(self, state: str) -> None:
        self.log(STATEKILL_LOG, event=Event.STATE_KILL, state=state, pid=self.pid, trigger="deliver")
        self.armed = None
        self.die()

    def run(self, command: str, timeout_s: float) -> CommandResult:
        self.commands.append(command)
        if command.startswith("echo "):  # statekill.py armed (or disarmed) over its FIFO
            state = command.split()[1]
            if self.fifo_unread:
                return CommandResult(command, 1, "dd: failed to open 'ctl': No such device or address", 0.0)
            if (gated := HeldKill.parse(state)) is not None:
                if self.probe_fails_on_command:
                    self.log("daemon.jsonl", event=Event.PROBE, probe=Probe.CLOSE_COPEN,
                             outcome=ProbeOutcome.READ_ON_CLOSED, incarnation=self.incarnation)
                if self.gate_after_s is not None:
                    self.gated = (gated[0], self.now + self.gate_after_s)
                elif not self.agent_gone:
                    alive = gated[0] == self.pid
                    self.log(STATEKILL_LOG, event=Event.HELD_KILL, pid=gated[0], gate=KillGate.HELD, killed=alive,
                             waited_s=0.0)
                    if alive:
                        self.die()
                return CommandResult(command, 0, "", 0.0)
            self.armed = None if state == "off" else state
            if state in self.states_at_once:
                self.state_kill(state)
            return CommandResult(command, 0, "", 0.0)
        if self.armed in self.states_provoked:
            self.state_kill(self.armed)
            return CommandResult(command, 0, "", 0.0)
        if self.stall_on_command:
            self.log("reader-0.jsonl", event=Event.STALL, what="img0.0x0:a@0", waited_s=31.0)
        if self.probe_fails_on_command:
            self.log("daemon.jsonl", event=Event.PROBE, probe=Probe.CLOSE_COPEN, outcome=ProbeOutcome.READ_ON_CLOSED,
                     incarnation=self.incarnation)
        _kill, signal, pid = command.split()
        if int(pid) != self.pid:
            return CommandResult(command, 1, "No such process", 0.0)
        if signal == "-KILL":
            self.die()
        else:
            self.log("daemon.jsonl", event=Event.CLOSE_FD, incarnation=self.incarnation)
        return CommandResult(command, 0, "", 0.0)

    def check(self, command: str, timeout_s: float) -> CommandResult:
        return self.run(command, timeout_s)

    def alive(self) -> bool:
        return self.is_alive


def fault_loop(tmp_path: Path, guest: StandInGuest, kinds: list[str], states: list[str] = (),
               stop_when_decided: bool = True, gate_kills: bool = False) -> FaultLoop:
    logs = GuestLogs(guest, guest_config(tmp_path, statekill_ctl="ctl"), guest.clock())
    actions = [Action(kind, 0.5) for kind in kinds] + [Action(Fault.STATE_KILL, 0.0, s) for s in states]
    return FaultLoop(guest, logs, actions, guest.crash_plan, TIMEOUTS, tmp_path / "faults.jsonl",
                     Progress(io.StringIO(), tty=False), stop_when_decided, gate_kills)


def arm(word: str) -> str:
    """The host's command arming statekill.py with `word` over its FIFO."""
    return f"echo {word} | dd of=ctl oflag=nonblock status=none"


def faults(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "faults.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_kills_advance_the_incarnation_and_closes_do_not(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    loop = fault_loop(tmp_path, guest, [Fault.KILL, Fault.CLOSE, Fault.CLOSE, Fault.KILL])
    assert loop.run() is None
    assert guest.commands == ["kill -KILL 101", "kill -USR1 102", "kill -USR1 102", "kill -KILL 102"]
    assert [(f["kind"], f["incarnation"], f["status"]) for f in faults(tmp_path)] == [
        (Fault.KILL, 1, 0), (Fault.CLOSE, 2, 0), (Fault.CLOSE, 2, 0), (Fault.KILL, 2, 0)]
    assert loop.logs.served == 3  # each incarnation's first answer


def test_gated_kills_are_the_agent_s_and_say_how_they_met_their_target(tmp_path: Path) -> None:
    """With the agent, each kill is armed over its FIFO (the pid the loop waited for) and recorded
    from the agent's log; a close is still the host's signal. Control: a target already gone is a
    miss (status 1), as a shell kill of a dead pid is."""
    guest = StandInGuest(tmp_path)
    loop = fault_loop(tmp_path, guest, [Fault.KILL, Fault.CLOSE, Fault.KILL], gate_kills=True)
    assert loop.run() is None
    assert guest.commands == [arm(HeldKill.arm(101, KILL_GATE_S)), "kill -USR1 102", arm(HeldKill.arm(102, KILL_GATE_S))]
    assert [(f["kind"], f["incarnation"], f["pid"], f["status"], f.get("gate")) for f in faults(tmp_path)] == [
        (Fault.KILL, 1, 101, 0, KillGate.HELD), (Fault.CLOSE, 2, 102, 0, None), (Fault.KILL, 2, 102, 0, KillGate.HELD)]
    (tmp_path / "gone").mkdir()
    guest = StandInGuest(tmp_path / "gone")
    guest.dies_by_itself.add(1)
    assert fault_loop(tmp_path / "gone", guest, [Fault.KILL, Fault.KILL], gate_kills=True).run() is None
    assert [(f["pid"], f["status"]) for f in faults(tmp_path / "gone")] == [(101, 1), (102, 0)]


def test_an_agent_that_is_gone_is_known_at_its_arming_not_at_a_command_timeout(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.agent_gone = True
    guest.fifo_unread = True
    aborted = fault_loop(tmp_path, guest, [Fault.KILL], gate_kills=True).run()
    assert aborted is not None and aborted.startswith("the state-kill agent took no 'held:101:")
    assert guest.now < TIMEOUTS.command


def test_an_agent_that_never_kills_ends_the_run_within_the_gate_s_bound(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.agent_gone = True
    aborted = fault_loop(tmp_path, guest, [Fault.KILL], gate_kills=True).run()
    assert aborted == f"the gated kill of process 101: not within {KILL_GATE_S + TIMEOUTS.command:g}s"
    assert faults(tmp_path) == []


def test_a_gated_kill_armed_as_the_run_is_decided_is_waited_for_and_recorded(tmp_path: Path) -> None:
    """Once armed, the agent kills within the gate's bound whatever the host decides meanwhile: a
    wait that a failed probe ended would leave that death out of faults.jsonl (it lands in the
    drain). Control: the faults stop there all the same."""
    guest = StandInGuest(tmp_path)
    guest.gate_after_s = 0.3
    guest.probe_fails_on_command = True
    loop = fault_loop(tmp_path, guest, [Fault.KILL, Fault.KILL], gate_kills=True)
    assert loop.run() is None and loop.decided_by == f"{DECIDED_BY_PROBE}: close-copen (read-on-closed)"
    assert [(f["pid"], f["status"], f.get("gate")) for f in faults(tmp_path)] == [(101, 0, KillGate.DELIVERY)]
    assert len([c for c in guest.commands if "held:" in c]) == 1


def test_closes_alone_wait_for_no_other_incarnation(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.silent.add(2)  # were the loop to wait for incarnation 2's answer, it would time out
    assert fault_loop(tmp_path, guest, [Fault.CLOSE, Fault.CLOSE]).run() is None
    assert guest.commands == ["kill -USR1 101", "kill -USR1 101"]


def test_the_last_death_must_be_answered_by_the_next_incarnation(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.silent.add(2)
    aborted = fault_loop(tmp_path, guest, [Fault.KILL]).run()
    assert aborted == "incarnation 2 answering: not within 60s"
    assert guest.now >= TIMEOUTS.recovery


def test_crash_points_are_awaited_one_incarnation_each(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path, crash_plan={"1": "read_received", "2": "after_restore", "3": "close_fd"})
    loop = fault_loop(tmp_path, guest, [Fault.AWAIT_CRASH] * 3)
    assert loop.run() is None
    assert guest.commands == []  # each died by itself
    assert loop.logs.died == {1, 2, 3}
    assert 4 in loop.logs.answered_by
    assert faults(tmp_path) == []


def test_a_crash_point_never_reached_is_ended_by_the_host_and_recorded(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path, crash_plan={"1": "read_received", "2": "close_fd"}, never_reach_point=(1,))
    loop = fault_loop(tmp_path, guest, [Fault.AWAIT_CRASH] * 2)
    assert loop.run() is None
    assert guest.commands == ["kill -KILL 101"]
    [recorded] = faults(tmp_path)
    assert recorded["incarnation"] == 1 and recorded["why"] == "crash point read_received not reached"
    assert loop.logs.died == {1, 2}


def test_a_fault_on_a_daemon_that_died_by_itself_misses_and_says_so(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.dies_by_itself.add(1)  # during the delay before the host's kill
    assert fault_loop(tmp_path, guest, [Fault.KILL, Fault.KILL]).run() is None
    assert guest.commands == ["kill -KILL 101", "kill -KILL 102"]
    assert [(f["incarnation"], f["pid"], f["status"]) for f in faults(tmp_path)] == [(1, 101, 1), (2, 102, 0)]


def test_a_reader_stall_stops_the_faults(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.stall_on_command = True
    assert fault_loop(tmp_path, guest, [Fault.KILL] * 5).run() == STALLED
    assert guest.commands == ["kill -KILL 101"]


def test_a_reader_stall_ends_a_wait_for_the_next_incarnation_at_once(tmp_path: Path) -> None:
    """A bad kernel known as soon as it is: the run is FAIL by the stall, so the wait for an answer
    the stuck kernel will never let come ends with it instead of at the recovery bound; its
    control, the same silent incarnation with no stall, waits the bound out."""
    guest = StandInGuest(tmp_path)
    guest.silent.add(2)
    guest.stall_on_command = True
    loop = fault_loop(tmp_path, guest, [Fault.KILL])
    assert loop.run() == STALLED
    assert guest.now < 1.0 and not loop.logs.faults_running  # the kill's delay and one poll; then off again
    (tmp_path / "control").mkdir()
    control = StandInGuest(tmp_path / "control")
    control.silent.add(2)
    assert fault_loop(tmp_path / "control", control, [Fault.KILL]).run() == "incarnation 2 answering: not within 60s"


def test_a_reader_stall_ends_a_wait_for_a_kernel_state_or_a_crash_point_as_a_stall(tmp_path: Path) -> None:
    """Not as a state missed or a point not reached (which would go on to the next fault)."""
    guest = StandInGuest(tmp_path)
    guest.stall_on_command = True  # at the provoking signal
    loop = fault_loop(tmp_path, guest, [], states=[KernelState.REOPENING, KernelState.DELIVERED_OPEN])
    assert loop.run() == STALLED
    assert guest.commands[-1] == arm("off") and not any(f.get("missed") for f in faults(tmp_path))
    (tmp_path / "crash").mkdir()
    crashing = StandInGuest(tmp_path / "crash", crash_plan={"1": "read_received"}, never_reach_point=(1,))
    crashing.stall_at = 0.2  # while the host waits (0.5 s) for incarnation 1's point
    assert fault_loop(tmp_path / "crash", crashing, [Fault.AWAIT_CRASH, Fault.AWAIT_CRASH]).run() == STALLED
    assert crashing.commands == [] and crashing.now < 2.0  # no kill for a point not reached: the run was decided


def test_a_failed_probe_stops_the_faults_but_is_no_abort(tmp_path: Path) -> None:
    """The run is FAIL whatever comes: the faults stop (also inside a wait for an answer that
    would otherwise take the recovery bound), the run goes on to be judged whole, and says why.
    With --after-fail continue every fault is injected."""
    guest = StandInGuest(tmp_path)
    guest.probe_fails_on_command = True
    guest.silent.add(2)
    loop = fault_loop(tmp_path, guest, [Fault.KILL] * 4)
    assert loop.run() is None  # not aborted
    assert loop.decided_by == f"{DECIDED_BY_PROBE}: close-copen (read-on-closed)"
    assert guest.commands == ["kill -KILL 101"] and guest.now < 1.0
    (tmp_path / "all").mkdir()
    every = StandInGuest(tmp_path / "all")
    every.probe_fails_on_command = True
    loop = fault_loop(tmp_path / "all", every, [Fault.KILL] * 4, stop_when_decided=False)
    assert loop.run() is None and loop.decided_by is None and len(every.commands) == 4


class ForeignDaemon(StandInGuest):
    """Another daemon (harness/daemons): its supervisor forks the next worker and rewrites the
    worker pid file; it logs nothing the host reads, and readers verifying files show it serves."""

    def start_next(self) -> None:
        self.incarnation += 1
        self.pid += 1
        (self.dir / "worker.pid").write_text(f"{self.pid}\n")

    def tick(self) -> None:
        super().tick()
        if self.incarnation not in self.silent:  # the readers go on while a worker serves
            self.log("reader-0.jsonl", event=Event.FILE, path=f"f{self.incarnation}")


def foreign_loop(tmp_path: Path, guest: StandInGuest, kinds: list[str]) -> FaultLoop:
    logs = GuestLogs(guest, guest_config(tmp_path), guest.clock(), kill_pid_file=tmp_path / "worker.pid")
    return FaultLoop(guest, logs, [Action(kind, 0.5) for kind in kinds], {}, TIMEOUTS, tmp_path / "faults.jsonl",
                     Progress(io.StringIO(), tty=False))


def test_another_daemon_s_incarnations_are_its_kill_target_s_pids_and_its_recovery_the_readers(tmp_path: Path) -> None:
    guest = ForeignDaemon(tmp_path)
    loop = foreign_loop(tmp_path, guest, [Fault.KILL] * 3)
    assert loop.run() is None
    assert guest.commands == ["kill -KILL 101", "kill -KILL 102", "kill -KILL 103"]
    assert loop.logs.pids_seen == [101, 102, 103, 104]
    # control: a worker after which no reader verifies a file is a death not recovered from
    (tmp_path / "silent").mkdir()
    silent = ForeignDaemon(tmp_path / "silent")
    silent.silent.add(2)
    assert foreign_loop(tmp_path / "silent", silent, [Fault.KILL]).run() == "incarnation 2 answering: not within 60s"


def test_a_probe_failed_after_the_last_fault_stopped_nothing_early(tmp_path: Path) -> None:
    """Every fault was injected: the failed probe only ends the last recovery wait."""
    guest = StandInGuest(tmp_path)
    guest.probe_fails_on_command = True
    guest.silent.add(2)
    loop = fault_loop(tmp_path, guest, [Fault.KILL])
    assert loop.run() is None and loop.decided_by is None and guest.now < 1.0


def test_a_guest_that_is_gone_ends_the_wait_at_once(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.silent.add(2)
    guest.is_alive = False
    with pytest.raises(GuestGone):
        fault_loop(tmp_path, guest, [Fault.KILL]).run()
    assert guest.now == 0.5  # the kill's delay, and no poll interval after


def test_kills_at_kernel_states_arm_the_agent_and_follow_its_kills(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    guest.states_at_once = {KernelState.DELIVERED_READ, KernelState.DATA_WRITTEN}
    guest.states_provoked = {KernelState.RESTORING}
    loop = fault_loop(tmp_path, guest, [Fault.KILL], [KernelState.DELIVERED_READ, KernelState.RESTORING,
                                                      KernelState.DATA_WRITTEN])
    assert loop.run() is None
    # a restore comes by itself only at a death: a live one is asked for
    assert guest.commands == ["kill -KILL 101", arm("delivered-read"), arm("restoring"), "kill -RTMIN+1 103",
                              arm("data-written")]
    assert [(f["kind"], f.get("state"), f.get("pid")) for f in faults(tmp_path)] == [
        (Fault.KILL, None, 101), (Fault.KILL, KernelState.DELIVERED_READ, 102),
        (Fault.RESTORE_LIVE, None, 103), (Fault.KILL, KernelState.RESTORING, 103),
        (Fault.KILL, KernelState.DATA_WRITTEN, 104)]
    assert loop.logs.died == {1, 2, 3, 4} and 5 in loop.logs.answered_by


def test_a_state_that_never_comes_is_a_miss_and_the_agent_is_disarmed(tmp_path: Path) -> None:
    guest = StandInGuest(tmp_path)
    loop = fault_loop(tmp_path, guest, [], [KernelState.DELIVERED_OPEN])
    assert loop.run() is None
    assert guest.commands == [arm("delivered-open"), arm("off")]
    [missed] = faults(tmp_path)
    assert missed["missed"] and missed["state"] == KernelState.DELIVERED_OPEN
    assert TIMEOUTS.recovery / 3 <= guest.now < TIMEOUTS.recovery


def test_an_incarnation_the_keeper_kills_before_it_answers_does_not_hold_up_the_faults(tmp_path: Path) -> None:
    """Fault.UMOUNT_REOPEN at a restore: the keeper SIGKILLs the incarnation holding the reopen's
    OPEN, which may never have answered anything; the next one's answer is what is waited for."""
    guest = StandInGuest(tmp_path)
    guest.silent.add(2)
    guest.dies_by_itself.add(2)  # the keeper's kill, unasked by the host
    guest.states_at_once = {KernelState.DELIVERED_READ}
    loop = fault_loop(tmp_path, guest, [Fault.KILL], [KernelState.DELIVERED_READ])
    assert loop.run() is None
    assert loop.logs.died == {1, 2, 3} and 4 in loop.logs.answered_by
    assert guest.now < TIMEOUTS.recovery
