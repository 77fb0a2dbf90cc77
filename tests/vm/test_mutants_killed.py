"""Mutation testing end to end on the real kernel: the two cheapest mutants must be killed, each
by the check its patch names, while the unmutated kernel passes the same scenarios in the same
run. (The whole set: `failover-harness mutate`, see README.)"""
import json
from pathlib import Path

import pytest

from harness.campaign import mutants
from harness.judge import misbehaviour
from helpers import harness, results_of

pytestmark = pytest.mark.vm


def test_cheapest_two_mutants_are_killed_and_the_baseline_passes(tmp_path):
    cheapest = sorted(mutants.load(), key=lambda m: m.cost)[:2]
    assert len(cheapest) == 2 and all(m.flavor == "plain" for m in cheapest)
    args = [a for m in cheapest for a in ("--mutant", m.name)]
    proc = harness("mutate", *args, "--output", str(tmp_path))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result_file,) = tmp_path.glob("*-mutate/mutate.json")
    r = json.loads(result_file.read_text())
    assert r["verdict"] == "PASS" and r["score"] == 1.0 and r["mutants"] == 2
    baselines = [o for o in r["outcomes"] if o["kind"] == "baseline"]
    assert baselines and all(o["verdict"] == "PASS" for o in baselines)
    for m in cheapest:
        (o,) = [o for o in r["outcomes"] if o["name"] == m.name]
        assert o["status"] == "killed" and m.expect in o["killed_by"], o
        assert o["build_s"] is not None and o["build_s"] < 300  # incremental: the touched objects only


def test_cheapest_mutant_of_a_2024_fix_is_killed_by_the_misbehaving_daemon(tmp_path):
    """`adversarial` once on the correct kernel (the baseline, which must PASS with every
    misbehaviour reaching the kernel), and the cheapest of its mutants killed by its check."""
    (m, *_) = sorted((m for m in mutants.load() if m.scenario == "adversarial" and m.flavor == "plain"),
                     key=lambda m: m.cost)
    proc = harness("mutate", "--mutant", m.name, "--output", str(tmp_path))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result_file,) = tmp_path.glob("*-mutate/mutate.json")
    r = json.loads(result_file.read_text())
    (baseline,) = [o for o in r["outcomes"] if o["kind"] == "baseline"]
    assert baseline["verdict"] == "PASS" and baseline["scenario"] == "adversarial"
    run_dir = Path(baseline["run_dir"])
    misbehaved = json.loads((run_dir / "results.json").read_text())["misbehaviours"]
    # every misbehaviour the scenario has (as its run.json records it) is reported, and decided
    scenario_has = misbehaviour.expected(json.loads((run_dir / "run.json").read_text())["scenario"])
    assert set(misbehaved) == set(scenario_has) >= {"restore-live", "stale", "lockless-close", "close-copen"}
    assert all(v["decided"] >= 3 for v in misbehaved.values()), misbehaved
    # tasks waiting on no daemon, SIGKILLed: each whose READ was queued went before the next restore
    waiters = [w for w in json.loads((run_dir / "results.json").read_text())["killed_waiters"] if w["decided"]]
    assert len(waiters) >= 3 and all(w["killable"] for w in waiters), waiters
    # mounts unmounted as the kernel reopened their object: the drops that met the reopen work
    unmounted = json.loads((run_dir / "results.json").read_text())["reopen_umounts"]
    assert sum(u["decided"] for u in unmounted) >= 3 and not any(u["violations"] for u in unmounted), unmounted
    # ... of them, drops after a restore had marked the held OPEN again (its holder killed)
    assert sum(u["decided"] and u["restored"] for u in unmounted) >= 3, unmounted
    (o,) = [o for o in r["outcomes"] if o["name"] == m.name]
    assert o["status"] == "killed" and m.expect in o["killed_by"], o


def test_a_run_stopped_at_the_first_failed_probe_judges_as_the_full_run(tmp_path):
    """Issue 16, a bad kernel known as soon as it is bad: the same mutant and seed, once stopped
    at its first failed probe (the default) and once with every fault: the same verdict, the
    expected check among the reasons of both, and the early run's fault loop the shorter."""
    (m,) = [m for m in mutants.load() if m.name == "epollin-reopening"]
    runs = {}
    for after_fail in ("stop", "continue"):
        proc = harness("run", "--output", str(tmp_path / after_fail), "--scenario", m.scenario, "--fd-closes",
                       str(m.faults), "--series", str(m.path), "--after-fail", after_fail)
        print(proc.stdout)
        runs[after_fail] = results_of(proc)
    early, full = runs["stop"], runs["continue"]
    assert early["verdict"] == full["verdict"] == "FAIL"
    assert m.expect in early["failed_checks"] and m.expect in full["failed_checks"], (early["reasons"], full["reasons"])
    assert early["timing"]["faults_stopped_early"] and not full["timing"].get("faults_stopped_early")
    # no more faults than the full run made (as many, if the first failure came at the last one)
    assert early["evidence"]["fd_closes"] <= full["evidence"]["fd_closes"], (early["evidence"], full["evidence"])
