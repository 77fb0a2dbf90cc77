"""`failover-harness bench`: what the harness costs on this machine, measured in one command.

    failover-harness bench [--short] [--edit] [--bisect] [--cold] [--vng-ratio] [--output DIR]
                           [--tree DIR | --package NAME] [--seed S] [--accel A] [--transport T]
                           [--jobs N] [--cache DIR]

The stages, in this order, each a function over a Seam (the runs, a checked-out tree, the
commands: the unit tests give a fake one that returns canned results.json dicts):

- crash: the default run (`crash`, its 50 kills; 3 with --short) on the build the cache holds
  (warm: `build_reused`): boot, boot to the first fault, kills per minute of fault loop and the
  share in flight (the kernel's ledger), recovery per death (the ledger's death to next answered
  request; the daemon's log where a run has no ledger);
- close-fds: anon fd closes per minute of fault loop (40 closes; 3 with --short);
- edit: a one-line edit of fs/cachefiles/ondemand.c (a comment after its SPDX line, as a
  one-patch series, `--series`), timed from the start of the run to its verdict, with the
  incremental build it cost; the crash stage's request;
- bisect: one bisection step as `git bisect run` runs it (campaign/bisect.py's run_step, in the
  tree the harness owns, on the tree's base commit): the full step, then a step on the same
  objects, which takes its verdict without a build;
- cold (--cold): a run with a fresh, temporary cache: the source stage (download, unpack,
  import, checkout) and the build from nothing; the cache is removed after;
- vng-ratio (--vng-ratio): the same tree built from nothing with our config (bzImage) and with
  virtme-ng's default config (`vng --kconfig`, then make as `vng --build` runs it), each in an
  O= directory of its own, no ccache: our build's time as a ratio of theirs.

`--short` (the test suite's): crash and close-fds only, 3 faults each; `--edit` and `--bisect`
add those stages back. bench.json (bench.schema.json beside this file) and bench.md go into
--output (and into the bench's own directory under it, with its runs); the table is printed.
Exit 0 when every stage that was asked for ran (a run INCONCLUSIVE for its few faults ran:
its figures are measured), 1 when a run FAILed, 125 when a run was untestable, 2 on bad input
(the stages after it are not run).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from .. import __version__, proc
from ..errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, EXIT_USAGE, HarnessError, InputError, worst
from ..judge import report
from ..judge.checks import Status
from ..judge.results import AnyResults, Results, is_judged
from ..request import RunRequest, new_output_dir
from . import bisect

BENCH_SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parent / "bench.schema.json"

SHORT_KILLS = 3
SHORT_CLOSES = 3
COLD_KILLS = 3  # the cold stage measures the source stage and the build: the run after them is short
EDITED_FILE = "fs/cachefiles/ondemand.c"
SPDX_LINE = "// SPDX-License-Identifier: GPL-2.0-or-later"  # the file's first line
SECOND_LINE = "#include <linux/anon_inodes.h>"  # its second
CONFIGURE_TIMEOUT_S = 900
VNG_BUILD_TIMEOUT_S = 6 * 3600  # a distribution-sized defconfig on 2 cores, modules and all
VNG_LOCALVERSION = "LOCALVERSION=-virtme"  # what `vng --build` gives make

STAGES = ("crash", "close-fds", "edit", "bisect", "cold", "vng-ratio")
TITLES = {
    "crash": "crash, warm",
    "close-fds": "close-fds",
    "edit": "one-line edit to verdict",
    "bisect": "bisection step",
    "cold": "cold build",
    "vng-ratio": "build vs vng's config",
}
# every stage's figures, in bench.json whether it ran or not (null when not measured)
FIGURES: dict[str, tuple[str, ...]] = {
    "crash": ("build_s", "build_reused", "source_s", "boot_s", "boot_to_first_fault_s", "fault_loop_s", "kills",
              "kills_in_flight", "in_flight_share", "kills_per_minute", "recovery_n", "recovery_p50_s",
              "recovery_p90_s", "recovery_max_s", "recovery_from"),
    "close-fds": ("build_s", "build_reused", "boot_s", "fault_loop_s", "fd_closes", "reopens", "closes_per_minute"),
    "edit": ("edit_to_verdict_s", "build_s", "build_reused", "source_s", "boot_s", "fault_loop_s", "patch_status"),
    "bisect": ("step_s", "step_build_s", "step_result", "unchanged_step_s", "unchanged_from", "unchanged_result"),
    "cold": ("build_s", "build_reused", "source_s", "ccache"),
    "vng-ratio": ("ours_config_s", "ours_build_s", "theirs_config_s", "theirs_build_s", "ratio", "ours_symbols",
                  "theirs_symbols"),
}
# a run's verdict as the bench's exit code: a run that judged the kernel ran, whatever it lacked
RUN_EXIT = {Status.PASS: EXIT_PASS, Status.INCONCLUSIVE: EXIT_PASS, Status.FAIL: EXIT_FAIL,
            Status.ERROR: EXIT_USAGE, Status.UNTESTABLE: EXIT_UNTESTABLE}


# -- the seam ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ran:
    """One run: its directory, its results.json (the error shape when it ended without a verdict
    on the kernel) and the wall time from its start to its verdict."""
    run_dir: Path
    results: AnyResults
    seconds: float


class Seam(Protocol):
    """What the stages need from the machine; the unit tests give a fake."""

    def run(self, req: RunRequest) -> Ran:
        """A run of `req`, judged (execute_judged: ERROR and UNTESTABLE come back as results)."""
        ...

    def checked_out(self, req: RunRequest) -> contextlib.AbstractContextManager[Path]:
        """The tree the harness owns for `req`'s source (the package's, or --tree's scratch
        worktree) at its base commit, held (locked) while the block runs."""
        ...

    def command(self, argv: Sequence[str], *, timeout_s: float, log: Path, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> proc.Completed:
        ...

    def vng(self) -> str:
        """virtme-ng's vng; InputError when it is not there."""
        ...


