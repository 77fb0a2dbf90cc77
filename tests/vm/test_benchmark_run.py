"""`failover-harness bench --short` for real: the default kernel's `crash` with 3 kills and
`close-fds` with 3 closes, on this machine; bench.json valid against its schema, its figures
measured, the stages it did not run null with why. In CI's sample: about two minutes (two boots,
the build the suite's earlier tests left in the cache), and the only check that the benchmark a
reader of README is told to run still runs."""
import json
from pathlib import Path

import jsonschema
import pytest

from harness.campaign import bench
from helpers import harness

pytestmark = pytest.mark.vm


def test_bench_short_runs_and_its_json_validates(tmp_path):
    out = tmp_path / "bench"
    proc = harness("bench", "--short", "--output", str(out), timeout=3600)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "bench.json").read_text())
    validator = jsonschema.Draft202012Validator(json.loads(bench.SCHEMA_FILE.read_text()))
    assert [e.message for e in validator.iter_errors(doc)] == []
    assert (doc["mode"], doc["exit_code"]) == ("short", 0)
    assert (Path(doc["dir"]) / "bench.json").read_text() == (out / "bench.json").read_text()
    assert (out / "bench.md").read_text() in proc.stdout  # the table, printed

    m = doc["machine"]
    assert m["accel"] in ("kvm", "tcg") and m["cpus"] >= 1 and m["memory_mib"] > 0 and m["cpu_model"]

    crash = doc["stages"]["crash"]
    f = crash["figures"]
    assert crash["ran"] and crash["verdict"] in ("PASS", "INCONCLUSIVE") and crash["accel"] == m["accel"]
    assert (Path(crash["run_dir"]) / "results.json").is_file()
    assert f["kills"] == bench.SHORT_KILLS and f["kills_in_flight"] <= f["kills"] and 0 <= f["in_flight_share"] <= 1
    assert f["kills_per_minute"] > 0 and f["fault_loop_s"] > 0
    assert f["build_s"] is not None and f["source_s"] is not None
    assert 0 < f["boot_s"] <= f["boot_to_first_fault_s"]
    assert f["recovery_from"] in ("kernel ledger", "daemon log") and f["recovery_n"] >= 1
    assert 0 < f["recovery_p50_s"] <= f["recovery_p90_s"] <= f["recovery_max_s"]

    close = doc["stages"]["close-fds"]
    c = close["figures"]
    # 3 closes are fewer than the scenario's evidence needs: INCONCLUSIVE, its pace measured all the same
    assert close["ran"] and close["verdict"] in ("PASS", "INCONCLUSIVE")
    assert c["fd_closes"] >= 1 and c["closes_per_minute"] > 0

    for name in ("edit", "bisect", "cold", "vng-ratio"):
        s = doc["stages"][name]
        assert not s["ran"] and s["skipped"] and all(v is None for v in s["figures"].values()), name
