"""Command line: parse, build a request, call the runner, map the verdict to an exit code.

Exit codes: 0 PASS, 1 FAIL (the kernel is at fault), 2 bad usage or input, 125 untestable
(build or boot failed, infrastructure error: `git bisect run` skips such a commit).
`bisect` exits 0 when it names the first bad commit, 125 when it cannot, 2 when its ends are wrong.
"""
from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path

from . import __version__, proc
from .campaign import bisect, ci, mutants
from .judge import report, timeline
from .campaign.bisect import BisectRequest
from .errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, EXIT_USAGE, HarnessError, InputError
from .judge.checks import Status
from .kernel.kconfig import FLAVORS
from .request import RunRequest
from .scenarios import SCENARIOS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"failover-harness: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _add_source_options(p: argparse.ArgumentParser, d: RunRequest) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tree", type=Path, help="a kernel source tree (a git repository for --ref, --series, bisect)")
    src.add_argument("--package", default=d.package, help="Debian source package (default %(default)s)")


def _add_common_options(p: argparse.ArgumentParser, d: RunRequest) -> None:
    p.add_argument("--seed", type=int, default=d.seed, help="dataset and kill timing (default %(default)s)")
    p.add_argument("--output", type=Path, default=d.output, help="where run directories go (default %(default)s)")
    p.add_argument("--read-delay-ms", type=int, default=d.read_delay_ms,
                   help="the daemon's delay per READ, keeps requests in flight (default %(default)s)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=d.accel,
                   help="auto probes whether KVM really boots a guest (default %(default)s)")
    p.add_argument("--jobs", type=int, default=d.jobs, help="make -j (default %(default)s)")
    p.add_argument("--cache", type=Path, default=d.cache, help="downloads, sources, builds (default %(default)s)")


