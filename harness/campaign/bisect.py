"""Bisection: `git bisect run` with the harness as the test, in a tree the harness owns.

A step is the scenario run `repeat` times on the commit checked out: any FAIL makes it bad (1),
all PASS makes it good (0), and anything else (a build or boot failure, an INCONCLUSIVE run, an
infrastructure error, a config the commit cannot give) makes git skip it (125), never "bad":
a flaky or broken build must not be blamed on the wrong commit. The ends are checked first,
the bad one must fail and the good one pass, and the observed failure rate on bad commits says
how sure a "good" is (syzkaller's reasoning: N passes of a commit that fails with probability p
happen with probability (1-p)^N).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import run_options
from ..kernel import git, source
from ..errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, InputError, UntestableError
from ..judge.checks import Status
from ..judge.results import AnyResults, is_judged
from ..judge.sides import good_confidence
from ..request import RunRequest, new_output_dir

BISECT_TIMEOUT_S = 24 * 3600  # the whole `git bisect run`; each step's stages have their own timeouts


@dataclass(frozen=True)
class BisectRequest:
    run: RunRequest  # the scenario and its options; run.tree / run.package say which repository
    good: str
    bad: str
    repeat: int = 1

    def validate(self) -> "BisectRequest":
        if not 1 <= self.repeat <= 100:
            raise InputError(f"--repeat must be 1..100 (got {self.repeat})")
        if self.run.series is not None or self.run.ref is not None:
            raise InputError("bisect takes --good and --bad, not --ref or --series")
        self.run.validate()
        return self


@dataclass(frozen=True)
class StepRun:
    run_dir: str
    verdict: str
    reasons: tuple[str, ...]
    findings: tuple[str, ...]
    build_s: float | None
    seconds: float


@dataclass(frozen=True)
class Step:
    phase: str  # "check-bad", "check-good" or "bisect"
    commit: str
    subject: str
    result: str  # "good", "bad" or "skip"
    runs: tuple[StepRun, ...]
    seconds: float


def step_result(verdicts: list[str]) -> str:
    """Any FAIL is bad; good needs every run to PASS; the rest is a skip."""
    if Status.FAIL in verdicts:
        return "bad"
    return "good" if verdicts and all(v == Status.PASS for v in verdicts) else "skip"


STEP_EXIT = {"good": EXIT_PASS, "bad": EXIT_FAIL, "skip": EXIT_UNTESTABLE}


def run_step(req: RunRequest, repeat: int, phase: str, steps_log: Path) -> Step:
    """Test the commit checked out in `req.tree`; the step is appended to `steps_log`."""
    from ..runner import Run  # the runner imports this package's modules; keep the import cheap
    tree = req.tree
    assert tree is not None
    commit = git.head(tree) or "?"
    started = time.monotonic()
    runs: list[StepRun] = []
    for _ in range(repeat):
        run_started = time.monotonic()
        run = Run(replace(req, output=steps_log.parent / "steps"))
        # ERROR or UNTESTABLE: this commit could not be tested, a skip (results.json's dict: the runner is not typed yet)
        results = run.execute_judged()
        verdict = results["verdict"]
        reasons = tuple(results["reasons"])
        if not Status(verdict).judged:
            reasons = (reasons[0].splitlines()[0],)  # the one line that says why; run.dir has the rest
        findings = tuple(f"{f['title']} [{f['fingerprint']}]" for f in (results["findings"] if is_judged(results) else []))
        runs.append(StepRun(str(run.dir), verdict, reasons, findings,
                            results["timing"].get("build_s"), round(time.monotonic() - run_started, 1)))
        if verdict == Status.FAIL:
            break  # bad already: more runs would not change it
    step = Step(phase, commit, git.subject(tree, commit), step_result([r.verdict for r in runs]), tuple(runs),
                round(time.monotonic() - started, 1))
    with open(steps_log, "a") as f:
        f.write(json.dumps(asdict(step)) + "\n")
    print(f"failover-harness: bisect {phase} {commit[:12]} {step.result} ({', '.join(r.verdict for r in runs)}; "
          f"{step.seconds:.0f}s) {step.subject}", flush=True)
    return step


def load_steps(steps_log: Path) -> list[dict[str, Any]]:
    if not steps_log.exists():
        return []
    return [json.loads(line) for line in steps_log.read_text().splitlines() if line.strip()]


def confidence(steps: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    """How likely each "good" is right, from the failure rate seen on the commits found bad."""
    bad_runs = [r for s in steps if s["result"] == "bad" for r in s["runs"]]
    failures = sum(r["verdict"] == Status.FAIL for r in bad_runs)
    rate = failures / len(bad_runs) if bad_runs else None
    return {"failure_rate_on_bad": None if rate is None else round(rate, 3),
            "runs_on_bad": len(bad_runs), "failures_on_bad": failures, "repeat": repeat,
            "good_is_good": None if rate is None else round(good_confidence(rate, repeat), 4)}


STEP_COMMAND = "_bisect-step"  # the hidden command `git bisect run` runs


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The step's own options, beside the run options RunRequest adds (step_argv spells both)."""
    p.add_argument("--steps", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=1)


def step_argv(req: RunRequest, repeat: int, steps_log: Path) -> list[str]:
    """The command `git bisect run` runs: this harness's hidden step command, with every option
    of the request spelled out: the step must not fall back on defaults of its own."""
    every = [o.field for o in run_options.options_of(STEP_COMMAND)]
    return [sys.executable, "-m", "harness.cli", STEP_COMMAND, "--steps", str(steps_log), "--repeat", str(repeat),
            *req.to_argv(STEP_COMMAND, every)]


