"""What runs in the guest around the faults: the cache's filesystem, the kernel's trace, the
keeper (which starts the daemon) and the readers; and their drain once the faults are over."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import guest_scripts
from guest_scripts.contract import END_OF_RUN_FILE, Event, GuestConfig
from ..errors import InputError
from ..judge.trace import KPROBE_GROUP, PROBES, TRACE_CLOCK, TRACEPOINTS
from .logs import GuestLogs
from .session import GuestHung, Session
from .vm import Timeouts

GUEST_SCRIPTS = Path(guest_scripts.__file__).resolve().parent  # the guest sees the host's files
GUEST_TMP = "/run/failover-harness"  # the guest's own tmpfs: the cache's ext4 image, mount points
GUEST_PYTHON = "/usr/bin/python3 -S"  # Debian's: the standard library only, no site start-up cost
TRACEFS = "/sys/kernel/tracing"
KMEMLEAK = "/sys/kernel/debug/kmemleak"
TRACE_BUFFER_KB = 16384  # per CPU: a whole run's on-demand events without overrun


@dataclass(frozen=True)
class DaemonLaunch:
    """How the daemon is started (harness/daemons: its adapter, filled in for the run)."""

    argv: tuple[str, ...]
    ours: bool  # the harness's keeper and daemon, which say in their logs when they serve
    kill_pid_file: Path  # names the process to kill; in the log directory, which the host reads
    output: str = "keeper.out"  # its stdout and stderr, in the log directory


class GuestServices:
    def __init__(self, session: Session, logs: GuestLogs, config: GuestConfig, config_path: Path,
                 readers: int, timeouts: Timeouts, daemon: DaemonLaunch) -> None:
        self.session = session
        self.logs = logs
        self.config = config
        self.config_path = config_path
        self.readers = readers
        self.t = timeouts
        self.daemon = daemon
        self.log_dir = shlex.quote(config.log_dir)

    def start(self) -> None:
        """Up to the readers' first mount: the daemon is then serving and busy."""
        session, t, py, g = self.session, self.t, GUEST_PYTHON, self.log_dir
        scripts = shlex.quote(str(GUEST_SCRIPTS))
        config = shlex.quote(str(self.config_path))
        session.check(f"mkdir -p {GUEST_TMP}/mnt {GUEST_TMP}/cache && truncate -s 1G {GUEST_TMP}/cache.img"
                      f" && mkfs.ext4 -q -F {GUEST_TMP}/cache.img && mount -o loop {GUEST_TMP}/cache.img {GUEST_TMP}/cache",
                      t.command)
        # the kernel's own account of every request: on before the first one
        probes = " && ".join(f"echo {shlex.quote(d.format(group=KPROBE_GROUP))} >>{TRACEFS}/kprobe_events"
                             for d in PROBES.values())
        events = " ".join(f"{TRACEFS}/events/{e}" for e in (*TRACEPOINTS, KPROBE_GROUP))
        session.check(f"echo {TRACE_BUFFER_KB} >{TRACEFS}/buffer_size_kb && echo {TRACE_CLOCK} >{TRACEFS}/trace_clock"
                      f" && echo 1 >{TRACEFS}/options/record-tgid"
                      f" && {probes} && for e in {events}; do echo 1 >$e/enable; done", t.command)
        # the debug flavour's kmemleak: what boot left is scanned and set aside, so that the end
        # check's scans report what the run leaked (guest_scripts/endcheck.py)
        session.check(f"mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug;"
                      f" if [ -e {KMEMLEAK} ]; then echo scan >{KMEMLEAK} && echo clear >{KMEMLEAK}; fi",
                      t.command * 3)
        # keeper.pid: the process the harness started (our keeper, another daemon's supervisor),
        # which the end check stops with SIGTERM
        session.check(f"{shlex.join(self.daemon.argv)} >{g}/{self.daemon.output} 2>&1 &"
                      f" echo $! >{g}/keeper.pid", t.command)
        if self.config.statekill_ctl:
            # kills at kernel states: armed by the fault loop, reading a trace instance of its own
            session.check(f"{py} {scripts}/statekill.py --config {config} --keeper-pid $(cat {g}/keeper.pid)"
                          f" >{g}/statekill.out 2>&1 &", t.command)
            self.logs.wait_until("the state-kill agent", lambda: self.logs.statekill_started, t.command)
        if self.daemon.ours:
            self.logs.wait_until("the keeper binding /dev/cachefiles", self.logs.keeper_bound, t.command)
        _, pid = self.logs.wait_for_incarnation(1, t.recovery)
        if not self.daemon.ours and pid == self.started_pid():
            # a daemon that restarts itself: the process started is its supervisor; killing it
            # would end the daemon, not fail one incarnation over
            raise InputError(f"the daemon's kill target ({self.daemon.kill_pid_file.name}) names the process the "
                             f"harness started (pid {pid}), its supervisor, not the worker that reads the device")
        for i in range(self.readers):
            session.check(f"{py} {scripts}/reader.py --config {config} --id {i} >{g}/reader-{i}.out 2>&1 &", t.command)
        self.logs.wait_until("the readers' first mount", lambda: self.logs.reader_events[Event.MOUNTED] > 0, t.command)

    def started_pid(self) -> int | None:
        try:
            return int((Path(self.config.log_dir) / "keeper.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def drain(self, decided: bool = False) -> None:
        """Readers finish the file they are on (and their first full round); then all stops. A
        run already decided (the faults stopped once a probe failed) waits for no reader: one
        stuck on what the kernel broke would hold it to the stall bound for a verdict known."""
        session, t, g = self.session, self.t, self.log_dir
        session.check(f"touch {shlex.quote(self.config.stop_file)}", t.command)
        events = self.logs.reader_events
        try:
            # a reader reported stuck will not finish: no use waiting the whole drain for it
            if not decided:
                self.logs.wait_until("the readers finishing",
                                     lambda: events[Event.FINISHED] >= self.readers or events[Event.STALL] > 0, t.drain)
        except GuestHung:
            pass  # stuck readers: the report says so; kill them so that the guest can stop
        session.run("pkill -KILL -f guest_scripts/reader.py", t.command)
        # with the daemon still serving, the data read back from the cache files; then the keeper
        # stopped, and what the failovers left: mounts that will not unmount, a cache that is
        # never withdrawn, a device that cannot be opened again, tasks in D state, leaks
        # (guest_scripts/endcheck.py: each step has its bound, `bound` or a multiple)
        bound = t.stall_bound / 3
        steps = (1 + len(self.config.images)) + (self.readers + 1) + 2 * 3 + 2  # re-read, umounts and keeper, scans
        session.run(f"{GUEST_PYTHON} {shlex.quote(str(GUEST_SCRIPTS))}/endcheck.py"
                    f" --config {shlex.quote(str(self.config_path))}"
                    f" --keeper-pid $(cat {g}/keeper.pid) --bound-s {bound:.0f} --out {g}/{END_OF_RUN_FILE}",
                    t.command + bound * steps)
        session.run(f"pkill -KILL -f guest_scripts/ ; umount -l {GUEST_TMP}/mnt/* 2>/dev/null; true", t.command)
        session.run(f"echo 0 >{TRACEFS}/tracing_on; cat {TRACEFS}/trace >{g}/trace.txt;"
                    f" cat {TRACEFS}/per_cpu/cpu*/stats >{g}/trace-stats.txt; cat {TRACEFS}/kprobe_profile >{g}/kprobe-profile.txt", t.command)
