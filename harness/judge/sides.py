"""A scenario judged on two sides, the base and the base with the series, each from one or more
runs with the same seeds: what a maintainer asks of a CI reply (did the series cause it or was
it there before, and how sure are you).

A side is judged from all its runs, since one run of a kernel that fails one time in five says
little either way:

- bad: at least max(2, n/6) of its n judged runs FAILed (one failure alone may be the bad luck
  of one schedule; the other side has the same seeds and the same chances);
- good: none FAILed, none was INCONCLUSIVE, one PASSed at least;
- flaky: some FAILed, fewer than bad;
- inconclusive: none FAILed, and one was INCONCLUSIVE: a failover path the scenario exists for
  never ran, which is not a pass; nor is it a failure of the kernel. It is conservative on
  purpose: such a side is never good, so no scenario it touches is a pass or gets a Tested-by;
- untestable: no run judged the kernel. ERROR and UNTESTABLE (a build or boot failure, a series
  that does not apply, the harness's own failure) never count as a failure of the kernel, on
  either side: they are left out of n, and a side with nothing else cannot be compared.

A good side's confidence is syzkaller's (and `bisect`'s): had it failed as often as the other
side did (p, the failure rate measured there), n passing runs would have happened with
probability (1-p)^n, so it is good with confidence 1-(1-p)^n.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence

from ..errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, worst
from .checks import Check, Status
from .known import Kind, KnownIssue, KnownIssues, Label
from .results import AnyResults, is_judged

INFRASTRUCTURE = frozenset({Status.ERROR, Status.UNTESTABLE})


class Side(str, Enum):
    BASE = "base"
    SERIES = "series"

    def __str__(self) -> str:
        return self.value


class SideState(str, Enum):
    GOOD = "good"
    BAD = "bad"
    FLAKY = "flaky"
    INCONCLUSIVE = "inconclusive"
    UNTESTABLE = "untestable"

    def __str__(self) -> str:
        return self.value


def bad_threshold(runs: int) -> float:
    """How many of `runs` judged runs must FAIL for a side to be bad."""
    return max(2.0, runs / 6)


def side_state(verdicts: Iterable[Status]) -> SideState:
    verdicts = [Status(v) for v in verdicts]
    judged = [v for v in verdicts if v not in INFRASTRUCTURE]
    fails = judged.count(Status.FAIL)
    if not judged:
        return SideState.UNTESTABLE
    if fails >= bad_threshold(len(judged)):
        return SideState.BAD
    if fails:
        return SideState.FLAKY
    return SideState.INCONCLUSIVE if Status.INCONCLUSIVE in judged else SideState.GOOD


def certainly_bad(verdicts: Sequence[Status], max_runs: int) -> bool:
    """Bad however the runs still allowed (up to `max_runs`) turn out."""
    return list(verdicts).count(Status.FAIL) >= bad_threshold(max_runs)


def good_confidence(failure_rate: float, runs: int) -> float:
    """How sure `runs` passes make a good side good, against a side that fails at `failure_rate`."""
    return 1 - (1 - failure_rate) ** runs


@dataclass(frozen=True)
class SideRun:
    """One run of a side: the child's exit code and its results.json."""
    seed: int
    code: int
    results: AnyResults
    reused: bool = False  # the base's results, cached by an earlier submission (campaign/basecache.py)

    @property
    def status(self) -> Status:
        return Status(self.results["verdict"])


