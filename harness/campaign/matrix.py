"""The CI matrix as data: kernels x flavours x scenarios -> cells, and `--shard I/N` over them.

A cell is one `failover-harness run`: its command line is all a CI runner needs. The order of
the cells is fixed by the order of the axes as given, so that every runner of a fleet, each
computing the matrix on its own, agrees on it; `shard` is then a pure function of that list,
and every cell lands in exactly one shard.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..kernel.kconfig import FLAVORS
from ..request import RunRequest
from ..scenarios import SCENARIOS, Scenario

# What a patch submission is tested with: every failover path, and not the negative control
# (which proves the harness, not the kernel).
DEFAULT_SCENARIOS = ("crash", "close-fds", "combined", "crash-points", "adversarial", "supervised", "cache-death")

# Estimates in seconds, used only to balance shards; measured on 2 cores under TCG (the worst
# case a CI runner without KVM gives): a plain build from scratch about 9 minutes, a run about
# 2 minutes of boot and set-up plus about 6 s per fault; the debug flavour 3x for both.
BUILD_COST_S = 600.0
RUN_OVERHEAD_S = 120.0
FAULT_COST_S = 6.0
FLAVOR_FACTOR = {"plain": 1.0, "debug": 3.0}

KERNEL_FIELDS = ("tree", "package", "ref")  # a cell's command line always names its kernel, default or not


@dataclass(frozen=True)
class Kernel:
    """Where a kernel comes from, as `failover-harness run` options.

    Spelled on the command line as `linux-source-6.12` (a Debian package), `tree:PATH`, or
    `tree:PATH@REF` (a commit of the repository at PATH)."""

    spec: str

    @property
    def source(self) -> dict[str, Any]:
        """The RunRequest fields that name this kernel."""
        if self.spec.startswith("tree:"):
            path, _, ref = self.spec[len("tree:"):].partition("@")
            return {"tree": Path(path), "ref": ref or None}
        return {"package": self.spec.removeprefix("package:")}

    def argv(self) -> list[str]:
        return RunRequest(**self.source).to_argv("run", KERNEL_FIELDS)

    @property
    def label(self) -> str:
        """Short enough for a job name or a directory: the package, or the tree's last part and ref."""
        if self.spec.startswith("tree:"):
            path, _, ref = self.spec[len("tree:"):].partition("@")
            return f"{Path(path).name or path}@{ref}" if ref else Path(path).name or path
        return self.spec.removeprefix("package:")


def parse_kernel(spec: str) -> Kernel:
    if spec.startswith("tree:"):
        path, at, ref = spec[len("tree:"):].partition("@")
        if not path or (at and not ref):
            raise InputError(f"kernel {spec!r}: expected tree:PATH or tree:PATH@REF")
    elif not re.fullmatch(r"(package:)?[a-z0-9][a-z0-9.+-]+", spec):
        raise InputError(f"kernel {spec!r}: expected a Debian package name, tree:PATH or tree:PATH@REF")
    return Kernel(spec)


@dataclass(frozen=True)
class Cell:
    kernel: Kernel
    flavor: str
    scenario: str

    @property
    def label(self) -> str:
        return f"{self.kernel.label}/{self.flavor}/{self.scenario}"

    @property
    def build_key(self) -> tuple[str, str]:
        """Cells with the same key share one kernel build."""
        return (self.kernel.spec, self.flavor)

    def argv(self, extra: tuple[str, ...] = ()) -> list[str]:
        """`failover-harness` arguments that run this cell; `extra` goes last (seed, kills, series)."""
        req = RunRequest(scenario=self.scenario, flavor=self.flavor, **self.kernel.source)
        return ["run", *req.to_argv("run", ("scenario", "flavor", *KERNEL_FIELDS)), *extra]

    def run_cost_s(self) -> float:
        s: Scenario = SCENARIOS[self.scenario]
        faults = s.kills + s.fd_closes + s.crash_point_repeats * 7
        return (RUN_OVERHEAD_S + FAULT_COST_S * faults) * FLAVOR_FACTOR.get(self.flavor, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel.spec, "flavor": self.flavor, "scenario": self.scenario, "label": self.label}


def cells(kernels: list[str], flavors: list[str], scenarios: list[str]) -> list[Cell]:
    """Kernel-major, then flavour, then scenario, each axis in the order given (duplicates dropped):
    neighbours share a build."""
    if not kernels or not flavors or not scenarios:
        raise InputError("the matrix needs at least one kernel, one flavour and one scenario")
    if bad := [f for f in flavors if f not in FLAVORS]:
        raise InputError(f"unknown flavour {bad[0]!r} (one of {', '.join(FLAVORS)})")
    if bad := [s for s in scenarios if s not in SCENARIOS]:
        raise InputError(f"unknown scenario {bad[0]!r} (one of {', '.join(SCENARIOS)})")
    ks = [parse_kernel(k) for k in dict.fromkeys(kernels)]
    return [Cell(k, f, s) for k in ks for f in dict.fromkeys(flavors) for s in dict.fromkeys(scenarios)]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N`, 1-based: the I-th of N shards."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise InputError(f"--shard {text!r}: expected I/N, e.g. 2/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {text}: I must be 1..N and N at least 1")
    return i, n


def assign(all_cells: list[Cell], n: int) -> list[list[Cell]]:
    """The cells split into `n` shards of about equal estimated time, as a list of shards.

    Greedy, longest first (LPT): each cell goes to the shard that would finish it earliest,
    counting a build for a shard that has not got that cell's kernel and flavour yet, so that
    the cells of one build tend to stay together. Ties go to the lowest shard, and cells of
    equal cost keep the matrix order: every runner computes the same split."""
    if n < 1:
        raise InputError(f"cannot split the matrix into {n} shards")
    load = [0.0] * n
    builds: list[set[tuple[str, str]]] = [set() for _ in range(n)]
    shards: list[list[int]] = [[] for _ in range(n)]
    order = sorted(range(len(all_cells)), key=lambda i: (-all_cells[i].run_cost_s(), i))
    for i in order:
        cell = all_cells[i]

        def finish(s: int) -> float:
            build = 0.0 if cell.build_key in builds[s] else BUILD_COST_S * FLAVOR_FACTOR.get(cell.flavor, 1.0)
            return load[s] + build + cell.run_cost_s()
        best = min(range(n), key=lambda s: (finish(s), s))
        load[best] = finish(best)
        builds[best].add(cell.build_key)
        shards[best].append(i)
    # within a shard, matrix order: cells of one build run one after another
    return [[all_cells[i] for i in sorted(s)] for s in shards]


def shard(all_cells: list[Cell], i: int, n: int) -> list[Cell]:
    """The cells of shard `i` (1-based) of `n`."""
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {i}/{n}: I must be 1..N and N at least 1")
    return assign(all_cells, n)[i - 1]


def estimated_s(shard_cells: list[Cell]) -> float:
    """What a shard is expected to take, builds included (for logs and for sizing N)."""
    builds = {c.build_key: BUILD_COST_S * FLAVOR_FACTOR.get(c.flavor, 1.0) for c in shard_cells}
    return sum(builds.values()) + sum(c.run_cost_s() for c in shard_cells)
