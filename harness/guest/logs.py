"""The guest's logs and state files as the host follows them while it drives the guest.

Each log is read from where the last poll stopped (LogTail), and what the host waits on is kept
as running counts (GuestLogs): a poll every 0.1 s costs the new lines, not the whole run so far.
The judge reads the finished logs whole, on its own (judge/evidence.py).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from guest_scripts.contract import INCARNATION, STATEKILL_LOG, Event, GuestConfig, ProbeOutcome, parse_daemon_state
from .session import GuestGone, GuestHung, RunDecided, Session

POLL_S = 0.1
STALLED = "a reader stalled; the faults stopped early"
DECIDED_BY_PROBE = "the kernel failed a probe; the faults stopped early"


class LogTail:
    """One JSON-lines log, read as it grows: the byte offset read so far, and an unfinished last
    line kept for the next poll (the guest may be between writes, or killed in the middle of one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.unfinished = b""

    def poll(self) -> list[dict[str, Any]]:
        """The events written since the last poll; none while the file does not exist yet."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.unfinished = (self.unfinished + data).split(b"\n")
        events = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill, then another incarnation's: the judge skips it too
            if isinstance(record, dict):
                events.append(record)
        return events


@dataclass(frozen=True)
class Clock:
    """Time for the waits; tests give a fake one."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


class GuestLogs:
    """Running state from the keeper's, the daemon's and the readers' logs, and the waits on it."""

    def __init__(self, session: Session, config: GuestConfig, clock: Clock = Clock(),
                 kill_pid_file: Path | None = None) -> None:
        self.session = session
        self.config = config
        self.clock = clock
        # Another daemon than ours (harness/daemons): its incarnations are the pids its kill
        # target's pid file names in turn, and an incarnation has answered once a reader verified
        # a file after it came (the pace of the faults, not a verdict: the kernel's ledger judges)
        self.kill_pid_file = kill_pid_file
        self.pids_seen: list[int] = []  # the pid file's pids, in order: incarnation i is pids_seen[i - 1]
        self.files_when_seen: list[int] = []  # readers' verified files when each was first seen
        self.daemon = LogTail(Path(config.daemon_log))
        self.keeper = LogTail(Path(config.keeper_log))
        self.readers: dict[Path, LogTail] = {}  # found as the readers start
        self.reader_events: Counter[str] = Counter()  # event -> how many, all readers
        self.served = 0  # requests the daemon answered, all incarnations
        self.answered_by: set[int] = set()  # incarnations that answered a request
        self.died: set[int] = set()  # incarnations the keeper reaped
        self.died_pids: dict[int, int] = {}  # pid -> incarnation, of those
        self.statekill = LogTail(Path(config.log_dir) / STATEKILL_LOG)
        self.statekill_started = False
        self.state_kills: list[dict[str, Any]] = []  # statekill.py's kills, in order
        self.held_kills: list[dict[str, Any]] = []  # statekill.py's gated kills (KillGate), in order
        self.probe_violations: list[dict[str, Any]] = []  # the daemon's probes the kernel failed
        # While the faults run, a decided run (`decided`) ends every wait at once (RunDecided): a
        # wait for an incarnation's answer would cost a bad kernel the whole recovery bound (a
        # bisection step, 60 s of its 110 s). A stall always decides; a failed probe only with
        # stop_on_probe (the fault loop's choice)
        self.faults_running = False
        self.stop_on_probe = False

    def poll(self) -> None:
        for e in self.daemon.poll():
            if e.get("event") == Event.DONE:
                self.served += 1
                self.answered_by.add(e.get(INCARNATION, 0))
            elif e.get("event") == Event.PROBE and e.get("outcome") in ProbeOutcome.VIOLATIONS:
                self.probe_violations.append(e)
        for e in self.statekill.poll():
            self.statekill_started = True
            if e.get("event") == Event.STATE_KILL:
                self.state_kills.append(e)
            elif e.get("event") == Event.HELD_KILL:
                self.held_kills.append(e)
        for e in self.keeper.poll():
            if e.get("event") == Event.DIED:
                self.died.add(e.get(INCARNATION, 0))
                self.died_pids[e.get("pid", -1)] = e.get(INCARNATION, 0)
        for path in Path(self.config.log_dir).glob("reader-*.jsonl"):
            tail = self.readers.setdefault(path, LogTail(path))
            self.reader_events.update(e.get("event", "") for e in tail.poll())

    def keeper_bound(self) -> bool:
        return Path(self.config.keeper_state_file).exists()

    def daemon_state(self) -> tuple[int, int] | None:
        """(incarnation, pid) of the daemon that last said it is serving; of another daemon, the
        one its kill target's pid file names."""
        if self.kill_pid_file is not None:
            return self.pid_file_state()
        try:
            return parse_daemon_state(Path(self.config.daemon_state_file).read_text())
        except OSError:
            return None

    def pid_file_state(self) -> tuple[int, int] | None:
        assert self.kill_pid_file is not None
        try:
            text = self.kill_pid_file.read_text()
            pid = int(text.split()[0]) if text.endswith("\n") else 0  # a line not yet whole: not a pid
        except (OSError, ValueError, IndexError):  # not written yet, or being replaced
            return None
        if pid <= 0:
            return None
        if not self.pids_seen or self.pids_seen[-1] != pid:
            self.pids_seen.append(pid)
            self.files_when_seen.append(self.reader_events[Event.FILE])
        return len(self.pids_seen), pid

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Poll the logs until `predicate` holds; a guest that died meanwhile (a panic) ends the
        wait at once."""
        deadline = self.clock.now() + timeout_s
        while True:
            self.poll()
            if predicate():
                return
            if self.faults_running and (decided := self.decided()):
                raise RunDecided(f"{decided} while waiting for {what}")
            if not self.session.alive():
                raise GuestGone(f"the guest went away while waiting for {what}")  # exited, or its ssh closed
            if self.clock.now() > deadline:
                raise GuestHung(f"{what}: not within {timeout_s:.0f}s")
            self.clock.sleep(POLL_S)

    def decided(self) -> str | None:
        """Why the run's verdict is already FAIL, by what the logs show now: a reader's stall (the
        `stall` check), or a probe the kernel failed at its protocol point (its probe check). Both
        are final: nothing later in the run undoes them."""
        if self.reader_events[Event.STALL]:
            return STALLED
        if self.stop_on_probe and self.probe_violations:
            first = self.probe_violations[0]
            return f"{DECIDED_BY_PROBE}: {first.get('probe')} ({first.get('outcome')})"
        return None

    def answered_since(self, incarnation: int) -> bool:
        """Whether incarnation `incarnation`, or a later one, has answered a request: the keeper
        may kill one before it answers anything (Fault.UMOUNT_REOPEN at a restore kills the
        incarnation holding the reopen's OPEN; a wait for that one alone never ends)."""
        if self.kill_pid_file is not None:
            self.pid_file_state()
            if len(self.pids_seen) < incarnation:
                return False
            return self.reader_events[Event.FILE] > self.files_when_seen[incarnation - 1]
        return any(i >= incarnation for i in self.answered_by)

    def wait_for_incarnation(self, incarnation: int, timeout_s: float) -> tuple[int, int]:
        """(incarnation, pid) once incarnation `incarnation` (or a later one) is serving."""
        state: tuple[int, int] | None = None

        def serving() -> bool:
            nonlocal state
            state = self.daemon_state()
            return state is not None and state[0] >= incarnation
        self.wait_until(f"daemon incarnation {incarnation} serving", serving, timeout_s)
        assert state is not None
        return state
