"""README's main job on the real kernel: build (cached), boot, 50 kills, judge."""
import pytest


pytestmark = pytest.mark.vm


def test_default_run_survives_fifty_kills(default_run):
    proc, results = default_run
    assert proc.returncode == 0, results["reasons"] + results["missing_evidence"]
    assert results["verdict"] == "PASS" and results["scenario"] == "crash"
    assert results["kills"] >= 50
    assert results["kills_in_flight"] >= 0.8 * results["kills"]
    ev = results["evidence"]
    assert ev["redelivered"] > 0  # held requests really came back after restore
    assert ev["restores"] >= results["kills"]
    assert ev["reopens"] > 0  # the dead incarnation's objects were reopened by the kernel
    assert results["mismatches"] == 0 and results["read_errors"] == 0
    assert results["readers"]["files_never_verified"] == 0
    assert results["max_stall_s"] <= results["stall_bound_s"]
    assert results["findings"] == []
