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
import time
from pathlib import Path
from typing import Any

from guest_scripts.contract import Event, Fault
from ..progress import Progress
from ..scenarios import Action
from .logs import GuestLogs
from .session import GuestHung, Session
from .vm import Timeouts

SIGNALS = {Fault.KILL: "KILL", Fault.CLOSE: "USR1"}  # what the host sends the daemon for each fault
PROGRESS_COUNTS = {Fault.KILL: "kills", Fault.CLOSE: "closes"}

STALLED = "a reader stalled; the faults stopped early"


class FaultLoop:
    def __init__(self, session: Session, logs: GuestLogs, actions: list[Action], crash_plan: dict[str, str],
                 timeouts: Timeouts, faults_log: Path, progress: Progress) -> None:
        self.session = session
        self.logs = logs
        self.actions = actions
        self.crash_plan = crash_plan
        self.t = timeouts
        self.faults_log = faults_log  # the host's record of every signal it sent
        self.progress = progress

    def run(self) -> str | None:
        """Why the faults stopped early, or None if every one was injected and recovered from."""
        incarnation = 1  # the one the next fault goes to
        try:
            for index, action in enumerate(self.actions):
                self.logs.poll()
                if self.logs.reader_events[Event.STALL]:
                    return STALLED
                if action.kind == Fault.AWAIT_CRASH:
                    # incarnation `index + 1` kills itself at its point, maybe before it ever serves
                    self.await_crash(index + 1, action.delay_s)
                    incarnation = index + 2
                    continue
                incarnation = self.inject(index, action, incarnation)
            if incarnation > 1:
                # the last death must be recovered from too: an answer from the next incarnation
                self.logs.wait_until(f"incarnation {incarnation} answering",
                                     lambda: incarnation in self.logs.answered_by, self.t.recovery)
        except GuestHung as e:
            return str(e)
        return None

    def inject(self, index: int, action: Action, incarnation: int) -> int:
        """One kill or close on incarnation `incarnation` (or the later one serving); returns the
        incarnation the next fault goes to."""
        inc, pid = self.logs.wait_for_incarnation(incarnation, self.t.recovery)
        self.logs.clock.sleep(action.delay_s)
        # the pid we waited for: if it died by itself meanwhile, the fault misses, and says so
        r = self.session.run(f"kill -{SIGNALS[action.kind]} {pid}", self.t.command)
        self.record(index=index, kind=action.kind, pid=pid, incarnation=inc, status=r.status)
        self.progress.count(PROGRESS_COUNTS[action.kind])
        self.logs.poll()
        self.progress.set("served", self.logs.served)
        return inc + 1 if action.kind == Fault.KILL else inc

    def await_crash(self, incarnation: int, timeout_s: float) -> None:
        point = self.crash_plan[str(incarnation)]

        def died() -> bool:
            return incarnation in self.logs.died
        try:
            self.logs.wait_until(f"incarnation {incarnation} dying at {point}", died, timeout_s)
        except GuestHung:  # its point never came: end it, and the report says so
            inc, pid = self.logs.wait_for_incarnation(incarnation, self.t.recovery)
            self.session.run(f"kill -KILL {pid}", self.t.command)
            self.record(kind=Fault.KILL, pid=pid, incarnation=inc, why=f"crash point {point} not reached")
            self.logs.wait_until(f"incarnation {incarnation} reaped", died, self.t.recovery)

    def record(self, **fields: Any) -> None:
        # wall-clock time: the judge lines it up with the guest's own stamps
        with open(self.faults_log, "a") as f:
            f.write(json.dumps({**fields, "t": time.time()}) + "\n")