class Host:
    """The real machine: the runner, the source module's trees, proc.run."""

    def run(self, req: RunRequest) -> Ran:
        from ..runner import Run  # the runner imports most of the package: only when really running
        started = time.monotonic()
        run = Run(req)
        print(f"failover-harness: bench run directory {run.dir}", flush=True)
        results = run.execute_judged()
        return Ran(run.dir, results, round(time.monotonic() - started, 1))

    @contextlib.contextmanager
    def checked_out(self, req: RunRequest) -> Iterator[Path]:
        from ..kernel import git, source
        wt = source.work_tree(req.cache, req.package, req.tree)
        with source.locked(wt.lock, str(wt.path)):
            git.checkout(wt.path, wt.resolve(req.ref))
            yield wt.path

    def command(self, argv: Sequence[str], *, timeout_s: float, log: Path, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> proc.Completed:
        return proc.run(argv, timeout_s=timeout_s, log=log, cwd=cwd, env=env)

    def vng(self) -> str:
        from ..guest import vm
        return vm.vng_path()


# -- what was asked -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchOptions:
    run: RunRequest  # the source, seed, accel, transport, jobs and cache of every run
    output: Path  # bench.json and bench.md; the bench's own directory under it
    short: bool = False
    edit: bool = False  # the edit stage also with --short
    bisect: bool = False  # the bisection stage also with --short
    cold: bool = False
    vng_ratio: bool = False
    command_line: tuple[str, ...] = ()


def skipped_stages(opts: BenchOptions) -> dict[str, str | None]:
    """Each stage: None when it runs, else why not."""
    return {
        "crash": None,
        "close-fds": None,
        "edit": "--short (--edit runs it)" if opts.short and not opts.edit else None,
        "bisect": "--short (--bisect runs it)" if opts.short and not opts.bisect else None,
        "cold": None if opts.cold else "not asked (--cold: a download and a build from nothing, ~10 min on 2 cores)",
        "vng-ratio": "not asked (--vng-ratio: two builds from nothing)" if not opts.vng_ratio else None,
    }


def requests(base: RunRequest, short: bool) -> dict[str, RunRequest]:
    """The runs of the run stages: crash (also the edit's and the bisection step's), close-fds,
    cold (its cache is the stage's own). The rest of each is `base`: plain, our daemon."""
    crash = replace(base, scenario="crash", kills=SHORT_KILLS if short else None, fd_closes=None, ref=None,
                    series=None, flavor="plain")
    return {"crash": crash,
            "close-fds": replace(crash, scenario="close-fds", kills=None, fd_closes=SHORT_CLOSES if short else None),
            "cold": replace(crash, kills=COLD_KILLS)}


# -- a stage's record ------------------------------------------------------------------------------------

@dataclass
class Stage:
    name: str
    figures: dict[str, Any]
    ran: bool = False
    skipped: str | None = None  # why it did not run
    problem: str | None = None  # why a stage that ran measured less than its figures (a run untestable)
    seconds: float | None = None
    run_dir: str | None = None
    verdict: str | None = None
    accel: str | None = None
    exit_code: int | None = None
    results: AnyResults | None = field(default=None, repr=False)  # the (first) run's: not in bench.json

    @classmethod
    def not_run(cls, name: str, why: str) -> "Stage":
        return cls(name, _blank(name), skipped=why)

    @classmethod
    def of_run(cls, name: str, ran: Ran) -> "Stage":
        r = ran.results
        judged = _judged(r)
        return cls(name, _blank(name), ran=True, seconds=round(ran.seconds, 1),
                   run_dir=str(ran.run_dir), verdict=r["verdict"], accel=judged["accel"] if judged else None,
                   exit_code=RUN_EXIT[Status(r["verdict"])],
                   problem=None if judged else _first_line(r["reasons"]), results=r)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": TITLES[self.name], "ran": self.ran, "skipped": self.skipped,
                "problem": self.problem, "seconds": self.seconds, "run_dir": self.run_dir, "verdict": self.verdict,
                "accel": self.accel, "exit_code": self.exit_code, "figures": dict(self.figures)}


