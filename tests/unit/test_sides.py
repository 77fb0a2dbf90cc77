"""harness.judge.sides: a side judged from its runs, and every pair of sides classified."""
import pytest

from harness.errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE, EXIT_USAGE
from harness.judge import sides
from harness.judge.checks import Status
from harness.judge.known import Kind, KnownIssue, KnownIssues
from harness.judge.sides import CheckState, Outcome, SideRun, SideState, Submission

P, F, I, U, E = Status.PASS, Status.FAIL, Status.INCONCLUSIVE, Status.UNTESTABLE, Status.ERROR


@pytest.mark.parametrize("verdicts, state", [
    ([P], SideState.GOOD), ([P] * 5, SideState.GOOD),
    ([F], SideState.FLAKY),  # one failure alone is not bad: max(2, n/6)
    ([F, F], SideState.BAD), ([F, P, F, P, P], SideState.BAD), ([F, P, P, P, P], SideState.FLAKY),
    ([F] * 4 + [P] * 26, SideState.FLAKY), ([F] * 5 + [P] * 25, SideState.BAD),  # n/6 of 30 is 5
    ([I], SideState.INCONCLUSIVE), ([P, I, P], SideState.INCONCLUSIVE), ([I, F], SideState.FLAKY),
    ([U], SideState.UNTESTABLE), ([E, U], SideState.UNTESTABLE),
    ([P, U], SideState.GOOD), ([F, E, F], SideState.BAD),  # an infrastructure failure is not counted at all
    ([], SideState.UNTESTABLE),
])
def test_a_side_is_judged_from_all_its_runs(verdicts, state):
    assert sides.side_state(verdicts) is state


def test_certainly_bad_is_bad_whatever_the_remaining_runs_give():
    assert sides.certainly_bad([F, F], 5) and not sides.certainly_bad([F], 5)
    assert not sides.certainly_bad([F, F], 30) and sides.certainly_bad([F] * 5, 30)


# Every pair of side states (rows: the base, columns: the series); "pre/diff" is pre-existing when
# the sides fail the same way, still-failing-differently when not.
TABLE = """
              good          bad           flaky   inconclusive  untestable
good          pass          regression    flaky   inconclusive  untestable
bad           fixed         pre/diff      flaky   inconclusive  untestable
flaky         flaky         flaky         flaky   flaky         untestable
inconclusive  inconclusive  inconclusive  flaky   inconclusive  untestable
untestable    untestable    untestable    untestable untestable untestable
"""


def table() -> list[tuple[SideState, SideState, bool, Outcome]]:
    head, *rows = [line.split() for line in TABLE.strip().splitlines()]
    out = []
    for base, *cells in rows:
        for series, cell in zip(head, cells, strict=True):
            for same in (True, False):
                outcome = ("pre-existing" if same else "still-failing-differently") if cell == "pre/diff" else cell
                out.append((SideState(base), SideState(series), same, Outcome(outcome)))
    return out


@pytest.mark.parametrize("base, series, same, outcome", table())
def test_every_combination_is_classified(base, series, same, outcome):
    assert sides.classify(base, series, same) is outcome


def test_the_table_covers_every_pair():
    assert {(b, s) for b, s, _, _ in table()} == {(b, s) for b in SideState for s in SideState}


def run(verdict: Status, checks=(), fingerprints=(), seed=1, code=None) -> SideRun:
    if verdict in (U, E):
        results = {"verdict": verdict.value, "reasons": ["the build failed"], "failed_checks": []}
    else:
        results = {"verdict": verdict.value, "reasons": [f"{c} failed" for c in checks],
                   "failed_checks": list(checks) + (["splat"] if fingerprints else []), "missing_evidence": [],
                   "findings": [{"fingerprint": fp, "title": f"WARNING in f{fp[:2]}"} for fp in fingerprints]}
    return SideRun(seed, verdict.exit_code if code is None else code, results)