@dataclass(frozen=True)
class SideSummary:
    runs: tuple[SideRun, ...] = ()

    @property
    def verdicts(self) -> tuple[Status, ...]:
        return tuple(r.status for r in self.runs)

    @property
    def state(self) -> SideState:
        return side_state(self.verdicts)

    @property
    def judged(self) -> int:
        """Runs that judged the kernel: the n of the rules."""
        return sum(v not in INFRASTRUCTURE for v in self.verdicts)

    @property
    def failures(self) -> int:
        return self.verdicts.count(Status.FAIL)

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.judged if self.judged else None

    @property
    def failed_checks(self) -> frozenset[str]:
        """The slugs any FAIL run failed, but `splat`: a finding is known by its fingerprint."""
        return frozenset(slug for r in self.runs if r.status is Status.FAIL
                         for slug in r.results["failed_checks"] if slug != Check.SPLAT.slug)

    @property
    def fingerprints(self) -> frozenset[str]:
        return frozenset(f["fingerprint"] for r in self.runs if is_judged(r.results) for f in r.results["findings"])

    @property
    def failure_keys(self) -> set[tuple[Kind, str]]:
        """Each failure as a known-issues file names it."""
        return {(Kind.CHECK, c) for c in self.failed_checks} | {(Kind.FINGERPRINT, f) for f in self.fingerprints}

    @property
    def reused(self) -> int:
        return sum(r.reused for r in self.runs)

    @property
    def cell(self) -> str:
        """Short, for a table: the state, then failed/judged runs."""
        return str(self.state) if self.state is SideState.UNTESTABLE else f"{self.state} {self.failures}/{self.judged}"

    def first_reason(self) -> str:
        """Why the first run that did not PASS did not (its first line)."""
        for r in self.runs:
            if r.status is not Status.PASS:
                res = r.results
                lines = res["reasons"] or (res["missing_evidence"] if is_judged(res) else []) or [str(r.status)]
                return (lines[0].splitlines() or [""])[0]
        return ""


class Outcome(str, Enum):
    """A scenario's verdict on the series. Declaration order is severity order: the headline of
    a submission is its first outcome in this order."""
    REGRESSION = "regression"  # the base good, the series bad
    STILL_FAILING_DIFFERENTLY = "still-failing-differently"  # both bad, not the same failures
    FLAKY = "flaky"  # a side fails sometimes: not a clean pass, its rate said
    UNTESTABLE = "untestable"  # a side could not be tested: no verdict on the kernel
    INCONCLUSIVE = "inconclusive"  # a side proved nothing on a path the scenario needs
    PRE_EXISTING = "pre-existing"  # both bad, with the same failures
    FIXED = "fixed"  # the base bad, the series good
    PASS = "pass"  # both good

    def __str__(self) -> str:
        return self.value


def same_failures(base: SideSummary, series: SideSummary) -> bool:
    """Both sides fail the same way: the same failed checks, or the same findings; a finding the
    base never showed is news whatever the checks say."""
    if series.fingerprints - base.fingerprints:
        return False
    return base.failed_checks == series.failed_checks or bool(base.fingerprints) and \
        base.fingerprints == series.fingerprints


def classify(base: SideState, series: SideState, same: bool) -> Outcome:
    """The table of every pair of states. A side that could not be tested leaves nothing to
    compare; a flaky side's failures are the kernel's and are said before what an INCONCLUSIVE
    side did not prove; neither is ever a pass."""
    states = {base, series}
    if SideState.UNTESTABLE in states:
        return Outcome.UNTESTABLE
    if SideState.FLAKY in states:
        return Outcome.FLAKY
    if SideState.INCONCLUSIVE in states:
        return Outcome.INCONCLUSIVE
    if base is SideState.GOOD:
        return Outcome.PASS if series is SideState.GOOD else Outcome.REGRESSION
    if series is SideState.GOOD:
        return Outcome.FIXED
    return Outcome.PRE_EXISTING if same else Outcome.STILL_FAILING_DIFFERENTLY


class CheckState(str, Enum):
    """What a scenario's outcome says of the series, in the Patchwork checks API's states."""
    SUCCESS = "success"
    WARNING = "warning"
    FAIL = "fail"

    @property
    def exit_code(self) -> int:
        return {CheckState.SUCCESS: EXIT_PASS, CheckState.WARNING: EXIT_UNTESTABLE, CheckState.FAIL: EXIT_FAIL}[self]


# Only what the series made worse fails it; what it cannot be blamed for, or what could not be
# told, is a warning; a pre-existing failure that a known-issues entry explains is a success.
OUTCOME_STATE = {
    Outcome.PASS: CheckState.SUCCESS, Outcome.FIXED: CheckState.SUCCESS, Outcome.PRE_EXISTING: CheckState.WARNING,
    Outcome.REGRESSION: CheckState.FAIL, Outcome.STILL_FAILING_DIFFERENTLY: CheckState.FAIL,
    Outcome.FLAKY: CheckState.WARNING, Outcome.INCONCLUSIVE: CheckState.WARNING, Outcome.UNTESTABLE: CheckState.WARNING,
}
TESTED = frozenset({Outcome.PASS, Outcome.FIXED})  # the series passes: what a Tested-by may vouch for


