"""The run options as data: one table from which a command's options are added to its parser,
read back into a RunRequest's fields, and spelled again as the flags that ask for a request.

Every command line that carries a run (the `run` a person types, the `_bisect-step` that
`git bisect run` runs, the matrix's and the submission's child runs, the command a report
says reproduces a run) is made from this table, so that none of them can drift from the parser.
The defaults are not here: they are RunRequest's, passed in by its methods (this module does
not import the request, which imports it).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Literal, Mapping

from .guest.session import Transport
from .kernel.kconfig import FLAVORS
from .daemons import adapter as daemon_adapter
from .scenarios import SCENARIOS

ACCELS = ("auto", "kvm", "tcg")
DAEMON_RESTARTS = ("standby", "cold")  # RunRequest.daemon_restart
TRANSPORTS = tuple(t.value for t in Transport)

# Which commands take an option. `mutate` runs its own mutants, not a scenario of the user's;
# `_bisect-step` is always told its tree (the bisection's scratch worktree), never a package;
# `submit` picks the kernel, flavour, seed and kills of its child runs, and their cache (its
# scenarios are a list: its own option); `matrix` takes its cells' kernels, flavours and scenarios
# as axes of its own, and only the transport from here.
SCENARIO_COMMANDS = frozenset({"run", "bisect", "_bisect-step"})
SOURCE_COMMANDS = frozenset({"run", "bisect", "mutate", "submit"})
MACHINE_COMMANDS = frozenset({"run", "bisect", "_bisect-step", "mutate"})
# `bench` measures the default kernel's runs on this machine: the source, the seed and where it
# runs; its scenarios, faults and stages are its own, its --output is where bench.json goes
BENCH_COMMANDS = frozenset({"bench"})


def one_or_more(text: str) -> int:
    """An int of 1 or more, refused while the command line is parsed. For --kills: a scenario
    whose kills are its evidence (crash, combined, adversarial, supervised, cache-death) run
    without them can only be INCONCLUSIVE, and the negative control (no-failover) has nothing
    to FAIL; the scenarios without kills of their own (close-fds, crash-points) have 0 when it
    is left out, so no scenario needs it said. For --jobs: `make -j0` is no build."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


@dataclass(frozen=True)
class Option:
    field: str  # the RunRequest field; the flag is its name with dashes
    help: str  # "%(default)s" is RunRequest's default
    commands: frozenset[str]
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    # What a reproducing command line says: "always" the value (what the run tests, stated even
    # where it is today's default, which may change), "changed" only a value other than the
    # default, "never" (this machine's: where output and builds go, how many cores make gets).
    reproduce: Literal["always", "changed", "never"] = "changed"
    group: str | None = None  # the options of a group exclude each other: the first one with a value is spelled
    required_in: frozenset[str] = frozenset()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