def _judged(results: AnyResults) -> Results | None:
    return results if is_judged(results) else None


def _first_line(reasons: Sequence[str]) -> str:
    return reasons[0].splitlines()[0] if reasons and reasons[0] else "no reason given"


def _rate(count: int | None, seconds: float | None) -> float | None:
    return round(count / seconds * 60, 1) if count is not None and seconds else None


def recovery(results: Results) -> dict[str, Any]:
    """Recovery per death: the kernel ledger's time from each death to the next answered request
    (ledger.per_death.next_answer_s); where the run has no ledger, the daemon's log's
    (deaths[].recovery_s: death to the next incarnation's first answer)."""
    ledger: Mapping[str, Any] = results.get("ledger") or {}
    per_death = (ledger.get("per_death") or {}).get("next_answer_s")
    source: str | None
    if per_death and per_death.get("n"):
        s, source = dict(per_death), "kernel ledger"
    else:
        s = dict(report.spread([d["recovery_s"] for d in results.get("deaths", []) if d.get("recovery_s") is not None]))
        source = "daemon log" if s["n"] else None
    return {"recovery_n": s["n"], "recovery_p50_s": s["p50"], "recovery_p90_s": s["p90"],
            "recovery_max_s": s["max"], "recovery_from": source}


def _blank(name: str) -> dict[str, Any]:
    return {k: None for k in FIGURES[name]}


def _timing(results: AnyResults, *keys: str) -> dict[str, Any]:
    t = results.get("timing") or {}
    return {k: t.get(k) for k in keys}


def crash_figures(results: AnyResults) -> dict[str, Any]:
    figures = _blank("crash")
    figures.update(_timing(results, "build_s", "build_reused", "source_s", "boot_s", "boot_to_first_fault_s",
                           "fault_loop_s"))
    r = _judged(results)
    if r is not None:
        figures.update(kills=r["kills"], kills_in_flight=r["kills_in_flight"], in_flight_share=r["in_flight_share"],
                       kills_per_minute=r["kills_per_minute"], **recovery(r))
    return figures


