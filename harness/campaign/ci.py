"""What CI runs: a shard of the matrix with one report for all its runs, and the child runs
that `submit` (campaign/submit.py) is made of.

Each cell is a `failover-harness run` of its own, in a child process with its own output
directory: one cell's crash, timeout or Ctrl-C cannot take the others' results with it, and a
run is exactly what a person reproduces with the command in the report. The child's output is
streamed to the CI log as it comes.

    failover-harness matrix [--kernel K]... [--flavor F]... [--scenario S]... [--shard I/N]
                            [--transport console|ssh] [--output DIR] [--list] [-- RUN OPTIONS]

It writes DIR/junit.xml (every run's checks) and DIR/report.md (the Markdown report) and exits
with the worst of the runs' codes (errors.worst): 1 if any FAILed, else 2 for bad usage, else
125 if any was untestable or inconclusive, else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Callable

from ..judge import junit, markdown
from ..judge.checks import Status
from ..judge.results import AnyResults, error_results
from . import matrix
from .. import proc
from ..errors import EXIT_PASS, EXIT_UNTESTABLE, EXIT_USAGE, worst
from ..kernel.kconfig import FLAVORS
from ..kernel.source import DEFAULT_PACKAGE
from ..request import RunRequest
from ..scenarios import SCENARIOS

CELL_TIMEOUT_S = 4 * 3600  # the run has its own timeouts for every phase: this is a last resort


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.@+-]+", "_", text).strip("_") or "cell"


def cell_dir(output: Path, index: int, cell: matrix.Cell) -> Path:
    return output / f"{index:02d}-{_slug(cell.label)}"


def results_of(cell_output: Path, cell: matrix.Cell, code: int, log_tail: str) -> AnyResults:
    """The run's results.json; for a run that ended before it had a run directory (bad usage),
    a stand-in of the error shape, so that the reports still name the cell."""
    found = sorted(cell_output.glob("*/results.json"))
    if found:
        results: AnyResults = json.loads(found[-1].read_text())
        return results
    message = log_tail.strip().splitlines()[-1] if log_tail.strip() else f"exit code {code}"
    return error_results(Status.ERROR if code == EXIT_USAGE else Status.UNTESTABLE, message,
                         request={"scenario": cell.scenario, "flavor": cell.flavor}, kernel={"flavor": cell.flavor},
                         reproduce=shlex.join(["failover-harness", *cell.argv()]))


Runner = Callable[[list[str], Path], tuple[int, str]]


def run_child(argv: list[str], log: Path) -> tuple[int, str]:
    """`failover-harness ARGV` in a child, its output streamed to our stdout and to `log`."""
    def echo(line: str) -> None:
        print(line, flush=True)
    r = proc.run([sys.executable, "-m", "harness.cli", *argv], timeout_s=CELL_TIMEOUT_S, log=log, on_line=echo)
    return (EXIT_UNTESTABLE if r.timed_out else r.returncode), r.tail(5)


def run_cell(runner: Runner, cell: matrix.Cell, argv: list[str], where: Path, heading: str,
             out: Callable[[str], None] = print) -> tuple[int, AnyResults]:
    """One child run of `cell` with its output under `where`: its exit code and results."""
    where.mkdir(parents=True, exist_ok=True)
    argv = argv + ["--output", str(where)]
    out(f"::group::{heading}" if _github() else f"== {heading}")
    out(f"failover-harness {shlex.join(argv)}")
    code, tail = runner(argv, where / "harness.log")
    results = results_of(where, cell, code, tail)
    if _github():
        out("::endgroup::")
    out(f"== {heading}: {results.get('verdict')} (exit {code})")
    return code, results


def run_cells(cells: list[matrix.Cell], output: Path, extra: tuple[str, ...], runner: Runner = run_child,
              out: Callable[[str], None] = print) -> list[tuple[matrix.Cell, int, AnyResults]]:
    done = []
    for i, cell in enumerate(cells, 1):
        code, results = run_cell(runner, cell, cell.argv(extra), cell_dir(output, i, cell),
                                 f"[{i}/{len(cells)}] {cell.label}", out)
        done.append((cell, code, results))
    return done


def _github() -> bool:
    """On GitHub Actions, each cell's output is a collapsible group of the job's log."""
    return os.environ.get("GITHUB_ACTIONS") == "true"


def write_reports(output: Path, runs: list[AnyResults], title: str, reproduce: str | None = None) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "junit.xml").write_text(junit.render_many(runs))
    (output / "report.md").write_text(markdown.render(runs, title=title, reproduce=reproduce))


# -- command line ---------------------------------------------------------------------------------

def add_matrix_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", action="append", dest="kernels", metavar="K",
                   help=f"a Debian package, tree:PATH or tree:PATH@REF; repeat for more (default {DEFAULT_PACKAGE})")
    p.add_argument("--flavor", action="append", dest="flavors", metavar="F",
                   help=f"one of {', '.join(FLAVORS)}; repeat for more (default plain)")
    p.add_argument("--scenario", action="append", dest="scenarios", metavar="S",
                   help=f"one of {', '.join(SCENARIOS)}; repeat for more (default {' '.join(matrix.DEFAULT_SCENARIOS)})")
    p.add_argument("--shard", default="1/1", help="run the I-th of N shares of the matrix (default %(default)s)")
    p.add_argument("--output", type=Path, default=Path("runs"), help="where the runs and reports go (default %(default)s)")
    p.add_argument("--list", action="store_true", help="print the shard's cells and their commands, run nothing")
    p.add_argument("--title", default="failover-harness", help="the Markdown report's heading")
    RunRequest.add_arguments(p, "matrix")  # how every cell's run reaches its guest
    p.add_argument("run_options", nargs=argparse.REMAINDER,
                   help="after --: options for every run (e.g. -- --seed 2 --accel kvm)")


def extra_run_options(options: list[str]) -> tuple[str, ...]:
    """What the matrix gives every cell's `failover-harness run`: its arguments after --."""
    return tuple(options[1:] if options[:1] == ["--"] else options)


def run_matrix(args: argparse.Namespace, runner: Runner = run_child) -> int:
    all_cells = matrix.cells(args.kernels or [DEFAULT_PACKAGE],
                             args.flavors or ["plain"], args.scenarios or list(matrix.DEFAULT_SCENARIOS))
    i, n = matrix.parse_shard(args.shard)
    mine = matrix.shard(all_cells, i, n)
    extra = (*RunRequest.from_args(args, "matrix").to_argv("run", ("transport",)),
             *extra_run_options(args.run_options))
    print(f"shard {i}/{n}: {len(mine)} of {len(all_cells)} cells, about {matrix.estimated_s(mine) / 60:.0f} min", flush=True)
    if args.list:
        for cell in mine:
            print(f"{cell.label}\tfailover-harness {shlex.join(cell.argv(extra))}")
        return EXIT_PASS
    if not mine:  # more shards than cells: nothing to do is not a failure
        write_reports(args.output, [], args.title)
        return EXIT_PASS
    done = run_cells(mine, args.output, extra, runner)
    write_reports(args.output, [r for _, _, r in done], f"{args.title} (shard {i}/{n})" if n > 1 else args.title)
    return worst([code for _, code, _ in done])