@pytest.mark.parametrize("base, series, same", [
    ([run(F, ["checksum"])], [run(F, ["checksum"])], True),
    ([run(F, ["checksum"])], [run(F, ["stall"])], False),
    # the same finding is the same bug, whatever else failed beside it
    ([run(F, ["stall"], ["aaaaaaaaaaaa"])], [run(F, ["checksum"], ["aaaaaaaaaaaa"])], True),
    # both fail only on the console, with different findings: `splat` alike is not the same failure
    ([run(F, [], ["aaaaaaaaaaaa"])], [run(F, [], ["bbbbbbbbbbbb"])], False),
    # a finding the base never showed is news, though the checks agree
    ([run(F, ["checksum"])], [run(F, ["checksum"], ["bbbbbbbbbbbb"])], False),
    # one the series no longer shows is not
    ([run(F, ["checksum"], ["aaaaaaaaaaaa"])], [run(F, ["checksum"])], True),
])
def test_the_same_failures(base, series, same):
    assert sides.same_failures(sides.SideSummary(tuple(base)), sides.SideSummary(tuple(series))) is same


def test_the_confidence_of_a_good_side_is_counted_from_the_other_sides_rate():
    c = sides.compare("crash", [run(P)] * 5, [run(F), run(P), run(F), run(P), run(P)])
    assert c.outcome is Outcome.REGRESSION and c.series.failure_rate == 0.4
    assert c.confidence == pytest.approx(1 - 0.6 ** 5)
    assert sides.compare("crash", [run(P)], [run(P)]).confidence is None
    assert sides.compare("crash", [run(F)] * 2, [run(F)] * 2).confidence is None
    assert sides.good_confidence(0.5, 3) == 0.875


def submission(*pairs, known=KnownIssues()) -> Submission:
    return Submission(tuple(sides.compare(f"s{i}", b, s) for i, (b, s) in enumerate(pairs)), known)


def test_a_tested_by_only_when_every_scenario_passes_on_the_series():
    good = ([run(P)], [run(P)])
    assert submission(good, good).tested
    assert submission(good, ([run(F)] * 2, [run(P)] * 2)).tested  # fixed: the series passes
    for other in (([run(P)] * 2, [run(F)] * 2), ([run(P)], [run(I)]), ([run(I)], [run(P)]), ([run(P)], [run(U)]),
                  ([run(P)] * 5, [run(F)] + [run(P)] * 4), ([run(F)] * 2, [run(F)] * 2)):
        assert not submission(good, other).tested, other
    assert not Submission(()).tested


def test_the_exit_code_and_the_check_states():
    good = ([run(P)], [run(P)])
    regression = ([run(P)] * 2, [run(F, ["stall"])] * 2)
    pre_existing = ([run(F, ["stall"])] * 2, [run(F, ["stall"])] * 2)
    assert submission(good).exit_code() == EXIT_PASS
    assert submission(good, regression).exit_code() == EXIT_FAIL
    assert submission(good, pre_existing).exit_code() == EXIT_UNTESTABLE
    assert submission(good, ([run(P)], [run(E, code=2)])).exit_code() == EXIT_USAGE  # a patch that does not apply
    assert submission(good, ([run(P)], [run(U)])).exit_code() == EXIT_UNTESTABLE
    known = KnownIssues((KnownIssue(Kind.CHECK, "stall", "TCG is slow"),))
    sub = submission(good, pre_existing, known=known)
    assert [sub.state(c) for c in sub.comparisons] == [CheckState.SUCCESS, CheckState.SUCCESS]
    assert sub.is_known(sub.comparisons[1]) and sub.exit_code() == EXIT_PASS
    assert sub.headline is Outcome.PRE_EXISTING and sub.worst_state is CheckState.SUCCESS


def test_findings_are_listed_once_with_where_they_showed():
    sub = submission(([run(F, [], ["aaaaaaaaaaaa"])] * 2, [run(F, [], ["aaaaaaaaaaaa"])] * 2),
                     ([run(P)], [run(F, ["stall"], ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])]))
    found = sub.findings()
    assert [f.fingerprint for f in found] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert found[0].where_text == "s0 (base, 2x), s0 (series, 2x), s1 (series, 1x)"