def close_fds_figures(results: AnyResults) -> dict[str, Any]:
    """Closes per minute of fault loop: the anon fds the daemon closed (its log, evidence.fd_closes)."""
    figures = _blank("close-fds")
    figures.update(_timing(results, "build_s", "build_reused", "boot_s", "fault_loop_s"))
    r = _judged(results)
    if r is not None:
        closes = r["evidence"]["fd_closes"]
        figures.update(fd_closes=closes, reopens=r["evidence"]["reopens"],
                       closes_per_minute=_rate(closes, figures["fault_loop_s"]))
    return figures


def edit_figures(ran: Ran) -> dict[str, Any]:
    figures = _blank("edit")
    figures.update(_timing(ran.results, "build_s", "build_reused", "source_s", "boot_s", "fault_loop_s"))
    patches = (ran.results.get("provenance") or {}).get("patches") or []
    figures.update(edit_to_verdict_s=round(ran.seconds, 1), patch_status=patches[0]["status"] if patches else None)
    return figures


# -- the stages -----------------------------------------------------------------------------------------

def crash_stage(seam: Seam, req: RunRequest) -> Stage:
    ran = seam.run(req)
    stage = Stage.of_run("crash", ran)
    stage.figures = crash_figures(ran.results)
    return stage


def close_fds_stage(seam: Seam, req: RunRequest) -> Stage:
    ran = seam.run(req)
    stage = Stage.of_run("close-fds", ran)
    stage.figures = close_fds_figures(ran.results)
    return stage


def edit_mbox(stamp: str) -> str:
    """A one-patch series adding one comment line after ondemand.c's SPDX line. `stamp` makes the
    commit new (a build dir stamped with an earlier bench's edit would otherwise be reused); the
    comment leaves the object as it was, so a warm ccache may serve the compile (never the link)."""
    comment = f"/* failover-harness bench {stamp}: a one-line edit, timed to a verdict */"
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: failover-harness bench <bench@failover-harness.invalid>\n"
        "Date: Thu, 3 Dec 2026 00:00:00 +0000\n"
        f"Subject: [PATCH] cachefiles: ondemand: a comment (bench {stamp})\n"
        f"Message-Id: <bench-{stamp}@failover-harness.invalid>\n"
        "\n"
        f"One line added to {EDITED_FILE}: what `failover-harness bench` times\n"
        "from the edit to a verdict (an incremental build, a boot, the run).\n"
        "---\n"
        f" {EDITED_FILE} | 1 +\n"
        " 1 file changed, 1 insertion(+)\n"
        "\n"
        f"diff --git a/{EDITED_FILE} b/{EDITED_FILE}\n"
        f"--- a/{EDITED_FILE}\n"
        f"+++ b/{EDITED_FILE}\n"
        "@@ -1,2 +1,3 @@\n"
        f" {SPDX_LINE}\n"
        f"+{comment}\n"
        f" {SECOND_LINE}\n"
        "-- \n"
        "failover-harness\n"
        "\n"
    )


def edit_stage(seam: Seam, req: RunRequest, work: Path, stamp: str) -> Stage:
    mbox = work / "edit" / "one-line-edit.mbox"
    mbox.parent.mkdir(parents=True, exist_ok=True)
    mbox.write_text(edit_mbox(stamp))
    ran = seam.run(replace(req, series=mbox))
    stage = Stage.of_run("edit", ran)
    stage.figures = edit_figures(ran)
    return stage


