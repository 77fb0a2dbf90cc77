"""Command line: parse, build a request, call the runner, map the verdict to an exit code.

Exit codes: 0 PASS, 1 FAIL (the kernel is at fault), 2 bad usage or input, 125 untestable
(build or boot failed, infrastructure error: `git bisect run` skips such a commit).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import __version__, proc, report
from .errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, EXIT_USAGE, HarnessError
from .kconfig import FLAVORS
from .request import RunRequest
from .scenarios import SCENARIOS


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

    d = RunRequest()
    run = sub.add_parser("run", help="build, boot, kill the daemon over and over, judge")
    run.add_argument("--scenario", default=d.scenario,
                     help=f"one of: {', '.join(SCENARIOS)} (default %(default)s)")
    run.add_argument("--kills", type=int, help="SIGKILLs to send (default: the scenario's, 50 for crash)")
    run.add_argument("--seed", type=int, default=d.seed, help="dataset and kill timing (default %(default)s)")
    run.add_argument("--output", type=Path, default=d.output, help="where run directories go (default %(default)s)")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--tree", type=Path, help="a kernel source tree to test instead of Debian's package")
    src.add_argument("--package", default=d.package, help="Debian source package (default %(default)s)")
    run.add_argument("--no-failover", action="store_true",
                     help="the negative control, same as --scenario no-failover: must FAIL")
    run.add_argument("--readers", type=int, help="reader processes (default: the scenario's)")
    run.add_argument("--daemon-threads", type=int, help="threads serving /dev/cachefiles (default: the scenario's)")
    run.add_argument("--read-delay-ms", type=int, default=d.read_delay_ms,
                     help="the daemon's delay per READ, keeps requests in flight (default %(default)s)")
    run.add_argument("--flavor", choices=tuple(FLAVORS), default=d.flavor,
                     help="debug adds KASAN, lockdep and the lockup detectors (default %(default)s)")
    run.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=d.accel,
                     help="auto probes whether KVM really boots a guest (default %(default)s)")
    run.add_argument("--jobs", type=int, default=d.jobs, help="make -j (default %(default)s)")
    run.add_argument("--cache", type=Path, default=d.cache, help="downloads, sources, builds (default %(default)s)")

    rep = sub.add_parser("report", help="judge a saved run directory again")
    rep.add_argument("run_dir", type=Path)
    return p


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def exit_code(verdict: str) -> int:
    """INCONCLUSIVE is neither good nor bad: what `git bisect run` skips, like UNTESTABLE."""
    return {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL}.get(verdict, EXIT_UNTESTABLE)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
        else:
            from .runner import Run
            req = RunRequest(scenario="no-failover" if args.no_failover else args.scenario, kills=args.kills,
                             seed=args.seed, output=args.output, tree=args.tree, package=args.package,
                             readers=args.readers, daemon_threads=args.daemon_threads,
                             read_delay_ms=args.read_delay_ms, flavor=args.flavor, accel=args.accel,
                             jobs=args.jobs, cache=args.cache).validate()
            run = Run(req)
            print(f"failover-harness: run directory {run.dir}", flush=True)
            results = run.execute()
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
