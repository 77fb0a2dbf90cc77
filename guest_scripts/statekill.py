"""Kills the daemon when the kernel reaches a given state of the protocol, as the kernel's own
trace shows it live (Fault.STATE_KILL): not on a timer, so that each state is hit a known number
of times, however the timing of the run falls.

The host arms it with a KernelState written to a FIFO (GuestConfig.statekill_ctl). It reads a
tracefs instance of its own (the run's trace, read whole at the end, loses nothing to it), and at
the first event that puts the kernel in the armed state for a daemon process, a child of the
keeper (found by the process tree, never by a name), it SIGKILLs that process and logs what it
saw; then it waits to be armed again. Whether the daemon died in that state is for the host to
confirm from the run's trace (harness/judge/statekills.py): the kill lands a little later than
the event, and the daemon dawdles inside each step (GuestConfig.dawdle_s) so that it lands in it.

It also carries out the host's timer kills (Fault.KILL, armed with a HeldKill word): from the
same trace it knows which process holds which request (delivered by its read(), not answered),
and kills the one named while it holds one (contract.KillGate).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import select
import signal
import sys
import time
from typing import Callable

from contract import KERNEL_STATES, STATEKILL_LOG, Event, GuestConfig, HeldKill, KernelState, KillGate
from eventlog import EventLog

TRACEFS = "/sys/kernel/tracing"
INSTANCE = f"{TRACEFS}/instances/failover-statekill"
EVENTS = ("failover/deliver", "failover/restore", "cachefiles/cachefiles_ondemand_open",
          "cachefiles/cachefiles_ondemand_fd_write", "cachefiles/cachefiles_ondemand_fd_release",
          # the answers, for the requests each process holds (Held)
          "cachefiles/cachefiles_ondemand_copen", "cachefiles/cachefiles_ondemand_cread", "failover/copened")
LINE = re.compile(r"^\s*.+?-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?\d+\.\d+:\s+"
                  r"(?P<event>\w+):\s+(?:\([^)]*\)\s*)?(?P<args>.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")
OFF = "off"  # written to the FIFO: disarm
# a request held longer than this by a live daemon may be one the kernel ended with no answer (Held)
HELD_FOR_S = 5.0
STOP_WAIT_S = 0.5  # a gated kill's SIGSTOP: how long every thread may take to stop (one in D state)


def parse(line: str) -> tuple[int, str, dict[str, str]] | None:
    """(thread id, event, fields) of one trace_pipe line."""
    m = LINE.match(line)
    if m is None:
        return None
    return int(m["pid"]), m["event"], dict(FIELD.findall(m["args"]))


class States:
    """Which KernelState an event puts the kernel in (None: none the agent kills at)."""

    def __init__(self) -> None:
        self.released: set[str] = set()  # objects (`o`) whose anon fd was released: an OPEN of one is a reopen

    def of(self, event: str, f: dict[str, str]) -> tuple[str, dict[str, object]] | None:
        if event == "cachefiles_ondemand_fd_release":
            self.released.add(f.get("o", ""))
        elif event == "deliver" and int(f.get("ret", "-1")) > 0:
            what: dict[str, object] = {"msg_id": int(f.get("msg_id", "-1")), "object_id": int(f.get("object_id", "-1"))}
            if f.get("opcode") == "0":
                return KernelState.DELIVERED_OPEN, what
            if f.get("opcode") == "2":
                return KernelState.DELIVERED_READ, what
        elif event == "cachefiles_ondemand_open" and f.get("o") in self.released:
            self.released.discard(f["o"])
            return KernelState.REOPENING, {"o": int(f["o"], 16)}
        elif event == "cachefiles_ondemand_fd_write":
            return KernelState.DATA_WRITTEN, {"o": int(f.get("o", "0"), 16), "off": int(f.get("s", "0"), 16)}
        elif event == "restore":
            return KernelState.RESTORING, {}
        return None


class Held:
    """The requests each process holds, as the trace says: an OPEN or READ delivered by a read()
    of one of its threads (`deliver`, ret > 0; a CLOSE is ended by its delivery), until its answer
    (`copen`/`cread` by msg_id, or a `copened` return: a copen the kernel took, then failed). A
    request held by a process that died is held by the one it is delivered to next."""

    def __init__(self, process_of: Callable[[int], int] | None = None) -> None:
        self.by_msg: dict[int, tuple[int, int, float]] = {}  # msg_id -> (process, opcode, when read)
        self.process_of = process_of or thread_group  # a thread's process (tests: a table)

    def of(self, thread: int, event: str, f: dict[str, str]) -> tuple[int, int, int] | None:
        """(process, msg_id, opcode) of a request `event` delivered; None for any other event."""
        if event == "deliver" and int(f.get("ret", "-1")) > 0 and f.get("opcode") in ("0", "2"):
            msg_id, opcode = int(f.get("msg_id", "-1")), int(f["opcode"])
            process = self.process_of(thread)
            self.by_msg.pop(msg_id, None)  # delivered again: the newest, in order
            self.by_msg[msg_id] = (process, opcode, time.monotonic())
            return process, msg_id, opcode
        if event in ("cachefiles_ondemand_copen", "cachefiles_ondemand_cread"):
            self.by_msg.pop(int(f.get("mid", "-1"), 16), None)  # the tracepoints print it in hex
        elif event == "copened" and f.get("ret") == "0":
            self.by_msg.pop(int(f.get("id", '"-1"').strip('"') or -1), None)
        return None

    def held_by(self, process: int, now: float | None = None) -> tuple[int, int] | None:
        """(msg_id, opcode) of a request `process` holds, the oldest; None if it holds none. One
        delivered over HELD_FOR_S ago is not trusted: the kernel ends some requests with no answer
        (an object dropped, a dead cache) and this table never hears of it; waiting for the next
        delivery instead costs a kill nothing but a few milliseconds."""
        now = time.monotonic() if now is None else now
        return next(((m, op) for m, (p, op, at) in self.by_msg.items()
                     if p == process and now - at <= HELD_FOR_S), None)


class ArmedKill:
    """A gated kill (HeldKill) the agent waits to carry out."""

    def __init__(self, pid: int, bound_s: float) -> None:
        self.pid = pid
        self.armed_at = time.monotonic()
        self.deadline = self.armed_at + bound_s
        self.stopped = False  # SIGSTOPped by `stop`, not yet continued

    def stop(self) -> bool:
        """SIGSTOP the process and wait (STOP_WAIT_S at most) for every thread of it to stop. A
        request the trace shows held may be answered in the millisecond the kill takes to land:
        stopped, the process answers nothing more, and the trace read after says what it holds."""
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        self.stopped = True
        until = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < until:
            if all_stopped(self.pid):
                return True
            time.sleep(0.001)
        return False

    def go_on(self) -> None:
        """SIGCONT a process `stop` stopped: it held nothing, the next delivery is waited for."""
        if self.stopped:
            self.stopped = False
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def carry_out(self, log: EventLog, gate: str, **request: int) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)  # a stopped process too: SIGKILL wakes it to die
            killed = True
        except ProcessLookupError:
            killed = False
        log.emit(Event.HELD_KILL, pid=self.pid, gate=gate, killed=killed, stopped=self.stopped,
                 waited_s=round(time.monotonic() - self.armed_at, 4), **request)


def all_stopped(pid: int) -> bool:
    """Whether every thread of `pid` is in a stop (a gone process: no)."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                    return False
    except (OSError, IndexError):
        return False
    return True


