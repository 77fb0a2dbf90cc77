"""harness.campaign.repeats: which runs a two-sided scenario needs next, as a pure function; and
a stand-in kernel that fails at a seeded rate, run through it, never reported as a clean pass."""
import random

import pytest

from harness.campaign.repeats import next_runs
from harness.judge import sides
from harness.judge.checks import Status
from harness.judge.sides import Outcome, Side, SideRun, SideState

P, F, I, U, E = Status.PASS, Status.FAIL, Status.INCONCLUSIVE, Status.UNTESTABLE, Status.ERROR
BOTH = (Side.BASE, Side.SERIES)


@pytest.mark.parametrize("base, series, wanted", [
    ([], [], BOTH),  # both start, with the same seed
    ([P], [], (Side.SERIES,)),  # the base came from the cache
    ([P], [P], ()),  # agree, nothing failed: done at one run a side
    ([I], [I], ()),  # agree (both proved nothing): repeating would not make either a pass
    ([P], [F], BOTH), ([F], [P], BOTH),  # differ: the failing side's rate, the passing side's confidence
    ([F], [F], BOTH),  # a failure is repeated even where both agree: one failure is not bad yet
    ([P], [I], BOTH),  # differ
    ([P, P], [F, P], BOTH),
    ([F, F], [F, F], ()),  # both bad whatever comes: no good side to be sure of
    ([P, P], [F, F], BOTH),  # bad already, but its rate and the other side's confidence still grow
    ([P] * 5, [F] * 5, ()),  # at the most
    ([P], [U], ()), ([E], [P], ()),  # a side that could not be tested: nothing to compare against
    ([P, U], [F, P], BOTH),  # a later infrastructure failure is just not counted
])
def test_the_policy(base, series, wanted):
    assert next_runs(base, series, 5) == wanted


def test_the_most_runs_is_an_option():
    assert next_runs([P] * 2, [F] * 2, 2) == ()
    assert next_runs([P] * 5, [F, P, P, P, P], 8) == BOTH


def simulate(fails_at: float, seed: int, max_runs: int = 5) -> sides.ScenarioComparison:
    """A good base, and a series that fails at `fails_at`: each run's fate drawn from a generator
    seeded by the run's own seed, as the runner would give it."""
    runs = {Side.BASE: [], Side.SERIES: []}
    while wanted := next_runs([r.status for r in runs[Side.BASE]], [r.status for r in runs[Side.SERIES]], max_runs):
        for side in wanted:
            run_seed = len(runs[side]) + 1
            failed = side is Side.SERIES and random.Random(seed * 1000 + run_seed).random() < fails_at
            verdict = F if failed else P
            runs[side].append(SideRun(run_seed, verdict.exit_code, {"verdict": verdict.value, "failed_checks": [], "findings": []}))
    return sides.compare("crash", runs[Side.BASE], runs[Side.SERIES])


def test_a_flaky_stand_in_is_reported_flaky_with_its_measured_rate():
    c = simulate(0.2, seed=0)  # this draw: the first run fails, then four pass
    assert c.series.verdicts == (F, P, P, P, P) and c.base.verdicts == (P,) * 5
    assert c.series.state is SideState.FLAKY and c.outcome is Outcome.FLAKY
    assert c.series.failure_rate == 0.2 and "the series fails 1 of 5 runs (20%)" in c.explanation()
    assert c.confidence == pytest.approx(1 - 0.8 ** 5)


@pytest.mark.parametrize("fails_at", [0.1, 0.3, 0.5, 0.9])
def test_a_stand_in_that_failed_is_never_a_clean_pass(fails_at):
    for seed in range(200):
        c = simulate(fails_at, seed)
        if Status.FAIL in c.series.verdicts:
            assert c.outcome in (Outcome.FLAKY, Outcome.REGRESSION), (seed, c.series.verdicts)
            assert c.series.failure_rate == c.series.verdicts.count(F) / len(c.series.verdicts)
            assert len(c.series.verdicts) == len(c.base.verdicts) == 5
        else:  # its first run passed: the one run a side that agrees; what a single run can miss
            assert c.outcome is Outcome.PASS and len(c.series.verdicts) == 1
