"""Bisection: `git bisect run` with the harness as the test, in a tree the harness owns.

A step is the scenario run on the commit checked out, up to `repeat` times, and judged by
judge/sides.py's rules, as a side of a submission is: bad (1) when at least max(2, n/6) of its n
runs FAIL, good (0) when none does; anything else (flaky, a build or boot failure, an
INCONCLUSIVE run, an infrastructure error, a config the commit cannot give) makes git skip it
(125), never "bad": a flaky or broken build must not be blamed on the wrong commit. With one run
(the default) its FAIL is bad, its PASS good. More runs are adaptive (`another_run`): a run that
failed is repeated until the commit is certainly bad, and passes go on only until a good is as
sure as CONFIDENCE_TARGET against the failure rate seen on bad commits (syzkaller's reasoning: N
passes of a commit that fails with probability p happen with probability (1-p)^N).

The ends are checked first, the bad one must fail and the good one pass. A bisection step whose
commit would build the same objects for the scenarios (kernel/objects.py) as an earlier step
takes that step's verdict without a build (`unchanged_from`), unless told not to.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import run_options
from ..kernel import git, objects, source
from ..errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, HarnessError, InputError, UntestableError
from ..judge.checks import Status
from ..judge.results import AnyResults, is_judged
from ..judge.sides import INFRASTRUCTURE, SideState, certainly_bad, good_confidence, side_state
from ..request import RunRequest, new_output_dir

BISECT_TIMEOUT_S = 24 * 3600  # the whole `git bisect run`; each step's stages have their own timeouts
CONFIDENCE_TARGET = 0.95  # a commit that passes is run until it is good with this confidence (or --repeat times)


@dataclass(frozen=True)
class BisectRequest:
    run: RunRequest  # the scenario and its options; run.tree / run.package say which repository
    good: str
    bad: str
    repeat: int = 1  # the most runs a commit gets
    skip_unchanged: bool = True  # a step that would build what an earlier one built takes its verdict

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
    state: str = ""  # judge/sides.py's SideState of the runs: what a skip was (flaky, inconclusive, untestable)
    fingerprint: str = ""  # kernel/objects.py's: what the commit builds for the scenarios
    reused_from: str | None = None  # the commit whose verdict this one took, not built: the same fingerprint


def step_state(verdicts: Sequence[str], max_runs: int) -> SideState:
    """judge/sides.py's state of the runs; with one run allowed, its FAIL makes the commit bad
    (max(2, n/6) failures cannot happen in one run)."""
    if max_runs == 1 and Status.FAIL in verdicts:
        return SideState.BAD
    return side_state(Status(v) for v in verdicts)


def step_result(verdicts: Sequence[str], max_runs: int = 1) -> str:
    """good and bad as the state says; flaky, inconclusive and untestable are a skip, never bad."""
    return {SideState.GOOD: "good", SideState.BAD: "bad"}.get(step_state(verdicts, max_runs), "skip")


def another_run(verdicts: Sequence[str], max_runs: int, failure_rate: float | None) -> bool:
    """Whether a step runs the scenario once more, from its verdicts so far: the repeat policy
    of a bisection step (campaign/repeats.py's for a submission). After a FAIL, until the
    commit is certainly bad; after passes only, until a good is good with CONFIDENCE_TARGET
    against `failure_rate` (the rate on bad commits; None before one is known: every run);
    never past `max_runs`. A run that judged nothing stops it (a build or boot failure repeats
    itself), as does an INCONCLUSIVE one without a failure (it can no longer be good)."""
    status = [Status(v) for v in verdicts]
    if not status:
        return True
    if len(status) >= max_runs or side_state(status) is SideState.UNTESTABLE:
        return False
    if Status.FAIL in status:
        return not certainly_bad(status, max_runs)
    if Status.INCONCLUSIVE in status:
        return False
    passes = status.count(Status.PASS)
    return failure_rate is None or good_confidence(failure_rate, passes) < CONFIDENCE_TARGET


STEP_EXIT = {"good": EXIT_PASS, "bad": EXIT_FAIL, "skip": EXIT_UNTESTABLE}


# One run of the scenario: its directory and results (ERROR or UNTESTABLE when it ended without a
# verdict on the kernel; results.json's dict: the runner is not typed yet).
Runner = Callable[[RunRequest], tuple[Path, AnyResults]]


def run_once(req: RunRequest) -> tuple[Path, AnyResults]:
    from ..runner import Run  # the runner imports this package's modules; keep the import cheap
    run = Run(req)
    return run.dir, run.execute_judged()


def _step_run(req: RunRequest, runner: Runner) -> StepRun:
    started = time.monotonic()
    run_dir, results = runner(req)
    verdict = results["verdict"]
    reasons = tuple(results["reasons"])
    if not Status(verdict).judged:
        reasons = (reasons[0].splitlines()[0],)  # the one line that says why; the run's directory has the rest
    findings = tuple(f"{f['title']} [{f['fingerprint']}]" for f in (results["findings"] if is_judged(results) else []))
    return StepRun(str(run_dir), verdict, reasons, findings, results["timing"].get("build_s"),
                   round(time.monotonic() - started, 1))


def unchanged_from(steps: Sequence[Mapping[str, Any]], fingerprint: str) -> Mapping[str, Any] | None:
    """The last step that ran and decided (good or bad) a commit with this fingerprint, whose
    verdict a commit that builds the same objects takes; None when there is none, or when two
    such steps disagree (the ends, say): then what decides lies outside what is compared."""
    same = [s for s in steps if s.get("fingerprint") == fingerprint and s["runs"] and s["result"] in ("good", "bad")]
    return same[-1] if same and len({s["result"] for s in same}) == 1 else None


def run_step(req: RunRequest, repeat: int, phase: str, steps_log: Path, skip_unchanged: bool = True,
             runner: Runner = run_once) -> Step:
    """Test the commit checked out in `req.tree`, with up to `repeat` runs (`another_run`); in
    the bisect phase, a commit that would build what an earlier step built takes its verdict
    instead (unless not `skip_unchanged`). The step is appended to `steps_log`."""
    tree = req.tree
    assert tree is not None
    commit = git.head(tree) or "?"
    started = time.monotonic()
    earlier = load_steps(steps_log)
    fingerprint = objects.fingerprint(tree, commit, req.flavor)
    same = unchanged_from(earlier, fingerprint) if skip_unchanged and phase == "bisect" else None
    runs: list[StepRun] = []
    if same is None:
        rate = confidence(earlier, repeat)["failure_rate_on_bad"]
        while another_run([r.verdict for r in runs], repeat, rate):
            runs.append(_step_run(replace(req, output=steps_log.parent / "steps"), runner))
        state = step_state([r.verdict for r in runs], repeat)
        result = step_result([r.verdict for r in runs], repeat)
    else:
        state, result = same.get("state") or same["result"], same["result"]
    step = Step(phase, commit, git.subject(tree, commit), result, tuple(runs), round(time.monotonic() - started, 1),
                str(state), fingerprint, None if same is None else same["commit"])
    with open(steps_log, "a") as f:
        f.write(json.dumps(asdict(step)) + "\n")
    print(f"failover-harness: bisect {phase} {commit[:12]} {step.result} ({described(asdict(step))}) {step.subject}",
          flush=True)
    if same is not None:
        print(f"failover-harness: {objects.COMPARED_TEXT} unchanged; {objects.NOT_COMPARED}", flush=True)
    return step


def described(s: Mapping[str, Any]) -> str:
    """A step's runs, in a few words: reused, or each run's verdict and build time, and what a skip was."""
    if s.get("reused_from"):
        return f"unchanged from {s['reused_from'][:12]}: {s['result']}, not built"
    build = "/".join(f"{x['build_s']:.0f}" for x in s["runs"] if x["build_s"] is not None) or "-"
    said = f"{s['seconds']:.0f}s, build {build}s; {', '.join(x['verdict'] for x in s['runs'])}"
    if s["result"] == "skip" and s.get("state") == SideState.FLAKY:
        judged = [x for x in s["runs"] if Status(x["verdict"]) not in INFRASTRUCTURE]
        fails = sum(x["verdict"] == Status.FAIL for x in judged)
        said += f"; flaky: {fails} of {len(judged)} runs failed ({fails / len(judged):.0%})"
    elif s["result"] == "skip" and s.get("state"):
        said += f"; {s['state']}"
    return said


def load_steps(steps_log: Path) -> list[dict[str, Any]]:
    if not steps_log.exists():
        return []
    return [json.loads(line) for line in steps_log.read_text().splitlines() if line.strip()]


def confidence(steps: Sequence[Mapping[str, Any]], repeat: int) -> dict[str, Any]:
    """How likely a "good" is right, from the failure rate seen on the commits found bad: the
    good that passed the fewest runs (a reused step ran none: its source counts) is the least sure."""
    bad_runs = [r for s in steps if s["result"] == "bad" for r in s["runs"]]
    failures = sum(r["verdict"] == Status.FAIL for r in bad_runs)
    judged = [r for r in bad_runs if Status(r["verdict"]) not in INFRASTRUCTURE]
    rate = failures / len(judged) if judged else None
    passes = [sum(r["verdict"] == Status.PASS for r in s["runs"]) for s in steps if s["result"] == "good" and s["runs"]]
    least = min(passes, default=repeat)
    return {"failure_rate_on_bad": None if rate is None else round(rate, 3),
            "runs_on_bad": len(judged), "failures_on_bad": failures, "repeat": repeat, "passes_on_least_good": least,
            "good_is_good": None if rate is None else round(good_confidence(rate, least), 4)}


STEP_COMMAND = "_bisect-step"  # the hidden command `git bisect run` runs


NO_SKIP_UNCHANGED = "--no-skip-unchanged"


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The step's own options, beside the run options RunRequest adds (step_argv spells both)."""
    p.add_argument("--steps", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(NO_SKIP_UNCHANGED, action="store_true")


def step_argv(req: RunRequest, repeat: int, steps_log: Path, skip_unchanged: bool = True) -> list[str]:
    """The command `git bisect run` runs: this harness's hidden step command, with every option
    of the request spelled out: the step must not fall back on defaults of its own."""
    every = [o.field for o in run_options.options_of(STEP_COMMAND)]
    return [sys.executable, "-m", "harness.cli", STEP_COMMAND, "--steps", str(steps_log), "--repeat", str(repeat),
            *([] if skip_unchanged else [NO_SKIP_UNCHANGED]), *req.to_argv(STEP_COMMAND, every)]


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


def end_refusal(step: Step, expected: str, out: Path) -> HarnessError | None:
    """Why the end checked by `step` (expected "bad" or "good") leaves nothing to bisect, if it does:
    it is flaky (exit 2: neither end it must be), untestable (125) or the other end (2)."""
    commit = step.commit[:12]
    if step.state == SideState.FLAKY:
        return InputError(f"cannot bisect: --{expected} {commit} is flaky ({described(asdict(step))}): "
                          f"neither bad nor good; see {out}")
    if step.result == "skip":
        return UntestableError(f"cannot bisect: {expected} end {commit} is untestable "
                               f"({step.runs[-1].reasons[0] if step.runs[-1].reasons else '?'}); see {out}")
    if step.result != expected:
        what = "passes" if expected == "bad" else "fails"
        return InputError(f"cannot bisect: --{expected} {commit} {what} the scenario "
                          f"({step.runs[-1].run_dir}); nothing to bisect between these ends")
    return None


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
                              "repeat": breq.repeat, "skip_unchanged": breq.skip_unchanged, "request": req.to_json(),
                              "first_bad": None, "dir": str(out)}
    print(f"failover-harness: bisect directory {out}", flush=True)
    with source.locked(wt.lock, str(wt.path)):
        git.run(wt.path, "bisect", "reset", "--quiet", timeout_s=120)  # a bisection an interrupted run left
        for phase, commit, expected in (("check-bad", bad, "bad"), ("check-good", good, "good")):
            git.checkout(wt.path, commit)
            refusal = end_refusal(run_step(step_req, breq.repeat, phase, steps_log), expected, out)
            if refusal is not None:
                raise refusal
        git.check(wt.path, "bisect", "start", bad, good, "--")
        try:
            r = git.run(wt.path, "bisect", "run", *step_argv(step_req, breq.repeat, steps_log, breq.skip_unchanged),
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
    reused = sum(bool(s.get("reused_from")) for s in r["steps"])
    lines.append(f"  {r['source']}: good {r['good'][:12]}, bad {r['bad'][:12]}, up to {r['repeat']} run(s) a commit, "
                 f"{len(r['steps'])} steps ({reused} unchanged, not built) in {r['total_s']:.0f}s")
    for s in r["steps"]:
        mark = "=" if s.get("reused_from") else " "
        lines.append(f"  {s['phase']:10} {s['commit'][:12]} {s['result']:4}{mark}({described(s)}) {s['subject']}")
        for x in s["runs"]:
            lines += [f"      - {reason}" for reason in x["reasons"][:3]]
    if reused:
        lines.append(f"  = unchanged: {objects.COMPARED_TEXT} as at the commit named; {objects.NOT_COMPARED} "
                     f"({NO_SKIP_UNCHANGED} builds every step)")
    c = r["confidence"]
    if c["good_is_good"] is not None:
        lines.append(f"  a good is good with confidence {c['good_is_good']:.4f}: failure rate on bad commits "
                     f"{c['failures_on_bad']}/{c['runs_on_bad']}, {c['passes_on_least_good']} passing run(s) "
                     f"on the least tried good")
    lines.append(f"  replay: git bisect replay {r['replay']}")
    return "\n".join(lines) + "\n"
