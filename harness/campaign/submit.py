"""`failover-harness submit`: a patch series tested the way a maintainer asks of a CI reply:
did the series cause this or was it there before (every scenario on the base and on the base
with the series, with the same seeds), how sure are you (runs repeated where they matter,
judge/sides.py and repeats.py), and can I paste your answer (reply.eml, checks.json).

    failover-harness submit --mbox FILE --base REF [--tree DIR | --package NAME] [--flavor F]
                            [--scenario S]... [--kills N] [--seed S] [--repeat N] [--known-issues FILE]
                            [--tested-by "Name <addr>"] [--target-url URL]
                            [--transport console|ssh] [--output DIR]

This module is the one place that runs things; what it decides with is pure: which runs next
(repeats.next_runs), what the runs mean (sides.compare), whether a base run is cached
(basecache.BaseRunKey). Each run is a child `failover-harness run` (ci.run_cell), under
DIR/NN-cell/<side>-seed<S>/. DIR gets report.md, junit.xml, reply.eml and checks.json; the exit
code is Submission.exit_code: 1 when the series made a scenario worse, 2 when a side could not
be tested because the input was wrong, 125 for a warning, 0.

`--scenario` and `--kills` make a submission cheaper (a demonstration, a first look): the reports
then say what it left of the default one (scope_note), so that it is not read as a full one.
`--kills` goes to the runs of the scenarios that have kills of their own: close-fds and
crash-points are not given kills they do not have (they would test something else, and a kernel
that fails at a death would fail them too).
"""
from __future__ import annotations

import argparse
import email.utils
import json
import shlex
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Callable

from . import ci, matrix, repeats, reply
from .basecache import BaseRunCache, BaseRunKey
from ..errors import InputError
from ..judge import junit, known, markdown, patchwork, sides
from ..judge.checks import Status
from ..judge.results import AnyResults
from ..judge.sides import Side, SideRun, Submission
from ..kernel import series, source
from ..request import RunRequest
from ..scenarios import SCENARIOS

# What the child runs are told: the kernel, flavour and scenario come with the cell
RUN_FIELDS = ("ref", "series", "kills", "seed", "transport", "cache")
DEFAULT_SENDER = "failover-harness <failover-harness@failover-harness.invalid>"


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mbox", type=Path, required=True, help="the series, as b4 am or a mailing-list bot saves it")
    p.add_argument("--base", required=True, help="the commit the series applies to")
    p.add_argument("--scenario", action="append", dest="scenarios", metavar="S",
                   help=f"one of {', '.join(SCENARIOS)}; repeat for more "
                        f"(default {' '.join(matrix.DEFAULT_SCENARIOS)}); the reports say when it is not the default")
    # the kernel (--tree holds --base), flavour, kills, seed and cache of every run
    RunRequest.add_arguments(p, "submit")
    p.add_argument("--repeat", type=int, default=repeats.DEFAULT_MAX_RUNS, metavar="N",
                   help="at most N runs a side of a scenario whose run failed or differed from the other side's "
                        "(default %(default)s)")
    p.add_argument("--known-issues", type=Path, metavar="FILE",
                   help="known findings and failed checks (JSON, README: submit): shown as known, not as news")
    p.add_argument("--tested-by", metavar='"NAME <ADDR>"',
                   help="reply.eml's sender, and its Tested-by: when every scenario passes on the series")
    p.add_argument("--target-url", metavar="URL", help="checks.json's target_url (e.g. the CI job's page)")
    p.add_argument("--output", type=Path, default=Path("runs"), help="where the runs and reports go (default %(default)s)")