def _first_bad(output: str) -> str | None:
    for line in output.splitlines():
        if line.endswith(" is the first bad commit"):
            return line.split()[0]
    return None


def ends(repo: Path, good_ref: str, bad_ref: str) -> tuple[str, str]:
    """The commits --good and --bad name in `repo`; InputError, before any build, unless the
    good one is an older ancestor of the bad one (the same commit would cost its build and boot
    to end in "--good fails the scenario")."""
    good, bad = git.resolve(repo, good_ref), git.resolve(repo, bad_ref)
    if good == bad:
        raise InputError(f"--good {good_ref} and --bad {bad_ref} are the same commit {good[:12]}: nothing to bisect")
    if not git.is_ancestor(repo, good, bad):
        raise InputError(f"--good {good_ref} is not an ancestor of --bad {bad_ref}: nothing to bisect between them")
    return good, bad


def bisect(breq: BisectRequest) -> dict[str, Any]:
    """Check the ends, run `git bisect run`, and write bisect.json, summary and replay file."""
    started = time.monotonic()
    req = breq.run
    wt = source.work_tree(req.cache, req.package, req.tree)
    good, bad = ends(wt.repo, breq.good, breq.bad)
    out = new_output_dir(req.output, "bisect")
    steps_log = out / "steps.jsonl"
    step_req = replace(req, tree=wt.path, package=RunRequest.package)
    result: dict[str, Any] = {"source": wt.identity, "work_tree": str(wt.path), "good": good, "bad": bad,
                    "repeat": breq.repeat, "request": req.to_json(), "first_bad": None, "dir": str(out)}
    print(f"failover-harness: bisect directory {out}", flush=True)
    with source.locked(wt.lock, str(wt.path)):
        git.run(wt.path, "bisect", "reset", "--quiet", timeout_s=120)  # a bisection an interrupted run left
        for phase, commit, expected in (("check-bad", bad, "bad"), ("check-good", good, "good")):
            git.checkout(wt.path, commit)
            step = run_step(step_req, breq.repeat, phase, steps_log)
            if step.result == "skip":
                raise UntestableError(f"cannot bisect: {phase.split('-')[1]} end {commit[:12]} is untestable "
                                      f"({step.runs[-1].reasons[0] if step.runs[-1].reasons else '?'}); see {out}")
            if step.result != expected:
                what = "passes" if expected == "bad" else "fails"
                raise InputError(f"cannot bisect: --{expected} {commit[:12]} {what} the scenario "
                                 f"({step.runs[-1].run_dir}); nothing to bisect between these ends")
        git.check(wt.path, "bisect", "start", bad, good, "--")
        try:
            r = git.run(wt.path, "bisect", "run", *step_argv(step_req, breq.repeat, steps_log),
                        timeout_s=BISECT_TIMEOUT_S, log=out / "bisect-run.log")
            (out / "bisect-replay.txt").write_text(git.check(wt.path, "bisect", "log"))
        finally:
            git.run(wt.path, "bisect", "reset", "--quiet", timeout_s=120)
    first_bad = _first_bad(r.output)
    steps = load_steps(steps_log)
    result.update(
        first_bad=None if first_bad is None else {"commit": first_bad, "subject": git.subject(wt.path, first_bad)},
        verdict="FOUND" if first_bad else "UNDECIDED",
        steps=steps, confidence=confidence(steps, breq.repeat),
        step_seconds=[s["seconds"] for s in steps], total_s=round(time.monotonic() - started, 1),
        replay=str(out / "bisect-replay.txt"))
    if not first_bad:
        result["reason"] = r.tail(10)
    (out / "bisect.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "summary.txt").write_text(summary(result))
    return result


def summary(r: dict[str, Any]) -> str:
    lines = []
    if r["first_bad"]:
        lines.append(f"FOUND: first bad commit {r['first_bad']['commit']} {r['first_bad']['subject']}")
    else:
        lines.append("UNDECIDED: git bisect named no single commit (skipped commits in the way?)")
        lines += [f"  {line}" for line in r.get("reason", "").splitlines()]
    lines.append(f"  {r['source']}: good {r['good'][:12]}, bad {r['bad'][:12]}, repeat {r['repeat']}, "
                 f"{len(r['steps'])} steps in {r['total_s']:.0f}s")
    for s in r["steps"]:
        build = "/".join(f"{x['build_s']:.0f}" for x in s["runs"] if x["build_s"] is not None) or "-"
        lines.append(f"  {s['phase']:10} {s['commit'][:12]} {s['result']:4} {s['seconds']:5.0f}s "
                     f"(build {build}s; {', '.join(x['verdict'] for x in s['runs'])}) {s['subject']}")
        for x in s["runs"]:
            lines += [f"      - {reason}" for reason in x["reasons"][:3]]
    c = r["confidence"]
    if c["good_is_good"] is not None:
        lines.append(f"  a good is good with confidence {c['good_is_good']:.4f}: failure rate on bad commits "
                     f"{c['failures_on_bad']}/{c['runs_on_bad']}, {c['repeat']} run(s) per commit")
    lines.append(f"  replay: git bisect replay {r['replay']}")
    return "\n".join(lines) + "\n"