def _rate(s: SideSummary) -> str:
    return f"{s.failures} of {s.judged} runs ({(s.failure_rate or 0):.0%})"


def _failures(s: SideSummary) -> str:
    what = [*sorted(s.failed_checks), *(f"finding {fp}" for fp in sorted(s.fingerprints))]
    return ", ".join(what) or "?"


@dataclass(frozen=True)
class ScenarioComparison:
    scenario: str
    base: SideSummary
    series: SideSummary

    @property
    def outcome(self) -> Outcome:
        return classify(self.base.state, self.series.state, same_failures(self.base, self.series))

    def side(self, side: Side) -> SideSummary:
        return self.base if side is Side.BASE else self.series

    @property
    def good_side(self) -> Side | None:
        """The side that is good against one that failed (bad or flaky): the one a confidence is for."""
        for good, other in ((Side.BASE, Side.SERIES), (Side.SERIES, Side.BASE)):
            if self.side(good).state is SideState.GOOD and self.side(other).state in (SideState.BAD, SideState.FLAKY):
                return good
        return None

    @property
    def confidence(self) -> float | None:
        """How sure the good side is good, from the failure rate of the other side."""
        if (good := self.good_side) is None:
            return None
        other = self.series if good is Side.BASE else self.base
        return good_confidence(other.failure_rate or 0.0, self.side(good).judged)

    def sureness(self) -> str:
        """The confidence, said: "" when there is none."""
        return "" if self.confidence is None else f"the {self.good_side} is good with confidence {self.confidence:.4f}"

    def explanation(self) -> str:
        """One sentence on why the outcome is what it is (plain text: the reply and report wrap it)."""
        b, s, o = self.base, self.series, self.outcome
        sure = f"; {self.sureness()}" if self.confidence is not None else ""
        if o is Outcome.PASS:
            return f"passes on both sides ({b.judged} and {s.judged} runs)"
        if o is Outcome.REGRESSION:
            return f"the series fails {_rate(s)}, the base none of {b.judged}{sure}; failed: {_failures(s)}"
        if o is Outcome.FIXED:
            return f"the base fails {_rate(b)}, the series none of {s.judged}{sure}"
        if o is Outcome.PRE_EXISTING:
            return f"fails on the base too, the same way ({_failures(s)}): not the series' doing"
        if o is Outcome.STILL_FAILING_DIFFERENTLY:
            return f"fails on both sides, differently: base {_failures(b)}; series {_failures(s)}"
        if o is Outcome.FLAKY:
            flaky = [f"the {side} fails {_rate(self.side(side))}" for side in Side
                     if self.side(side).state is SideState.FLAKY]
            return f"flaky, not a clean pass: {'; '.join(flaky)}{sure}"
        if o is Outcome.INCONCLUSIVE:
            side = next(x for x in Side if self.side(x).state is SideState.INCONCLUSIVE)
            return f"the {side} proved nothing on a path the scenario needs ({self.side(side).first_reason()}): " \
                   f"neither a pass nor a failure"
        side = next(x for x in Side if self.side(x).state is SideState.UNTESTABLE)
        return f"the {side} could not be tested ({self.side(side).first_reason()}): no verdict on the kernel"


def compare(scenario: str, base: Sequence[SideRun], series: Sequence[SideRun]) -> ScenarioComparison:
    return ScenarioComparison(scenario, SideSummary(tuple(base)), SideSummary(tuple(series)))


@dataclass(frozen=True)
class FindingSeen:
    """A kernel finding, once, with where it showed: (scenario, side, runs)."""
    fingerprint: str
    title: str
    where: tuple[tuple[str, Side, int], ...]
    label: Label = Label.NEW
    issue: KnownIssue | None = None

    @property
    def where_text(self) -> str:
        return ", ".join(f"{scenario} ({side}, {n}x)" for scenario, side, n in self.where)