def scenarios_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The scenarios asked for, in their order, once each (unknown ones are matrix.cells' to refuse)."""
    return tuple(dict.fromkeys(args.scenarios or matrix.DEFAULT_SCENARIOS))


def submit_command(args: argparse.Namespace, mbox: str | None = None) -> str:
    """The one command that reproduces a submission locally (`mbox`: the series' file as the reader has it)."""
    scenarios = scenarios_of(args)
    chosen = [w for s in scenarios for w in ("--scenario", s)] if scenarios != matrix.DEFAULT_SCENARIOS else []
    repeat = ["--repeat", str(args.repeat)] if args.repeat != repeats.DEFAULT_MAX_RUNS else []
    return shlex.join(["failover-harness", "submit", "--mbox", mbox or str(args.mbox), "--base", args.base, *chosen,
                       *RunRequest.from_args(args, "submit").to_argv("submit"), *repeat])


def scope_note(scenarios: tuple[str, ...], kills: int | None) -> str | None:
    """What a submission changed of the default one, in a sentence for report.md and reply.eml;
    None when nothing: a narrowed submission must not pass for a full one."""
    said = []
    if set(scenarios) != set(matrix.DEFAULT_SCENARIOS):
        names, n = ", ".join(scenarios), len(matrix.DEFAULT_SCENARIOS)
        said.append(f"only {names} of the {n} default scenarios" if set(scenarios) < set(matrix.DEFAULT_SCENARIOS)
                    else f"scenarios {names}, not the {n} default ones")
    if kills is not None:
        said.append(f"{kills} kills in each scenario that kills, not its own number")
    return f"Not the default submission: {'; '.join(said)}." if said else None


def _tested_by(text: str | None) -> str | None:
    if text is None:
        return None
    name, addr = email.utils.parseaddr(text)
    if not name or "@" not in addr:
        raise InputError(f'--tested-by {text!r}: expected "Name <address>"')
    return email.utils.formataddr((name, addr))


@dataclass(frozen=True)
class Plan:
    """A submission's every input, checked before any run."""
    request: RunRequest  # the kernel, flavour, first seed, transport and cache of every run
    base: str
    mbox: Path
    root: series.ThreadRoot
    cells: tuple[matrix.Cell, ...]  # in the order of --scenario, the default scenarios without it
    max_runs: int
    known: known.KnownIssues
    tested_by: str | None
    target_url: str | None
    output: Path


def plan(args: argparse.Namespace, today: date) -> Plan:
    if not args.mbox.is_file():
        raise InputError(f"--mbox {args.mbox}: no such file")
    series.load(args.mbox)  # a file that holds no patch is said once, here, not by each run
    if not 2 <= args.repeat <= 100:  # one run alone can never make a side bad (sides.bad_threshold)
        raise InputError(f"--repeat must be 2..100 (got {args.repeat}): a side is bad after 2 failures")
    if args.target_url is not None and not args.target_url.startswith(("http://", "https://")):
        raise InputError(f"--target-url {args.target_url!r}: expected an http:// or https:// URL")
    req = RunRequest.from_args(args, "submit")
    kernel = f"tree:{req.tree}" if req.tree else req.package
    cells = tuple(matrix.cells([kernel], [req.flavor], list(scenarios_of(args))))
    if req.kills is not None and not any(SCENARIOS[c.scenario].kills for c in cells):
        raise InputError(f"--kills {req.kills}: none of the scenarios ({', '.join(c.scenario for c in cells)}) "
                         "has kills of its own to replace")
    return Plan(req, args.base, args.mbox.resolve(), series.thread_root(args.mbox), cells, args.repeat,
                known.load(args.known_issues, today), _tested_by(args.tested_by), args.target_url, args.output)


def kills_of(p: Plan, cell: matrix.Cell) -> int | None:
    """--kills for `cell`'s runs: None (the scenario's own) for a scenario without kills of its own."""
    return p.request.kills if SCENARIOS[cell.scenario].kills else None


def run_argv(p: Plan, cell: matrix.Cell, side: Side, seed: int, base_ref: str) -> list[str]:
    """The child run of `cell` on one side: the base, or the base with the series."""
    req = replace(p.request, ref=base_ref, series=p.mbox if side is Side.SERIES else None, seed=seed,
                  kills=kills_of(p, cell))
    return cell.argv(tuple(req.to_argv("run", RUN_FIELDS)))


def base_commit_of(results: AnyResults) -> str | None:
    return ((results.get("provenance") or {}).get("base") or {}).get("commit")


def base_key(p: Plan, cell: matrix.Cell, seed: int, commit: str) -> BaseRunKey:
    return BaseRunKey(commit, cell.scenario, seed, p.request.flavor, p.request.transport, kills_of(p, cell))


def reused(cache: BaseRunCache, key: BaseRunKey, where: Path, heading: str, out: Callable[[str], None]) -> SideRun | None:
    """The cached base run of `key`, copied into the submission's output; None when there is none."""
    results = cache.get(key)
    if results is None:
        return None
    where.mkdir(parents=True, exist_ok=True)
    (where / "cached-results.json").write_text(json.dumps(results, indent=1) + "\n")
    out(f"== {heading}: {results['verdict']} (cached: {cache.path(key)})")
    return SideRun(key.seed, Status(results["verdict"]).exit_code, results, reused=True)


def run_submit(args: argparse.Namespace, runner: ci.Runner = ci.run_child, today: date | None = None,
               out: Callable[[str], None] = print) -> int:
    p = plan(args, today or date.today())
    cache = BaseRunCache(p.request.cache)
    # Resolved once, so that every run of both sides builds the same base: a ref such as HEAD of
    # the package's repository moves when a series is applied there. Unknown until the first
    # run when the package is not unpacked yet; that run's provenance says it.
    base = source.known_commit(p.request.cache, p.request.package, p.request.tree, p.base)
    comparisons = []
    for i, cell in enumerate(p.cells, 1):
        runs: dict[Side, list[SideRun]] = {Side.BASE: [], Side.SERIES: []}
        while wanted := repeats.next_runs([r.status for r in runs[Side.BASE]], [r.status for r in runs[Side.SERIES]],
                                          p.max_runs):
            for side in wanted:
                seed = p.request.seed + len(runs[side])  # the k-th run of either side has the same seed
                where = ci.cell_dir(p.output, i, cell) / f"{side}-seed{seed}"
                heading = f"[{i}/{len(p.cells)}] {cell.label} {side} seed {seed}"
                run = reused(cache, base_key(p, cell, seed, base), where, heading, out) \
                    if side is Side.BASE and base else None
                if run is None:
                    code, results = ci.run_cell(runner, cell, run_argv(p, cell, side, seed, base or p.base), where,
                                                heading, out)
                    run = SideRun(seed, code, results)
                    if side is Side.BASE and (base := base or base_commit_of(results)):
                        cache.put(base_key(p, cell, seed, base), results)
                runs[side].append(run)
        comparisons.append(sides.compare(cell.scenario, runs[Side.BASE], runs[Side.SERIES]))
    sub = Submission(tuple(comparisons), p.known)
    write_reports(p, sub, args)
    out(f"failover-harness: {sub.headline}; {p.output / 'report.md'}, {p.output / 'reply.eml'}")
    return sub.exit_code()


def write_reports(p: Plan, sub: Submission, args: argparse.Namespace) -> None:
    p.output.mkdir(parents=True, exist_ok=True)
    runs = sub.labelled_runs()
    scope = scope_note(tuple(c.scenario for c in p.cells), p.request.kills)
    (p.output / "junit.xml").write_text(junit.render_many([r.results for _, _, r in runs],
                                                          names=[label for label, _, _ in runs]))
    (p.output / "report.md").write_text(markdown.render_submission(
        sub, title=f"failover-harness on {p.mbox.name}", reproduce=submit_command(args), max_runs=p.max_runs,
        scope=scope))
    text = reply.body(sub, root=p.root, reproduce=submit_command(args, p.mbox.name), mbox_name=p.mbox.name,
                      max_runs=p.max_runs, tested_by=p.tested_by, scope=scope)
    (p.output / "reply.eml").write_bytes(reply.message(text, p.root, p.tested_by or DEFAULT_SENDER).as_bytes())
    (p.output / "checks.json").write_text(patchwork.render(sub, p.request.flavor, p.target_url))
