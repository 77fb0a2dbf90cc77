"""The scenario's faults, injected into a running guest in their seeded order.

Each kill or close goes to the daemon incarnation then serving; a kill moves the loop on to the
next incarnation, a close does not. A crash-point plan needs no signal from the host: each
incarnation kills itself, and the loop waits for its death (ending it itself if the point never
comes). After the last death the loop waits for the next incarnation's first answer, so that
every death was recovered from. A reader reporting a stall stops the faults: the run is then
judged on what it has.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from guest_scripts.contract import FAULT_SIGNALS, KEEPER_SIGNALS, Event, Fault, HeldKill, KernelState
from ..progress import Progress
from ..scenarios import Action
from .logs import STALLED, GuestLogs
from .session import GuestHung, RunDecided, Session
from .vm import Timeouts

PROGRESS_COUNTS = {Fault.KILL: "kills", Fault.CLOSE: "closes", Fault.RESTORE_LIVE: "live restores",
                   Fault.STALE: "stale answers", Fault.STATE_KILL: "state kills", Fault.CACHE_DEATH: "cache deaths",
                   Fault.KILL_WAITER: "killed waiters", Fault.UMOUNT_REOPEN: "reopen umounts"}

# Kernel states the readers reach only now and then, and the fault that brings one about: a live
# restore (restoring), an anon fd closed under a reader (reopening, at its next READ). Sent again
# every PROVOKE_EVERY_S until the state comes.
PROVOKE = {KernelState.RESTORING: Fault.RESTORE_LIVE, KernelState.REOPENING: Fault.CLOSE}
PROVOKE_EVERY_S = 3.0
# How long a state may take to come, as a share of the recovery bound (20 s under TCG): the
# readers mount every few seconds (OPENs) and read all the time (READs, writes); the rare ones are
# provoked. A state that does not come is a miss, which the report counts.
STATE_WAIT_SHARE = 1 / 3
# A kill gated on a held request (contract.KillGate) waits at most this long for one to be
# delivered to the daemon it aims at: the readers keep it busy (under TCG it held a request at 92-98%
# of the timer's moments, and the next came within 0.1 s), so the bound is met only when they stop.
KILL_GATE_S = 2.0


class FaultLoop:
    def __init__(self, session: Session, logs: GuestLogs, actions: list[Action], crash_plan: dict[str, str],
                 timeouts: Timeouts, faults_log: Path, progress: Progress, stop_when_decided: bool = True,
                 gate_kills: bool = False) -> None:
        self.session = session
        self.logs = logs
        self.actions = actions
        self.crash_plan = crash_plan
        self.t = timeouts
        self.faults_log = faults_log  # the host's record of every signal it sent
        self.progress = progress
        # stop at the first decided verdict (GuestLogs.decided); off: every fault is injected
        # whatever the kernel did (a stall still stops them: a stuck reader cannot be served)
        self.stop_when_decided = stop_when_decided
        # each Fault.KILL carried out by statekill.py while the daemon holds a request (KillGate);
        # off: sent by the host's shell at the timer's moment, held or not
        self.gate_kills = gate_kills
        self.decided_by: str | None = None  # a failed probe that stopped the faults early
        self.all_injected = False

    def run(self) -> str | None:
        """Why the run was aborted (a stall, a guest that hung), or None: every fault injected and
        recovered from, or the faults stopped once a probe failed (`decided_by` says so)."""
        incarnation = 1  # the one the next fault goes to
        self.logs.faults_running, self.logs.stop_on_probe = True, self.stop_when_decided
        try:
            for index, action in enumerate(self.actions):
                self.logs.poll()
                if decided := self.logs.decided():
                    return self.stopped(decided)
                if action.kind == Fault.AWAIT_CRASH:
                    # incarnation `index + 1` kills itself at its point, maybe before it ever serves
                    self.await_crash(index + 1, action.delay_s)
                    incarnation = index + 2
                    continue
                if action.kind == Fault.STATE_KILL:
                    incarnation = self.kill_at_state(index, action, incarnation)
                    continue
                incarnation = self.inject(index, action, incarnation)
            self.all_injected = True
            if incarnation > 1:
                # the last death must be recovered from too: an answer from the next incarnation
                self.logs.wait_until(f"incarnation {incarnation} answering",
                                     lambda: self.logs.answered_since(incarnation), self.t.recovery)
        except RunDecided:
            return self.stopped(self.logs.decided() or STALLED)
        except GuestHung as e:
            return str(e)
        finally:
            self.logs.faults_running = self.logs.stop_on_probe = False
        return None

    def stopped(self, decided: str) -> str | None:
        """A stall ends the run as before (an abort: the reader is stuck); a failed probe only
        ends the faults: the run goes on to its drain and end check, and is judged whole."""
        if decided == STALLED:
            return STALLED
        if not self.all_injected:  # a probe failed in the last recovery wait: nothing was left out
            self.decided_by = decided
        return None

    def inject(self, index: int, action: Action, incarnation: int) -> int:
        """One kill or close on incarnation `incarnation` (or the later one serving); returns the
        incarnation the next fault goes to."""
        inc, pid = self.logs.wait_for_incarnation(incarnation, self.t.recovery)
        if self.logs.kill_pid_file is not None:
            # another daemon's worker is there once its pid is written, serving or not: a kill before
            # it has served kills one the kernel never saw at work
            self.logs.wait_until(f"incarnation {inc} answering", lambda: self.logs.answered_since(inc), self.t.recovery)
        self.logs.clock.sleep(action.delay_s)
        if action.kind == Fault.KILL and self.gate_kills:
            self.held_kill(index, inc, pid)
            return inc + 1
        if action.kind in KEEPER_SIGNALS:
            # the keeper passes it on to the incarnation serving, which then exits
            keeper = f"$(cat {shlex.quote(self.logs.config.log_dir)}/keeper.pid)"
            r = self.session.run(f"kill -{KEEPER_SIGNALS[action.kind]} {keeper}", self.t.command)
        else:
            # the pid we waited for: if it died by itself meanwhile, the fault misses, and says so
            r = self.session.run(f"kill -{FAULT_SIGNALS[action.kind]} {pid}", self.t.command)
        self.record(index=index, kind=action.kind, pid=pid, incarnation=inc, status=r.status)
        self.progress.count(PROGRESS_COUNTS[action.kind])
        self.logs.poll()
        self.progress.set("served", self.logs.served)
        return inc + 1 if action.kind in (Fault.KILL, Fault.CACHE_DEATH, Fault.KILL_WAITER) else inc

    def arm(self, word: str, gone_ok: bool = False) -> None:
        """Arm (or disarm) statekill.py over its FIFO. Written without blocking: a FIFO open for
        writing waits for a reader, and an agent that died would hang the guest's shell until the
        command timeout; this way it is known at once (ENXIO), and the run says so."""
        ctl = shlex.quote(self.logs.config.statekill_ctl)
        r = self.session.run(f"echo {word} | dd of={ctl} oflag=nonblock status=none", self.t.command)
        if r.status != 0 and not gone_ok:
            raise GuestHung(f"the state-kill agent took no {word!r}: {r.output.strip() or f'exit {r.status}'}"
                            f" (is it alive? {self.logs.config.log_dir}/statekill.out)")

    def held_kill(self, index: int, incarnation: int, pid: int) -> None:
        """The kill of `pid` at the timer's moment if it holds a request then, else at the next
        delivered to it (within KILL_GATE_S): statekill.py knows from the kernel's trace, at once,
        what no host poll of the daemon's log could tell in time."""
        before = len(self.logs.held_kills)
        self.arm(HeldKill.arm(pid, KILL_GATE_S))
        # armed, the kill lands within KILL_GATE_S whatever the run has decided meanwhile: waited for
        # and recorded all the same (a RunDecided here left it unrecorded, landing in the drain)
        running, self.logs.faults_running = self.logs.faults_running, False
        try:
            self.logs.wait_until(f"the gated kill of process {pid}", lambda: len(self.logs.held_kills) > before,
                                 KILL_GATE_S + self.t.command)
        finally:
            self.logs.faults_running = running
        hit = self.logs.held_kills[before]
        self.record(index=index, kind=Fault.KILL, pid=pid, incarnation=incarnation, status=0 if hit.get("killed") else 1,
                    gate=hit.get("gate"), waited_s=hit.get("waited_s"))
        self.progress.count(PROGRESS_COUNTS[Fault.KILL])
        self.progress.set("served", self.logs.served)

    def kill_at_state(self, index: int, action: Action, incarnation: int) -> int:
        """Arm statekill.py with the action's KernelState and wait for its kill; a state that does
        not come within a third of the recovery bound is recorded as missed (the report counts the
        hits). The rare states are provoked (PROVOKE) every few seconds meanwhile."""
        inc, _ = self.logs.wait_for_incarnation(incarnation, self.t.recovery)
        # armed once this incarnation has answered and served a while, as a timer kill waits its
        # delay: kills back to back would carry what the first dead one held through a chain of
        # deaths (the wait is the fault plan's, not the kernel's; 21 s seen, bound 30 s)
        self.logs.wait_until(f"incarnation {inc} answering", lambda: self.logs.answered_since(inc), self.t.recovery)
        self.logs.clock.sleep(action.delay_s)
        before = len(self.logs.state_kills)
        self.arm(str(action.state))
        provoke = PROVOKE.get(str(action.state))
        deadline = self.logs.clock.now() + self.t.recovery * STATE_WAIT_SHARE
        try:
            while True:
                if provoke is not None:  # a state the readers alone reach only now and then
                    _, pid = self.logs.wait_for_incarnation(inc, self.t.recovery)
                    self.session.run(f"kill -{FAULT_SIGNALS[provoke]} {pid}", self.t.command)
                    self.record(index=index, kind=provoke, pid=pid, incarnation=inc, provoking=action.state)
                wait = PROVOKE_EVERY_S if provoke else max(0.0, deadline - self.logs.clock.now())
                try:
                    self.logs.wait_until(f"the kernel reaching {action.state}",
                                         lambda: len(self.logs.state_kills) > before, wait)
                    break
                except RunDecided:
                    raise
                except GuestHung:
                    if self.logs.clock.now() > deadline:
                        raise
        except RunDecided:
            self.arm("off", gone_ok=True)
            raise
        except GuestHung:
            self.arm("off", gone_ok=True)
            self.record(index=index, kind=Fault.STATE_KILL, state=action.state, missed=True)
            return inc
        hit = self.logs.state_kills[before]
        pid = hit.get("pid", -1)
        # a kill like the host's: the judge matches it to the incarnation's death by pid
        self.record(index=index, kind=Fault.KILL, state=action.state, pid=pid, trigger=hit.get("trigger"))
        self.progress.count(PROGRESS_COUNTS[Fault.STATE_KILL])
        # the process killed may be one that had not said it serves yet (killed in its start-up
        # restore): the keeper's reaping names its incarnation
        self.logs.wait_until(f"process {pid} reaped", lambda: pid in self.logs.died_pids, self.t.recovery)
        return self.logs.died_pids[pid] + 1

    def await_crash(self, incarnation: int, timeout_s: float) -> None:
        point = self.crash_plan[str(incarnation)]

        def died() -> bool:
            return incarnation in self.logs.died
        try:
            self.logs.wait_until(f"incarnation {incarnation} dying at {point}", died, timeout_s)
        except RunDecided:
            raise
        except GuestHung:  # its point never came: end it, and the report says so
            inc, pid = self.logs.wait_for_incarnation(incarnation, self.t.recovery)
            self.session.run(f"kill -KILL {pid}", self.t.command)
            self.record(kind=Fault.KILL, pid=pid, incarnation=inc, why=f"crash point {point} not reached")
            self.logs.wait_until(f"incarnation {incarnation} reaped", died, self.t.recovery)

    def record(self, **fields: Any) -> None:
        # wall-clock time: the judge lines it up with the guest's own stamps
        with open(self.faults_log, "a") as f:
            f.write(json.dumps({**fields, "t": time.time()}) + "\n")
