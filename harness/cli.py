"""Command line: parse, build a request, call the runner, map the verdict to an exit code.

Exit codes: 0 PASS, 1 FAIL (the kernel is at fault), 2 bad usage or input, 125 untestable
(build or boot failed, infrastructure error: `git bisect run` skips such a commit).
`bisect` exits 0 when it names the first bad commit, 125 when it cannot, 2 when its ends are wrong.
`bench` exits 0 when every stage it was asked for ran, 1 when a run FAILed, 125 when one was untestable.
"""
from __future__ import annotations

import argparse
import signal
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import __version__, proc
from .campaign import bench, bisect, ci, mutants, submit
from .judge import report, timeline
from .campaign.bisect import BisectRequest
from .errors import EXIT_PASS, EXIT_UNTESTABLE, EXIT_USAGE, HarnessError, InputError
from .judge.checks import Status
from .judge.results import Results
from .request import RunRequest


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"failover-harness: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="failover-harness", description="Prove a kernel survives the failure of its "
                "cachefiles on-demand daemon.")
    p.add_argument("--version", action="version", version=f"failover-harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="build, boot, kill the daemon over and over, judge")
    RunRequest.add_arguments(run, "run")
    run.add_argument("--no-failover", action="store_true",
                     help="the negative control, same as --scenario no-failover: must FAIL")

    bis = sub.add_parser("bisect", help="git bisect run with the scenario as the test")
    RunRequest.add_arguments(bis, "bisect")
    bis.add_argument("--good", required=True, help="a commit that passes")
    bis.add_argument("--bad", required=True, help="a later commit that fails")
    bis.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="the most runs per commit: a FAIL is repeated until the commit is bad (max(2, n/6) of "
                          "its n runs failed), else it is flaky (a skip); passes go on until a good is "
                          f"{bisect.CONFIDENCE_TARGET * 100:.0f}%% sure (default %(default)s: one run, a FAIL is bad)")
    bis.add_argument(bisect.NO_SKIP_UNCHANGED, action="store_true",
                     help="build and run every step, even one whose fs/cachefiles, fs/erofs, fs/netfs, headers, "
                          "config and version are those of a commit already tested")

    step = sub.add_parser(bisect.STEP_COMMAND)  # what `git bisect run` runs: not for people
    RunRequest.add_arguments(step, bisect.STEP_COMMAND)
    bisect.add_step_arguments(step)

    mut = sub.add_parser("mutate", help="each mutant kernel must be caught; the unmutated one must pass")
    RunRequest.add_arguments(mut, "mutate")
    mut.add_argument("--mutant", action="append", default=[], metavar="NAME",
                     help="only this mutant (repeatable; default: every one in --mutants)")
    mut.add_argument("--mutants", type=Path, default=mutants.MUTANT_DIR,
                     help="the directory of mutant patches (default %(default)s)")

    ci.add_matrix_arguments(sub.add_parser("matrix", help="a shard of kernels x flavours x scenarios, one report (CI)"))
    submit.add_submit_arguments(sub.add_parser("submit", help="a patch series (an mbox) on a base, the default scenarios"))
    bench.add_bench_arguments(sub.add_parser("bench", help="measure this machine: builds, boot, kills and closes per "
                                             "minute, recovery, edit to verdict, a bisection step (bench.json)"))

    rep = sub.add_parser("report", help="judge a saved run directory again")
    rep.add_argument("run_dir", type=Path)
    return p


def draw_timeline(run_dir: Path) -> None:
    """timeline.png beside results.json. A picture is not the verdict: failing to draw one is
    said on stderr and changes neither the verdict nor the exit code."""
    try:
        timeline.write(run_dir)
    except Exception as e:  # matplotlib's failures are many and none of them is the kernel's
        print(f"failover-harness: {run_dir / 'timeline.png'} not drawn: {e}", file=sys.stderr)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def exit_code(verdict: str) -> int:
    return Status(verdict).exit_code


def _summarise(results: Results) -> int:
    """The run's summary on stdout; its verdict's exit code."""
    print(report.summary(results), end="")
    return exit_code(results["verdict"])


def _report(args: argparse.Namespace) -> int:
    if not (args.run_dir / "run.json").is_file():
        print(f"failover-harness: {args.run_dir}: not a run directory (no run.json)", file=sys.stderr)
        return EXIT_USAGE
    results = report.evaluate(args.run_dir)
    draw_timeline(args.run_dir)
    return _summarise(results)


def _run(args: argparse.Namespace) -> int:
    from .runner import Run
    req = RunRequest.from_args(args, "run")
    if args.no_failover:  # wins over --scenario, wherever it is on the line
        req = replace(req, scenario="no-failover")
    run = Run(req.validate(), command_line=args.command_line)
    print(f"failover-harness: run directory {run.dir}", flush=True)
    results = run.execute()
    draw_timeline(run.dir)
    print(f"failover-harness: {run.dir / 'results.json'}", flush=True)
    return _summarise(results)


def _bisect(args: argparse.Namespace) -> int:
    breq = BisectRequest(RunRequest.from_args(args, "bisect"), args.good, args.bad, args.repeat,
                         skip_unchanged=not args.no_skip_unchanged).validate()
    found = bisect.bisect(breq)
    print(bisect.summary(found), end="")
    return EXIT_PASS if found["first_bad"] else EXIT_UNTESTABLE


def _bisect_step(args: argparse.Namespace) -> int:
    try:
        step = bisect.run_step(RunRequest.from_args(args, bisect.STEP_COMMAND).validate(), args.repeat, "bisect",
                               args.steps, skip_unchanged=not args.no_skip_unchanged)
    except (HarnessError, KeyboardInterrupt):
        raise
    except Exception:  # a harness bug must not blame the commit: exit 1 would mean "bad"
        traceback.print_exc()
        return EXIT_UNTESTABLE
    return bisect.STEP_EXIT[step.result]


def _mutate(args: argparse.Namespace) -> int:
    chosen = mutants.load(args.mutants, tuple(args.mutant))
    if not chosen:
        raise InputError(f"{args.mutants}: no mutant patches")
    outcome = mutants.mutate(RunRequest.from_args(args, "mutate").validate(), chosen)
    print(mutants.summary(outcome), end="")
    return exit_code(outcome["verdict"])


# Each command's handler returns the exit code; HarnessError and interrupts are main's.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run, "bisect": _bisect, bisect.STEP_COMMAND: _bisect_step, "mutate": _mutate,
    "matrix": ci.run_matrix, "submit": submit.run_submit, "bench": bench.run_bench, "report": _report,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        if args.command == "matrix":  # its runs' options (after --), refused once here rather than by every cell
            parser().parse_args(["run", *ci.extra_run_options(args.run_options)])
    except SystemExit as e:  # --help, --version, or a usage error already said in one line
        return int(e.code or 0)
    args.command_line = ["failover-harness", *(argv or sys.argv[1:])]  # what run.json records as typed
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so that QEMU and make are reaped on the way out.
    # SIGINT too, explicitly: started from a background job, we inherit it ignored, and Python
    # then installs no handler of its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return HANDLERS[args.command](args)
    except HarnessError as e:
        print(f"failover-harness: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("failover-harness: interrupted", file=sys.stderr)
        return 130
    finally:
        proc.kill_all()


if __name__ == "__main__":
    sys.exit(main())