def _add_scenario_options(p: argparse.ArgumentParser, d: RunRequest) -> None:
    p.add_argument("--scenario", default=d.scenario, help=f"one of: {', '.join(SCENARIOS)} (default %(default)s)")
    p.add_argument("--kills", type=int, help="SIGKILLs to send (default: the scenario's, 50 for crash)")
    p.add_argument("--fd-closes", type=int, help="anon fds the daemon closes (default: the scenario's, 40 for close-fds)")
    p.add_argument("--readers", type=int, help="reader processes (default: the scenario's)")
    p.add_argument("--daemon-threads", type=int, help="threads serving /dev/cachefiles (default: the scenario's)")
    p.add_argument("--flavor", choices=tuple(FLAVORS), default=d.flavor,
                   help="debug adds KASAN, lockdep and the lockup detectors (default %(default)s)")
    _add_common_options(p, d)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="failover-harness", description="Prove a kernel survives the failure of its "
                "cachefiles on-demand daemon.")
    p.add_argument("--version", action="version", version=f"failover-harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = RunRequest()
    run = sub.add_parser("run", help="build, boot, kill the daemon over and over, judge")
    _add_scenario_options(run, d)
    _add_source_options(run, d)
    run.add_argument("--ref", help="the commit to build (of --tree's repository, or of the package's)")
    run.add_argument("--series", type=Path, help="an mbox or a directory of patches, applied on top with git am")
    run.add_argument("--no-failover", action="store_true",
                     help="the negative control, same as --scenario no-failover: must FAIL")

    bis = sub.add_parser("bisect", help="git bisect run with the scenario as the test")
    _add_scenario_options(bis, d)
    _add_source_options(bis, d)
    bis.add_argument("--good", required=True, help="a commit that passes")
    bis.add_argument("--bad", required=True, help="a later commit that fails")
    bis.add_argument("--repeat", type=int, default=1, help="runs per commit; any FAIL is bad (default %(default)s)")

    step = sub.add_parser("_bisect-step")  # what `git bisect run` runs: not for people
    _add_scenario_options(step, d)
    step.add_argument("--tree", type=Path, required=True)
    step.add_argument("--steps", type=Path, required=True)
    step.add_argument("--repeat", type=int, default=1)

    mut = sub.add_parser("mutate", help="each mutant kernel must be caught; the unmutated one must pass")
    _add_common_options(mut, d)
    _add_source_options(mut, d)
    mut.add_argument("--mutant", action="append", default=[], metavar="NAME",
                     help="only this mutant (repeatable; default: every one in --mutants)")
    mut.add_argument("--mutants", type=Path, default=mutants.MUTANT_DIR,
                     help="the directory of mutant patches (default %(default)s)")

    ci.add_matrix_arguments(sub.add_parser("matrix", help="a shard of kernels x flavours x scenarios, one report (CI)"))
    ci.add_submit_arguments(sub.add_parser("submit", help="a patch series (an mbox) on a base, the default scenarios"))

    rep = sub.add_parser("report", help="judge a saved run directory again")
    rep.add_argument("run_dir", type=Path)
    return p


def run_request(args: argparse.Namespace) -> RunRequest:
    d = RunRequest()
    scenario = "no-failover" if getattr(args, "no_failover", False) else getattr(args, "scenario", d.scenario)
    return RunRequest(scenario=scenario, kills=getattr(args, "kills", None),
                      fd_closes=getattr(args, "fd_closes", None), seed=args.seed, output=args.output,
                      tree=args.tree, package=getattr(args, "package", d.package), ref=getattr(args, "ref", None),
                      series=getattr(args, "series", None), readers=getattr(args, "readers", None),
                      daemon_threads=getattr(args, "daemon_threads", None), read_delay_ms=args.read_delay_ms,
                      flavor=getattr(args, "flavor", d.flavor), accel=args.accel, jobs=args.jobs, cache=args.cache)


def draw_timeline(run_dir: Path, results: dict) -> None:
    """timeline.png beside results.json. A picture is not the verdict: failing to draw one is
    said on stderr and changes neither the verdict nor the exit code."""
    if "evidence" not in results:  # ERROR, UNTESTABLE: no run to draw
        return
    try:
        timeline.write(run_dir)
    except Exception as e:  # matplotlib's failures are many and none of them is the kernel's
        print(f"failover-harness: {run_dir / 'timeline.png'} not drawn: {e}", file=sys.stderr)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def exit_code(verdict: str) -> int:
    """INCONCLUSIVE is neither good nor bad: what `git bisect run` skips, like UNTESTABLE."""
    return {Status.PASS: EXIT_PASS, Status.FAIL: EXIT_FAIL}.get(Status(verdict), EXIT_UNTESTABLE)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already said in one line
        return int(e.code or 0)
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so that QEMU and make are reaped on the way out.
    # SIGINT too, explicitly: started from a background job, we inherit it ignored, and Python
    # then installs no handler of its own.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        if args.command == "report":
            if not (args.run_dir / "run.json").is_file():
                print(f"failover-harness: {args.run_dir}: not a run directory (no run.json)", file=sys.stderr)
                return EXIT_USAGE
            results = report.evaluate(args.run_dir)
            draw_timeline(args.run_dir, results)
        elif args.command == "matrix":
            return ci.run_matrix(args)
        elif args.command == "submit":
            return ci.run_submit(args)
        elif args.command == "bisect":
            breq = BisectRequest(run_request(args), args.good, args.bad, args.repeat).validate()
            found = bisect.bisect(breq)
            print(bisect.summary(found), end="")
            return EXIT_PASS if found["first_bad"] else EXIT_UNTESTABLE
        elif args.command == "mutate":
            chosen = mutants.load(args.mutants, tuple(args.mutant))
            if not chosen:
                raise InputError(f"{args.mutants}: no mutant patches")
            outcome = mutants.mutate(run_request(args).validate(), chosen)
            print(mutants.summary(outcome), end="")
            return exit_code(outcome["verdict"])
        elif args.command == "_bisect-step":
            try:
                step = bisect.run_step(run_request(args).validate(), args.repeat, "bisect", args.steps)
            except (HarnessError, KeyboardInterrupt):
                raise
            except Exception:  # a harness bug must not blame the commit: exit 1 would mean "bad"
                traceback.print_exc()
                return EXIT_UNTESTABLE
            return bisect.STEP_EXIT[step.result]
        else:
            from .runner import Run
            run = Run(run_request(args).validate(), command_line=["failover-harness", *(argv or sys.argv[1:])])
            print(f"failover-harness: run directory {run.dir}", flush=True)
            results = run.execute()
            draw_timeline(run.dir, results)
            print(f"failover-harness: {run.dir / 'results.json'}", flush=True)
        print(report.summary(results), end="")
        return exit_code(results["verdict"])
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