def bisect_stage(seam: Seam, req: RunRequest, work: Path) -> Stage:
    """A step as `git bisect run` runs it (its run request, its tree), on the base commit: the full
    step (phase check-good: always run), then a bisect-phase step on the same commit, which takes
    the first one's verdict without a build (the same fingerprint) when that one decided."""
    steps_log = work / "bisect" / "steps.jsonl"
    steps_log.parent.mkdir(parents=True, exist_ok=True)
    runs: list[Ran] = []

    def runner(r: RunRequest) -> tuple[Path, AnyResults]:
        runs.append(seam.run(r))
        return runs[-1].run_dir, runs[-1].results

    with seam.checked_out(req) as tree:
        step_req = replace(req, tree=tree, package=RunRequest.package, ref=None, series=None)
        full = bisect.run_step(step_req, 1, "check-good", steps_log, runner=runner)
        unchanged = (bisect.run_step(step_req, 1, "bisect", steps_log, runner=runner)
                     if full.result in ("good", "bad") else None)
    stage = Stage.of_run("bisect", runs[0]) if runs else Stage("bisect", _blank("bisect"), ran=True)
    stage.seconds = round(full.seconds + (unchanged.seconds if unchanged else 0.0), 1)
    stage.figures.update(step_s=full.seconds, step_build_s=full.runs[0].build_s if full.runs else None,
                         step_result=full.result)
    if unchanged is not None:
        stage.figures.update(unchanged_step_s=unchanged.seconds, unchanged_from=unchanged.reused_from,
                             unchanged_result=unchanged.result)
        if unchanged.reused_from is None:  # it ran: the fingerprints differed, which they cannot on one commit
            stage.problem = "the unchanged step was built and run: its fingerprint differed from the full step's"
    elif stage.problem is None:
        stage.problem = f"the full step was a {full.result} ({full.state}): no verdict for an unchanged step to take"
    return stage


def ccache_note(env: Mapping[str, str], have_ccache: bool) -> str:
    """What the cold build owed to ccache: nothing unless the user named its directory
    (build.use_ccache)."""
    if not env.get("CCACHE_DIR"):
        return "none (CCACHE_DIR not set: builds do not go through ccache)"
    if not have_ccache:
        return "none (CCACHE_DIR set, ccache not installed)"
    return f"CCACHE_DIR={env['CCACHE_DIR']} from the environment: not fresh, may serve the build"


