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
"""
from __future__ import annotations

import argparse
import os
import re
import select
import signal
import sys

from contract import KERNEL_STATES, STATEKILL_LOG, Event, GuestConfig, KernelState
from eventlog import EventLog

TRACEFS = "/sys/kernel/tracing"
INSTANCE = f"{TRACEFS}/instances/failover-statekill"
EVENTS = ("failover/deliver", "failover/restore", "cachefiles/cachefiles_ondemand_open",
          "cachefiles/cachefiles_ondemand_fd_write", "cachefiles/cachefiles_ondemand_fd_release")
LINE = re.compile(r"^\s*.+?-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?\d+\.\d+:\s+"
                  r"(?P<event>\w+):\s+(?:\([^)]*\)\s*)?(?P<args>.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")
OFF = "off"  # written to the FIFO: disarm


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


def status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    except OSError:
        return {}


def daemon_process(thread: int, keeper_pid: int) -> int | None:
    """The process `thread` belongs to, if it is a daemon incarnation (the keeper's child). The
    keeper's other children never put the kernel in a state: a standby (GuestConfig.standby) has
    no device fd and no anon fd until it is an incarnation (one the zygote forked is the keeper's
    child too: re-parented to it), the zygote never has one, and a waiter only mounts and reads."""
    tgid = int(status(thread).get("Tgid", "0").strip() or 0)
    if tgid and int(status(tgid).get("PPid", "0").strip() or 0) == keeper_pid:
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
    pipe = setup()
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    poller.register(pipe, select.POLLIN)
    states = States()
    armed: str | None = None
    pending = ""
    log.emit(Event.STARTED)
    while True:
        for fd, _ in poller.poll():
            if fd == ctl:
                for word in os.read(ctl, 4096).decode().split():
                    armed = word if word in KERNEL_STATES else None
                    log.emit(Event.ARMED, state=armed or OFF)
                continue
            try:
                data = os.read(pipe, 65536).decode(errors="replace")
            except BlockingIOError:
                continue
            *lines, pending = (pending + data).split("\n")
            for line in lines:
                parsed = parse(line)
                if parsed is None:
                    continue
                thread, event, f = parsed
                hit = states.of(event, f)
                if hit is None or armed is None or hit[0] != armed:
                    continue
                pid = daemon_process(thread, args.keeper_pid)
                if pid is None:
                    continue
                os.kill(pid, signal.SIGKILL)
                log.emit(Event.STATE_KILL, state=armed, pid=pid, thread=thread, trigger=event, **hit[1])
                armed = None


if __name__ == "__main__":
    sys.exit(main())
