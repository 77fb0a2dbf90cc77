"""Mutation testing: kernels broken on purpose, each of which a scenario must catch.

A mutant is a patch (`tests/mutants/NAME.patch`, as `git format-patch` writes it, or any one mail
`git am` takes) whose trailers say what it undoes and how to catch it:

    Mutant-Undoes: cachefiles: add restore command to recover inflight ondemand read requests
    Mutant-Scenario: crash
    Mutant-Flavor: plain
    Mutant-Faults: 8
    Mutant-Expect: stall

Mutant-Faults is the number of the scenario's own faults: SIGKILLs for crash, adversarial,
supervised and cache-death (whose other faults stay as the scenario has them), anon fd closes for close-fds, both for combined
(crash-points has its own plan and ignores it).

`mutate` applies each mutant alone on the base (the series machinery: `git am` in the harness's
own tree, so only the touched objects rebuild), runs its scenario, and calls it killed when the
verdict is not PASS, by the checks the results name. The unmutated base runs first with every
scenario the mutants use, and must PASS: a mutant is only "caught" by a scenario that passes
without it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..judge.checks import VERDICT_CHECKS, Status
from ..judge.results import AnyResults, is_judged
from ..kernel import series
from ..kernel.kconfig import FLAVORS
from ..request import RunRequest, new_output_dir
from ..scenarios import SCENARIOS

MUTANT_DIR = Path(__file__).resolve().parents[2] / "tests" / "mutants"
# an INCONCLUSIVE run kills a mutant too (its scenario should have exercised the path), by no check
MISSING_EVIDENCE = "missing-evidence"
EXPECTABLE = tuple(c.slug for c in VERDICT_CHECKS) + (MISSING_EVIDENCE,)
TRAILERS = ("Undoes", "Scenario", "Flavor", "Faults", "Expect")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: Path
    subject: str
    undoes: str
    scenario: str
    flavor: str
    faults: int
    expect: str

    @property
    def cost(self) -> tuple[int, int, int]:
        """Cheapest first: plain before debug (no KASAN build, no x3 timeouts), then the shorter
        scenario (crash's kills come faster than close-fds' closes; combined has 4 readers), then
        fewer faults."""
        return (FLAVORS_COST.get(self.flavor, 9), SCENARIO_COST.get(self.scenario, 9), self.faults)


FLAVORS_COST = {"plain": 0, "debug": 1}
SCENARIO_COST = {"crash": 0, "crash-points": 1, "close-fds": 1, "cache-death": 1, "combined": 2, "adversarial": 2,
                 "supervised": 2}


def parse(path: Path) -> Mutant:
    """One mutant patch; InputError names the file and what is missing or wrong.

    Read as the series it is applied as (`git am`'s reading): a mail as `git format-patch`
    writes it, or a plain one (From: and Subject:, the message, then a git or unified diff)."""
    patches = series.load(path)
    if len(patches) != 1:
        raise InputError(f"{path}: {len(patches)} patches; a mutant is one")
    (patch,) = patches
    trailers: dict[str, str] = {}
    for line in series.commit_message(patch.text).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("Mutant-"):
            trailers[key.removeprefix("Mutant-")] = value.strip()
    missing = [k for k in TRAILERS if not trailers.get(k)]
    if missing:
        raise InputError(f"{path}: missing trailer(s) {', '.join('Mutant-' + k for k in missing)}")
    if trailers["Scenario"] not in SCENARIOS:
        raise InputError(f"{path}: Mutant-Scenario {trailers['Scenario']!r} is not one of {', '.join(SCENARIOS)}")
    if trailers["Flavor"] not in FLAVORS:
        raise InputError(f"{path}: Mutant-Flavor {trailers['Flavor']!r} is not one of {', '.join(FLAVORS)}")
    if trailers["Expect"] not in EXPECTABLE:
        raise InputError(f"{path}: Mutant-Expect {trailers['Expect']!r} is not one of {', '.join(EXPECTABLE)}")
    if not trailers["Faults"].isdigit():
        raise InputError(f"{path}: Mutant-Faults {trailers['Faults']!r} is not a number")
    return Mutant(path.stem, path, patch.subject, trailers["Undoes"], trailers["Scenario"], trailers["Flavor"],
                  int(trailers["Faults"]), trailers["Expect"])


def load(directory: Path = MUTANT_DIR, names: tuple[str, ...] = ()) -> tuple[Mutant, ...]:
    found = {p.stem: p for p in sorted(directory.glob("*.patch"))}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise InputError(f"unknown mutant(s) {', '.join(unknown)} (in {directory}: {', '.join(found) or 'none'})")
    return tuple(parse(found[n]) for n in (names or tuple(found)))


def killed_by(results: AnyResults) -> tuple[str, ...]:
    """The slugs of the checks that failed a run (results.json's `failed_checks`), and
    MISSING_EVIDENCE when it was INCONCLUSIVE; empty for a PASS (and for ERROR, UNTESTABLE)."""
    if not is_judged(results):
        return ()
    marker = (MISSING_EVIDENCE,) if results["verdict"] == Status.INCONCLUSIVE else ()
    return tuple(results["failed_checks"]) + marker


@dataclass(frozen=True)
class Outcome:
    name: str
    kind: str  # "baseline" or "mutant"
    scenario: str
    flavor: str
    faults: int
    verdict: str
    killed_by: tuple[str, ...]
    expect: str | None
    reasons: tuple[str, ...]
    build_s: float | None
    run_s: float
    run_dir: str | None

    @property
    def status(self) -> str:
        if self.kind == "baseline":
            return "pass" if self.verdict == Status.PASS else "fail"
        if not Status(self.verdict).judged:
            return "error"  # the mutant did not build or boot: it proves nothing
        return "killed" if self.killed_by else "survived"


def _execute(req: RunRequest) -> tuple[AnyResults, str | None, float]:
    from ..runner import Run  # the runner imports most of the package: only when really running
    started = time.monotonic()
    run = Run(req)
    results = run.execute_judged()
    return results, str(run.dir), time.monotonic() - started


def faulted(base: RunRequest, scenario: str, faults: int, flavor: str, series: Path | None) -> RunRequest:
    """The run for a scenario with `faults` of its own kind of fault."""
    kills = faults if scenario in ("crash", "combined", "adversarial", "supervised", "cache-death") else None
    fd_closes = faults if scenario in ("close-fds", "combined") else None
    return replace(base, scenario=scenario, kills=kills, fd_closes=fd_closes, flavor=flavor, series=series)


def outcome(name: str, kind: str, req: RunRequest, faults: int, expect: str | None, results: AnyResults,
            run_dir: str | None, seconds: float) -> Outcome:
    return Outcome(name, kind, req.scenario, req.flavor, faults, results["verdict"],
                   killed_by(results) if kind == "mutant" else (), expect, tuple(results.get("reasons", [])[:5]),
                   results.get("timing", {}).get("build_s"), round(seconds, 1), run_dir)


def mutate(base: RunRequest, chosen: tuple[Mutant, ...]) -> dict[str, Any]:
    """Baselines first (one per scenario, flavour and fault count the mutants use), then each mutant."""
    started = time.monotonic()
    out = new_output_dir(base.output, "mutate")
    print(f"failover-harness: mutate directory {out}", flush=True)
    runs = replace(base, output=out / "runs")
    outcomes: list[Outcome] = []
    # plain first, then debug: each flavour's build directory goes base, mutant, mutant, ...
    for flavor in sorted({m.flavor for m in chosen}, key=lambda f: FLAVORS_COST.get(f, 9)):
        mutants = sorted((m for m in chosen if m.flavor == flavor), key=lambda m: m.cost)
        for scenario, faults in dict.fromkeys((m.scenario, m.faults) for m in mutants):
            req = faulted(runs, scenario, faults, flavor, None)
            outcomes.append(outcome(f"{scenario} x{faults}", "baseline", req, faults, None, *_execute(req)))
            _progress(outcomes[-1])
        for m in mutants:
            req = faulted(runs, m.scenario, m.faults, flavor, m.path)
            outcomes.append(outcome(m.name, "mutant", req, m.faults, m.expect, *_execute(req)))
            _progress(outcomes[-1])
    result = verdict(outcomes, chosen)
    result.update(dir=str(out), total_s=round(time.monotonic() - started, 1), request=base.to_json())
    (out / "mutate.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "summary.txt").write_text(summary(result))
    return result


def _progress(o: Outcome) -> None:
    print(f"failover-harness: {o.kind} {o.name}: {o.status} ({o.verdict}"
          f"{'; ' + ', '.join(o.killed_by) if o.killed_by else ''}; build {o.build_s or 0:.0f}s, "
          f"{o.run_s:.0f}s)", flush=True)


def verdict(outcomes: list[Outcome], chosen: tuple[Mutant, ...]) -> dict[str, Any]:
    """PASS only when every baseline passed and every mutant was killed."""
    mutants = [o for o in outcomes if o.kind == "mutant"]
    killed = [o for o in mutants if o.status == "killed"]
    survivors = [o.name for o in mutants if o.status == "survived"]
    errors = [o.name for o in mutants if o.status == "error"]
    baseline_failed = [o.name for o in outcomes if o.kind == "baseline" and o.status != "pass"]
    reasons = ([f"the unmutated kernel does not pass: {', '.join(baseline_failed)}"] if baseline_failed else []) + \
              ([f"survived: {', '.join(survivors)}"] if survivors else []) + \
              ([f"did not build or boot: {', '.join(errors)}"] if errors else [])
    status = Status.PASS if not reasons else (Status.FAIL if survivors or baseline_failed else Status.UNTESTABLE)
    by_name = {m.name: m for m in chosen}
    return {"verdict": status.value, "reasons": reasons,
            "score": round(len(killed) / len(mutants), 3) if mutants else None,
            "killed": len(killed), "mutants": len(mutants), "survivors": survivors,
            "outcomes": [{**asdict(o), "status": o.status,
                          "undoes": by_name[o.name].undoes if o.name in by_name else None} for o in outcomes]}


def summary(r: dict[str, Any]) -> str:
    score = "-" if r["score"] is None else f"{r['score']:.0%}"
    lines = [f"{r['verdict']}: mutation score {score} ({r['killed']}/{r['mutants']} killed), {r['total_s']:.0f}s"]
    for o in r["outcomes"]:
        how = ", ".join(o["killed_by"]) if o["killed_by"] else ""
        expected = f" (expected {o['expect']})" if o["expect"] and o["expect"] not in o["killed_by"] else ""
        lines.append(f"  {o['status']:8} {o['name']:28} {o['scenario']}/{o['flavor']} x{o['faults']}: {o['verdict']}"
                     f"{' by ' + how if how else ''}{expected}; build {o['build_s'] or 0:.0f}s, run {o['run_s']:.0f}s")
        if o["undoes"]:
            lines.append(f"           undoes: {o['undoes']}")
    lines += [f"  - {reason}" for reason in r["reasons"]]
    return "\n".join(lines) + "\n"