def cold_stage(seam: Seam, req: RunRequest, work: Path, env: Mapping[str, str] = os.environ,
               have_ccache: bool | None = None) -> Stage:
    """A run with a cache of its own, made now and removed after: the package downloaded, unpacked
    and imported, the kernel built from nothing (through ccache only if CCACHE_DIR is set, and then
    from that cache: ccache_note says so)."""
    cache = work / "cold-cache"
    cache.mkdir(parents=True)
    try:
        ran = seam.run(replace(req, cache=cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    stage = Stage.of_run("cold", ran)
    stage.figures.update(_timing(ran.results, "build_s", "build_reused", "source_s"))
    stage.figures["ccache"] = ccache_note(env, shutil.which("ccache") is not None if have_ccache is None
                                          else have_ccache)
    return stage


def make_argv(tree: Path, build_dir: Path, jobs: int, *targets: str) -> list[str]:
    """make out of tree with no ccache: the two builds the ratio compares are made alike."""
    return ["make", "-C", str(tree), f"O={build_dir}", f"-j{jobs}", *targets]


def vng_argvs(vng: str, tree: Path, ours: Path, theirs: Path, jobs: int) -> list[tuple[str, list[str], Path | None]]:
    """(figure, argv, cwd) of the vng-ratio stage, in order: our .config (copied in beforehand)
    brought to this tree (olddefconfig) and our bzImage; virtme-ng's default config, made by
    `vng --kconfig` in the source tree with O= (virtme-configkernel: defconfig plus virtme's
    options and ~/.config/virtme-ng/kernel.config), and make as `vng --build` runs it (every
    default target, modules included, LOCALVERSION=-virtme)."""
    return [("ours_config_s", make_argv(tree, ours, jobs, "olddefconfig"), None),
            ("ours_build_s", make_argv(tree, ours, jobs, "bzImage"), None),
            # --verbose: its log shows the commands it ran, and make's output
            ("theirs_config_s", [vng, "--kconfig", "--verbose", f"O={theirs}"], tree),
            ("theirs_build_s", make_argv(tree, theirs, jobs, VNG_LOCALVERSION), None)]


def symbols_set(config: Path) -> int | None:
    """CONFIG_ symbols a .config sets (=y, =m or a value): how big each config is."""
    try:
        text = config.read_text()
    except OSError:
        return None
    return sum(1 for line in text.splitlines() if line.startswith("CONFIG_"))


def vng_ratio_stage(seam: Seam, req: RunRequest, work: Path, our_config: Path | None) -> Stage:
    stage = Stage("vng-ratio", _blank("vng-ratio"), ran=True)
    if our_config is None or not our_config.is_file():
        stage.problem = "no .config of ours to build: the crash stage built no kernel"
        stage.exit_code = EXIT_UNTESTABLE
        return stage
    vng = seam.vng()
    from ..guest import vm  # vng runs virtme-configkernel from PATH: the venv's first, as for a run
    d = work / "vng-ratio"
    ours, theirs = d / "ours-build", d / "theirs-build"
    if shlex.quote(str(theirs)) != str(theirs):  # virtme-configkernel quotes O= for a shell it never runs
        raise InputError(f"{theirs}: vng --kconfig O= needs a path without spaces or shell characters (--output)")
    ours.mkdir(parents=True)
    started = time.monotonic()
    try:
        with seam.checked_out(req) as tree:
            shutil.copyfile(our_config, ours / ".config")
            for figure, argv, cwd in vng_argvs(vng, tree, ours, theirs, req.jobs):
                timeout = CONFIGURE_TIMEOUT_S if figure.endswith("config_s") else VNG_BUILD_TIMEOUT_S
                done = seam.command(argv, timeout_s=timeout, log=d / f"{figure.removesuffix('_s')}.log", cwd=cwd,
                                    env=vm.vng_env() if argv[0] == vng else None)
                if not done.ok:
                    why = f"timed out after {timeout:.0f}s" if done.timed_out else f"exit {done.returncode}"
                    stage.problem = f"{shlex.join(argv)}: {why} (log: {d / (figure.removesuffix('_s') + '.log')})"
                    stage.exit_code = EXIT_UNTESTABLE
                    break
                stage.figures[figure] = round(done.seconds, 1)
            stage.figures.update(ours_symbols=symbols_set(ours / ".config"),
                                 theirs_symbols=symbols_set(theirs / ".config"))
    finally:
        shutil.rmtree(ours, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)
    stage.seconds = round(time.monotonic() - started, 1)
    ours_s, theirs_s = stage.figures["ours_build_s"], stage.figures["theirs_build_s"]
    if ours_s is not None and theirs_s:
        stage.figures["ratio"] = round(ours_s / theirs_s, 3)
    if stage.exit_code is None:
        stage.exit_code = EXIT_PASS
    return stage


# -- the machine and the whole -------------------------------------------------------------------------

def machine(accel: str | None, jobs: int, cpuinfo: Path = Path("/proc/cpuinfo"),
            meminfo: Path = Path("/proc/meminfo"), now: datetime | None = None) -> dict[str, Any]:
    """Where the figures come from: the CPU model and count (/proc/cpuinfo), memory (/proc/meminfo),
    the kernel, Python, the accelerator the runs used, make's -j, the date (UTC)."""
    model, cpus = None, 0
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "processor":
                cpus += 1
            elif key.strip() == "model name" and model is None:
                model = value.strip()
    except OSError:
        pass
    memory = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu_model": model or platform.processor() or None, "cpus": cpus or os.cpu_count(),
            "memory_mib": memory, "kernel": platform.release(), "python": platform.python_version(),
            "accel": accel, "jobs": jobs,
            "date": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")}


def our_config(crash: Stage) -> Path | None:
    """The .config our runs built with (the crash run's build directory's), if it built one."""
    build_dir = (crash.results.get("kernel") or {}).get("build_dir") if crash.results else None
    return Path(build_dir) / ".config" if build_dir else None


def bench(opts: BenchOptions, seam: Seam, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every stage asked for, in order; bench.json and bench.md written (also when a run was
    untestable); the stages after one whose input was refused are not run."""
    started = time.monotonic()
    if opts.vng_ratio:
        seam.vng()  # a missing vng is bad input: said now, not after the other stages' hour
    work = new_output_dir(opts.output, "bench")
    print(f"failover-harness: bench directory {work}", flush=True)
    base = replace(opts.run, output=work / "runs")
    reqs = requests(base, opts.short)
    stages: dict[str, Stage] = {}
    stop: str | None = None

    def accel() -> str:
        return next((s.accel for s in stages.values() if s.accel), base.accel)

    run: dict[str, Callable[[], Stage]] = {
        "crash": lambda: crash_stage(seam, reqs["crash"]),
        "close-fds": lambda: close_fds_stage(seam, reqs["close-fds"]),
        "edit": lambda: edit_stage(seam, reqs["crash"], work, work.name),  # the bench's own: a new commit
        "bisect": lambda: bisect_stage(seam, reqs["crash"], work),
        # the accelerator the runs found: a fresh cache would probe it again, with a boot
        "cold": lambda: cold_stage(seam, replace(reqs["cold"], accel=accel()), work, env),
        "vng-ratio": lambda: vng_ratio_stage(seam, base, work, our_config(stages["crash"])),
    }
    for name, why in skipped_stages(opts).items():
        if why is not None or stop is not None:
            stages[name] = Stage.not_run(name, why or stop or "")
            continue
        print(f"failover-harness: bench stage {name}: {TITLES[name]}", flush=True)
        try:
            stages[name] = run[name]()
        except HarnessError as e:  # a tree, a lock, a tool: the stage did not get to its figures
            stages[name] = replace(Stage.not_run(name, ""), skipped=None, ran=True, problem=str(e).splitlines()[0],
                                   exit_code=e.exit_code)
        if stages[name].exit_code == EXIT_USAGE:
            stop = f"not run: the {name} stage's input was refused"
    codes = [s.exit_code for s in stages.values() if s.exit_code is not None]
    result: dict[str, Any] = {
        "schema_version": BENCH_SCHEMA_VERSION, "harness_version": __version__,
        "command_line": list(opts.command_line), "mode": "short" if opts.short else "full",
        "machine": machine(next((s.accel for s in stages.values() if s.accel), None), base.jobs),
        "request": base.to_json(), "dir": str(work),
        "stages": {name: stages[name].to_json() for name in STAGES},
        "exit_code": worst(codes) if codes else EXIT_PASS,
        "total_s": round(time.monotonic() - started, 1),
    }
    text = json.dumps(result, indent=1) + "\n"
    result = json.loads(text)  # what bench.json holds (tuples as lists)
    table = markdown(result)
    for where in (work, opts.output):
        (where / "bench.json").write_text(text)
        (where / "bench.md").write_text(table)
    return result


# -- the table ----------------------------------------------------------------------------------------

def _s(value: Any, unit: str = " s") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def rows(stage: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) lines of a stage that ran."""
    f = stage["figures"]
    name = stage["name"]
    out: list[tuple[str, str]] = [("verdict, wall time", f"{stage['verdict']}, {_s(stage['seconds'])}")
                                  if stage["verdict"] else ("wall time", _s(stage["seconds"]))]
    if name in ("crash", "close-fds", "edit", "cold"):
        reused = {True: ", reused (make did not run)", False: ", built now", None: ""}[f["build_reused"]]
        out.append(("build", _s(f["build_s"]) + reused))
    if name == "crash":
        share = f"{f['in_flight_share']:.0%}" if f["in_flight_share"] is not None else "-"
        out += [("source stage", _s(f["source_s"])), ("boot", _s(f["boot_s"])),
                ("boot to first fault", _s(f["boot_to_first_fault_s"])),
                ("kills per minute", f"{_s(f['kills_per_minute'], '')} ({_s(f['kills'], '')} kills in "
                                     f"{_s(f['fault_loop_s'])} of fault loop)"),
                ("kills in flight", f"{_s(f['kills_in_flight'], '')} of {_s(f['kills'], '')} ({share})"),
                (f"recovery per death ({f['recovery_from'] or '-'})",
                 f"p50 {_s(f['recovery_p50_s'])}, p90 {_s(f['recovery_p90_s'])}, max {_s(f['recovery_max_s'])} "
                 f"(n {_s(f['recovery_n'], '')})")]
    elif name == "close-fds":
        out += [("boot", _s(f["boot_s"])),
                ("closes per minute", f"{_s(f['closes_per_minute'], '')} ({_s(f['fd_closes'], '')} closes in "
                                      f"{_s(f['fault_loop_s'])} of fault loop; {_s(f['reopens'], '')} reopens)")]
    elif name == "edit":
        out += [("edit to verdict", f"{_s(f['edit_to_verdict_s'])} (patch {f['patch_status'] or '-'})")]
    elif name == "bisect":
        out += [("full step", f"{_s(f['step_s'])} (build {_s(f['step_build_s'])}; {f['step_result'] or '-'})"),
                ("step on unchanged objects", f"{_s(f['unchanged_step_s'])} ({f['unchanged_result'] or '-'}, "
                 + (f"taken from {f['unchanged_from'][:12]}, not built)" if f["unchanged_from"] else "not reused)"))]
    elif name == "cold":
        out += [("source stage (download, unpack, import)", _s(f["source_s"])), ("ccache", f["ccache"] or "-")]
    elif name == "vng-ratio":
        out += [("ours: bzImage of our config", f"{_s(f['ours_build_s'])} ({_s(f['ours_symbols'], '')} symbols)"),
                ("theirs: make of vng --kconfig's",
                 f"{_s(f['theirs_build_s'])} ({_s(f['theirs_symbols'], '')} symbols)"),
                ("ours / theirs", "-" if f["ratio"] is None else f"{f['ratio']:.2f}")]
    if stage["problem"]:
        out.append(("problem", stage["problem"]))
    return out


def markdown(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    memory = f"{m['memory_mib'] / 1024:.1f} GiB" if m["memory_mib"] else "? GiB"
    lines = [f"# failover-harness bench ({result['mode']})", "",
             f"{m['cpu_model'] or '?'} x {m['cpus']}, {memory}, Linux {m['kernel']}, Python {m['python']}, "
             f"accel {m['accel'] or '?'}, make -j{m['jobs']}, {m['date']}", "",
             "| stage | figure | value |", "| --- | --- | --- |"]
    for name in STAGES:
        stage = result["stages"][name]
        cells = rows(stage) if stage["ran"] else [("not run", stage["skipped"] or "-")]
        lines += [f"| {stage['title'] if i == 0 else ''} | {what} | {value.replace('|', '/')} |"
                  for i, (what, value) in enumerate(cells)]
    lines += ["", f"exit {result['exit_code']}, {result['total_s']:.0f} s; the runs: {result['dir']}"]
    return "\n".join(lines) + "\n"


# -- the command ------------------------------------------------------------------------------------------

def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    RunRequest.add_arguments(p, "bench")  # the source, seed, accel, transport, jobs and cache of every run
    p.add_argument("--short", action="store_true",
                   help=f"the test suite's: crash with {SHORT_KILLS} kills, close-fds with {SHORT_CLOSES} closes; "
                        "no edit or bisection stage unless asked, no cold build, no vng")
    p.add_argument("--edit", action="store_true", help="with --short: the one-line edit to a verdict too")
    p.add_argument("--bisect", action="store_true", help="with --short: the bisection step too")
    p.add_argument("--cold", action="store_true",
                   help="a run with a fresh, temporary cache: the download, unpack and build from nothing")
    p.add_argument("--vng-ratio", action="store_true",
                   help="build the tree with virtme-ng's default config (vng --kconfig) and ours, both from "
                        "nothing: ours as a ratio of theirs")
    p.add_argument("--output", type=Path, default=Path("bench"),
                   help="bench.json and bench.md, and a directory of the bench's runs (default %(default)s)")


def run_bench(args: argparse.Namespace) -> int:
    req = replace(RunRequest.from_args(args, "bench"), output=args.output).validate()
    opts = BenchOptions(req, args.output, short=args.short, edit=args.edit, bisect=args.bisect, cold=args.cold,
                        vng_ratio=args.vng_ratio, command_line=tuple(args.command_line))
    result = bench(opts, Host())
    print(markdown(result), end="")
    print(f"failover-harness: {args.output / 'bench.json'}", flush=True)
    code: int = result["exit_code"]
    return code

