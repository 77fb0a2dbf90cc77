"""Mutation testing end to end on the real kernel: the two cheapest mutants must be killed, each
by the check its patch names, while the unmutated kernel passes the same scenarios in the same
run. (The whole set: `failover-harness mutate`, see README.)"""
import json

import pytest

from harness.campaign import mutants
from helpers import harness

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