def status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    except OSError:
        return {}


def thread_group(thread: int) -> int:
    """The process a thread belongs to; the thread itself once it is gone (a single-threaded
    daemon's, killed: its only thread)."""
    return int(status(thread).get("Tgid", "0").strip() or 0) or thread


def daemon_process(thread: int, keeper_pid: int) -> int | None:
    """The process `thread` belongs to, if it is a daemon incarnation (the keeper's child). The
    keeper's other children never put the kernel in a state: a standby (GuestConfig.standby) has
    no device fd and no anon fd until it is an incarnation (one the zygote forked is the keeper's
    child too: re-parented to it), the zygote never has one, and a waiter only mounts and reads."""
    tgid = thread_group(thread)
    if int(status(tgid).get("PPid", "0").strip() or 0) == keeper_pid:
        return tgid
    return None


def setup() -> int:
    """The instance's trace_pipe, its events on."""
    if not os.path.isdir(INSTANCE):
        os.mkdir(INSTANCE)
    for event in EVENTS:
        with open(f"{INSTANCE}/events/{event}/enable", "w") as f:
            f.write("1")
    return os.open(f"{INSTANCE}/trace_pipe", os.O_RDONLY | os.O_NONBLOCK)


class Agent:
    """The agent's loop over its two inputs: the arming FIFO (`ctl`) and the trace (`pipe`), both
    non-blocking fds (a test gives it pipes of its own and a real process to kill)."""

    def __init__(self, ctl: int, pipe: int, log: EventLog, keeper_pid: int) -> None:
        self.ctl, self.pipe, self.log, self.keeper_pid = ctl, pipe, log, keeper_pid
        self.states, self.held = States(), Held()
        self.armed: str | None = None  # the KernelState to kill at
        self.gated: ArmedKill | None = None  # the host's timer kill, waiting for a held request
        self.pending = ""  # a trace line read in part

    def serve(self, running: Callable[[], bool] = lambda: True) -> None:
        poller = select.poll()
        poller.register(self.ctl, select.POLLIN)
        poller.register(self.pipe, select.POLLIN)
        self.log.emit(Event.STARTED)
        while running():
            gated = self.gated
            timeout_ms = None if gated is None else max(0, math.ceil((gated.deadline - time.monotonic()) * 1000))
            for fd, _ in poller.poll(timeout_ms):
                if fd == self.ctl:
                    for word in os.read(self.ctl, 4096).decode().split():
                        self.take(word)
                else:
                    self.read_trace()
            if self.gated is not None and time.monotonic() >= self.gated.deadline:
                self.gated.carry_out(self.log, KillGate.TIMEOUT)
                self.gated = None

    def take(self, word: str) -> None:
        """One word from the FIFO: a gated kill (HeldKill), a KernelState, or `off`."""
        if (arming := HeldKill.parse(word)) is None:
            self.armed = word if word in KERNEL_STATES else None
            self.log.emit(Event.ARMED, state=self.armed or OFF)
            return
        self.read_trace()  # what the process holds now, as of the latest line
        gated = self.gated = ArmedKill(*arming)
        self.log.emit(Event.ARMED, state=word)
        try:
            if self.held.held_by(gated.pid) is not None:
                gated.stop()  # stopped or not (a thread in D state), the trace says more now
                self.read_trace()  # what it answered before it stopped (or a delivery: killed)
            if self.gated is not None and (request := self.held.held_by(gated.pid)) is not None:
                gated.carry_out(self.log, KillGate.HELD, msg_id=request[0], opcode=request[1])
                self.gated = None
        finally:
            if self.gated is not None:
                gated.go_on()  # on every other way out too: no daemon is left stopped

    def read_trace(self) -> None:
        """Every line the pipe has now, each put to the armed state and the gated kill."""
        while True:
            try:
                data = os.read(self.pipe, 65536).decode(errors="replace")
            except BlockingIOError:
                return
            if not data:
                return
            *lines, self.pending = (self.pending + data).split("\n")
            for line in lines:
                self.see(line)

    def see(self, line: str) -> None:
        parsed = parse(line)
        if parsed is None:
            return
        thread, event, f = parsed
        try:
            delivered = self.held.of(thread, event, f)
            hit = self.states.of(event, f)
        except ValueError:  # a line cut or garbled: it says nothing (and must not end the agent)
            return
        if self.gated is not None and delivered is not None and delivered[0] == self.gated.pid:
            self.gated.carry_out(self.log, KillGate.DELIVERY, msg_id=delivered[1], opcode=delivered[2])
            self.gated = None
        if hit is None or self.armed is None or hit[0] != self.armed:
            return
        pid = daemon_process(thread, self.keeper_pid)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        self.log.emit(Event.STATE_KILL, state=self.armed, pid=pid, thread=thread, trigger=event, **hit[1])
        self.armed = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--keeper-pid", type=int, required=True)
    args = parser.parse_args()
    config = GuestConfig.read(args.config)
    log = EventLog(f"{config.log_dir}/{STATEKILL_LOG}", who="statekill")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not os.path.exists(config.statekill_ctl):
        os.mkfifo(config.statekill_ctl)
    ctl = os.open(config.statekill_ctl, os.O_RDWR | os.O_NONBLOCK)  # never EOF: we hold a writer too
    Agent(ctl, setup(), log, args.keeper_pid).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
