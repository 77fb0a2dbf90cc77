"""Which runs a two-sided scenario needs next: the repeat policy, a pure function of the
verdicts so far (judge/sides.py says what the verdicts mean).

Both sides start with one run each, with the same seed. A scenario whose two runs agree and did
not fail is done: the common case costs a run a side. A run that failed, or whose verdict
differs from the other side's, is repeated, on both sides in step (the k-th run of each side
has the same seed, so the sides stay comparable run for run), up to `max_runs` a side: the
side that fails gets its failure rate measured, the side that passes gets the runs its
confidence is counted from. It stops early when nothing more can change the outcome: both
sides bad already (no good side to be sure of), or a side that could not be tested at all
(a build or boot failure repeats itself, and there is nothing to compare against).
"""
from __future__ import annotations

from typing import Sequence

from ..judge.checks import Status
from ..judge.sides import INFRASTRUCTURE, Side, SideState, certainly_bad, side_state

DEFAULT_MAX_RUNS = 5


def _judged(verdicts: Sequence[Status]) -> set[Status]:
    return {v for v in verdicts if v not in INFRASTRUCTURE}


def worth_repeating(base: Sequence[Status], series: Sequence[Status]) -> bool:
    """A run failed, or the sides' verdicts differ."""
    return Status.FAIL in (*base, *series) or _judged(base) != _judged(series)


def next_runs(base: Sequence[Status], series: Sequence[Status], max_runs: int = DEFAULT_MAX_RUNS) -> tuple[Side, ...]:
    """The sides to run once more (with the seed of their next run), () when the scenario is done."""
    so_far = {Side.BASE: list(base), Side.SERIES: list(series)}
    if missing := tuple(side for side, v in so_far.items() if not v):
        return missing
    if any(side_state(v) is SideState.UNTESTABLE for v in so_far.values()):
        return ()
    if not worth_repeating(base, series):
        return ()
    if all(certainly_bad(v, max_runs) for v in so_far.values()):
        return ()
    return tuple(side for side, v in so_far.items() if len(v) < max_runs)
