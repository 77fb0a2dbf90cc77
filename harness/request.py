"""What the user asked for, as one frozen value, validated before any expensive work."""
from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from datetime import datetime
from pathlib import Path
from typing import Any, Collection

from . import run_options
from .daemons import adapter as daemon_adapter
from .daemons.adapter import DEFAULT_DAEMON
from .errors import InputError
from .kernel.kconfig import FLAVORS
from .kernel.source import DEFAULT_PACKAGE
from .run_options import ACCELS, DAEMON_RESTARTS, TRANSPORTS
from .scenarios import DEFAULT_SCENARIO, FAULT_FIELDS, SCENARIOS, Scenario, for_daemon

# The pause before each timed kill (s), by how a death is recovered from. A forked standby is
# serving again within about 0.1 s of a death (the ledger, crash seeds 1-3): 0.3-1 s gives about
# 60-90 kills a minute, over 90% of them in flight. A cold start takes seconds under TCG: at such
# a pace a held READ went from incarnation to incarnation, each killed before it got to it
# (a correct kernel FAILed by a 30 s stall), so it keeps 0.5-2 s.
KILL_PAUSE_S: dict[str, tuple[float, float]] = {"standby": (0.3, 1.0), "cold": (0.5, 2.0)}


def new_output_dir(output: Path, name: str) -> Path:
    """`<output>/<YYYYmmdd-HHMMSS>-<name>`, made now; `-2`, `-3`, ... after it when two runs,
    bisections or mutation runs start in the same second."""
    stamped = output.resolve() / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"
    candidate, n = stamped, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = stamped.with_name(f"{stamped.name}-{n}")