@dataclass(frozen=True)
class Submission:
    """Every scenario's comparison, with the known issues that explain some of its failures."""
    comparisons: tuple[ScenarioComparison, ...]
    known: KnownIssues = field(default_factory=KnownIssues)

    def state(self, c: ScenarioComparison) -> CheckState:
        if c.outcome is Outcome.PRE_EXISTING and self.known.covers(c.series.failure_keys):
            return CheckState.SUCCESS
        return OUTCOME_STATE[c.outcome]

    def is_known(self, c: ScenarioComparison) -> bool:
        return c.outcome is Outcome.PRE_EXISTING and self.state(c) is CheckState.SUCCESS

    @property
    def worst_state(self) -> CheckState:
        states = {self.state(c) for c in self.comparisons}
        return next((s for s in reversed(CheckState) if s in states), CheckState.WARNING)

    def labelled_runs(self) -> list[tuple[str, Side, SideRun]]:
        """Every run, named by its scenario, side and seed (and whether it came from the cache)."""
        return [(f"{c.scenario}, {side}, seed {r.seed}" + (", cached" if r.reused else ""), side, r)
                for c in self.comparisons for side in Side for r in c.side(side).runs]

    @property
    def headline(self) -> Outcome:
        outcomes = {c.outcome for c in self.comparisons}
        return next((o for o in Outcome if o in outcomes), Outcome.UNTESTABLE)

    @property
    def tested(self) -> bool:
        """Every scenario passes on the series, none regressed, no side was inconclusive or
        untestable: what a Tested-by may say."""
        return bool(self.comparisons) and all(c.outcome in TESTED for c in self.comparisons)

    def exit_code(self) -> int:
        """The worst: 1 when the series made a scenario worse; for a side that could not be
        tested its runs' own codes (2 when the input was wrong, e.g. a patch does not apply);
        125 for any other warning; 0."""
        codes = []
        for c in self.comparisons:
            if c.outcome is Outcome.UNTESTABLE:
                codes += [r.code for r in c.base.runs + c.series.runs if r.status in INFRASTRUCTURE]
            else:
                codes.append(self.state(c).exit_code)
        return worst(codes)

    def findings(self) -> list[FindingSeen]:
        """Each finding once, by fingerprint, in the order first seen, labelled by the known issues."""
        titles: dict[str, str] = {}
        where: dict[str, dict[tuple[str, Side], int]] = {}
        for c in self.comparisons:
            for side in Side:
                for r in c.side(side).runs:
                    for f in r.results["findings"] if is_judged(r.results) else []:
                        titles.setdefault(f["fingerprint"], f["title"])
                        seen = where.setdefault(f["fingerprint"], {})
                        seen[(c.scenario, side)] = seen.get((c.scenario, side), 0) + 1
        out = []
        for fp, title in titles.items():
            label, issue = self.known.label(Kind.FINGERPRINT, fp)
            out.append(FindingSeen(fp, title, tuple((s, side, n) for (s, side), n in where[fp].items()), label, issue))
        return out

    def checks_labelled(self) -> list[tuple[str, Label, KnownIssue]]:
        """The failed checks a known-issues entry names (holding or expired), once each."""
        slugs = dict.fromkeys(slug for c in self.comparisons for side in Side for slug in sorted(c.side(side).failed_checks))
        out = []
        for slug in slugs:
            label, issue = self.known.label(Kind.CHECK, slug)
            if issue is not None:
                out.append((slug, label, issue))
        return out


def submission_method(max_runs: int) -> str:
    """How a submission is tested and judged, in a paragraph for a reader of its report or reply."""
    return (f"Each scenario ran on the base and on the base with the series, with the same seeds; a run "
            f"that failed, or whose verdict differed from the other side's, was repeated, up to {max_runs} "
            f"runs a side. A side (its state, then failed/judged runs) is bad when at least max(2, n/6) of its "
            f"n runs fail, flaky when fewer do; a good side is good with confidence 1-(1-p)^n, p the failure "
            f"rate of the other side. A build, boot or harness failure is never counted as a failure of the "
            f"kernel.")