# In the order command lines spell them: what is tested (scenario, flavour, kernel), how hard,
# then where it runs.
OPTIONS: tuple[Option, ...] = (
    Option("scenario", f"one of: {', '.join(SCENARIOS)} (default %(default)s)", SCENARIO_COMMANDS, reproduce="always"),
    Option("flavor", "debug adds KASAN, lockdep and the lockup detectors (default %(default)s)",
           SCENARIO_COMMANDS | {"submit"}, choices=tuple(FLAVORS)),
    Option("tree", "a kernel source tree (a git repository for --ref, --series, bisect)",
           SOURCE_COMMANDS | BENCH_COMMANDS | {"_bisect-step"}, type=Path, group="source",
           required_in=frozenset({"_bisect-step"})),
    Option("package", "Debian source package (default %(default)s)", SOURCE_COMMANDS | BENCH_COMMANDS, group="source"),
    Option("ref", "the commit to build (of --tree's repository, or of the package's)", frozenset({"run"})),
    Option("series", "an mbox or a directory of patches, applied on top with git am", frozenset({"run"}), type=Path),
    Option("kills", "SIGKILLs to send (default: the scenario's, 50 for crash; submit: to each scenario that has "
           "kills of its own)", SCENARIO_COMMANDS | {"submit"}, type=one_or_more),
    Option("fd_closes", "anon fds the daemon closes (default: the scenario's, 40 for close-fds)", SCENARIO_COMMANDS,
           type=int),
    Option("readers", "reader processes (default: the scenario's)", SCENARIO_COMMANDS, type=int),
    Option("daemon_threads", "threads serving /dev/cachefiles (default: the scenario's)", SCENARIO_COMMANDS, type=int),
    Option("seed", "dataset and kill timing (default %(default)s)", MACHINE_COMMANDS | BENCH_COMMANDS | {"submit"},
           type=int, reproduce="always"),
    Option("daemon", f"the on-demand daemon: a built-in adapter ({', '.join(daemon_adapter.built_in())}) or an adapter file's path "
           "(default %(default)s; README: Daemons)", frozenset({"run"})),
    Option("after_fail", "once the kernel failed a probe at its protocol point, stop the faults (the run is FAIL "
           "whatever comes) or continue with every one (default %(default)s)", SCENARIO_COMMANDS,
           choices=("stop", "continue")),
    Option("read_delay_ms", "the daemon's delay per READ, keeps requests in flight (default %(default)s)",
           MACHINE_COMMANDS, type=int, reproduce="always"),
    # how fast a death is recovered from sets the pace of the faults: said even at its default
    Option("daemon_restart", "standby: our keeper starts the next daemon incarnation's process ahead of the death "
           "and activates it at the death (a hand-over and a restore); cold: it starts each one at the death, a "
           "Python start (default %(default)s)", MACHINE_COMMANDS, choices=DAEMON_RESTARTS, reproduce="always"),
    Option("accel", "auto probes whether KVM really boots a guest (default %(default)s)",
           MACHINE_COMMANDS | BENCH_COMMANDS, choices=ACCELS),
    # how the run reaches the guest is part of what it tested: said even at its default
    Option("transport", "console: commands typed on the serial console (pexpect); ssh: over an sshd the guest "
           "starts from the host's binaries (paramiko), the console still logging (default %(default)s)",
           MACHINE_COMMANDS | BENCH_COMMANDS | {"submit", "matrix"}, choices=TRANSPORTS, reproduce="always"),
    Option("jobs", "make -j (default %(default)s)", MACHINE_COMMANDS | BENCH_COMMANDS, type=one_or_more,
           reproduce="never"),
    Option("output", "where run directories go (default %(default)s)", MACHINE_COMMANDS, type=Path,
           reproduce="never"),
    Option("cache", "downloads, sources, builds (default %(default)s)", MACHINE_COMMANDS | BENCH_COMMANDS | {"submit"},
           type=Path, reproduce="never"),
)
COMMANDS = frozenset().union(*(o.commands for o in OPTIONS))


def options_of(command: str) -> list[Option]:
    if command not in COMMANDS:
        raise ValueError(f"no run options for command {command!r}")
    return [o for o in OPTIONS if command in o.commands]


def add_arguments(p: argparse.ArgumentParser, command: str, defaults: Mapping[str, Any]) -> None:
    """`command`'s run options, each with its field as the destination."""
    mine = options_of(command)
    groups: dict[str, Any] = {}
    for o in mine:
        where: Any = p
        if o.group is not None and sum(x.group == o.group for x in mine) > 1:  # argparse: no group of one
            if o.group not in groups:
                groups[o.group] = p.add_mutually_exclusive_group()
            where = groups[o.group]
        kw: dict[str, Any] = {"dest": o.field, "type": o.type, "default": defaults[o.field], "help": o.help}
        if o.choices is not None:
            kw["choices"] = o.choices
        if command in o.required_in:
            kw["required"] = True
        where.add_argument(o.flag, **kw)


def values_of(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The fields `command`'s options set; a field it takes no option for keeps its default."""
    return {o.field: getattr(args, o.field) for o in options_of(command)}


def to_argv(values: Mapping[str, Any], defaults: Mapping[str, Any], command: str,
            fields: Collection[str] | None = None) -> list[str]:
    """The flags that give `command` these values: of `fields` each one that has a value (None
    cannot be spelled, and is every such option's default), or without `fields` what a
    reproducing command says (Option.reproduce)."""
    argv: list[str] = []
    claimed: set[str] = set()
    for o in options_of(command):
        value = values[o.field]
        if value is None or o.group in claimed:
            continue
        if o.group is not None:
            claimed.add(o.group)
        if fields is not None:
            spelled = o.field in fields
        else:
            spelled = o.reproduce == "always" or (o.reproduce == "changed" and value != defaults[o.field])
        if spelled:
            argv += [o.flag, str(value)]
    return argv