def default_cache() -> Path:
    env = os.environ.get("FAILOVER_HARNESS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "failover-harness"


@dataclass(frozen=True)
class RunRequest:
    scenario: str = DEFAULT_SCENARIO
    kills: int | None = None  # None: the scenario's own number
    fd_closes: int | None = None  # None: the scenario's own number
    seed: int = 1
    output: Path = Path("runs")
    tree: Path | None = None
    package: str = DEFAULT_PACKAGE
    ref: str | None = None  # a commit of the tree (or of the package's repository) to build
    series: Path | None = None  # an mbox or a directory of patches applied on top with `git am`
    readers: int | None = None  # None: the scenario's own number
    daemon_threads: int | None = None  # None: the scenario's own number
    daemon: str = DEFAULT_DAEMON  # a built-in adapter's name or an adapter file's path (harness/daemons)
    # how our keeper restarts our daemon (GuestConfig.standby): "standby", the next incarnation's
    # process started ahead of the death and activated at it; "cold", started at the death
    daemon_restart: str = "standby"
    read_delay_ms: int = 50
    # "stop": the faults stop at the first probe the kernel fails (the run is FAIL whatever comes;
    # it is judged whole on what ran); "continue": every fault is injected. A stall always stops them.
    after_fail: str = "stop"
    flavor: str = "plain"  # "debug": KASAN, lockdep and the lockup detectors (kconfigs/debug.config)
    # the pause before each timed kill; None: by how fast a death is recovered from (kill_pause)
    kill_interval_s: tuple[float, float] | None = None
    accel: str = "auto"
    transport: str = "console"  # guest.session.Transport: how the host drives the guest
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    cache: Path = field(default_factory=default_cache)

    def validate(self) -> "RunRequest":
        if self.scenario not in SCENARIOS:
            raise InputError(f"unknown scenario {self.scenario!r} (one of {', '.join(SCENARIOS)})")
        if self.kills is not None and self.kills < 1:  # as the parser refuses it (run_options.one_or_more)
            raise InputError(f"--kills must be 1 or more (got {self.kills})")
        if self.jobs < 1:
            raise InputError(f"--jobs must be 1 or more (got {self.jobs})")
        if self.fd_closes is not None and self.fd_closes < 0:
            raise InputError(f"--fd-closes must be 0 or more (got {self.fd_closes})")
        if self.readers is not None and not 1 <= self.readers <= 16:
            raise InputError(f"--readers must be 1..16 (got {self.readers})")
        if self.daemon_threads is not None and not 1 <= self.daemon_threads <= 16:
            raise InputError(f"--daemon-threads must be 1..16 (got {self.daemon_threads})")
        if self.read_delay_ms < 0:
            raise InputError(f"--read-delay-ms must be >= 0 (got {self.read_delay_ms})")
        lo, hi = self.kill_pause()
        if not 0 < lo <= hi:
            raise InputError(f"kill interval {lo}..{hi}s is not a range of positive seconds")
        if self.flavor not in FLAVORS:
            raise InputError(f"unknown flavor {self.flavor!r} (one of {', '.join(FLAVORS)})")
        if self.accel not in ACCELS:
            raise InputError(f"unknown accelerator {self.accel!r} (one of {', '.join(ACCELS)})")
        if self.transport not in TRANSPORTS:
            raise InputError(f"unknown transport {self.transport!r} (one of {', '.join(TRANSPORTS)})")
        if self.daemon_restart not in DAEMON_RESTARTS:
            raise InputError(f"unknown --daemon-restart {self.daemon_restart!r} (one of {', '.join(DAEMON_RESTARTS)})")
        adapter = self.adapter  # InputError for a bad one
        if self.daemon_restart != RunRequest.daemon_restart and not adapter.ours:
            raise InputError(f"--daemon-restart {self.daemon_restart} is how our keeper restarts our daemon; "
                             f"--daemon {adapter.name} restarts itself")
        if self.scenario in SCENARIOS and not self.faults_planned(self.plan):
            raise InputError(f"--daemon {adapter.name} takes none of scenario {self.scenario}'s faults "
                             f"(it takes {', '.join(sorted(adapter.faults))})")
        if self.series is not None and not self.series.exists():
            raise InputError(f"--series {self.series}: no such file or directory")
        for what, path in (("output", self.output), ("cache", self.cache)):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"{what} directory {path}: {e.strerror}") from e
            if not os.access(path, os.W_OK | os.X_OK):
                raise InputError(f"{what} directory {path}: not writable")
        return self

    @property
    def adapter(self) -> daemon_adapter.Adapter:
        return daemon_adapter.load(self.daemon)

    @property
    def plan(self) -> Scenario:
        """The scenario with this request's overrides, as the daemon runs it (the faults it takes)."""
        s = SCENARIOS[self.scenario].with_faults(self.kills, self.fd_closes)
        if self.readers is not None:
            s = replace(s, readers=self.readers)
        if self.daemon_threads is not None:
            s = replace(s, threads=self.daemon_threads)
        adapter = self.adapter
        return for_daemon(s, adapter.faults, adapter.ours, adapter.poll_sleepers)[0]

    @property
    def faults_left_out(self) -> tuple[str, ...]:
        """The scenario's faults the daemon does not take (the report says they did not run)."""
        adapter = self.adapter
        return for_daemon(SCENARIOS[self.scenario].with_faults(self.kills, self.fd_closes), adapter.faults, adapter.ours,
                          adapter.poll_sleepers)[1]

    @staticmethod
    def faults_planned(s: Scenario) -> bool:
        return any(getattr(s, count) for count, _ in FAULT_FIELDS.values())

    # -- the command line: the table of options is run_options.OPTIONS ----------------------------

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser, command: str) -> None:
        """The options of `command` (run, bisect, _bisect-step, mutate, submit) that make a request."""
        run_options.add_arguments(p, command, cls()._values())

    @classmethod
    def from_args(cls, args: argparse.Namespace, command: str) -> "RunRequest":
        """The request `command`'s parsed options ask for (not validated)."""
        return cls(**run_options.values_of(args, command))

    def to_argv(self, command: str = "run", fields: Collection[str] | None = None) -> list[str]:
        """The options that make `command` ask for this request: of `fields`, each one with a value;
        without `fields`, what reproduce() says (the run's own values, not this machine's)."""
        return run_options.to_argv(self._values(), type(self)()._values(), command, fields)

    def reproduce(self) -> str:
        """The command line that runs this request again."""
        return shlex.join(["failover-harness", "run", *self.to_argv()])

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    def kill_pause(self) -> tuple[float, float]:
        """The pause before each timed kill, drawn from this range: KILL_PAUSE_S by how our daemon
        restarts, the slower one for another daemon (its own restart, not measured at the faster)."""
        if self.kill_interval_s is not None:
            return self.kill_interval_s
        return KILL_PAUSE_S.get(self.daemon_restart if self.daemon == DEFAULT_DAEMON else "cold", KILL_PAUSE_S["cold"])

    def to_json(self) -> dict[str, Any]:
        # the pause the run used, not None: what it tested
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()} \
            | {"kill_interval_s": list(self.kill_pause())}
