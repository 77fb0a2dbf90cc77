"""README's main job on the real kernel: build (cached), boot, 50 kills, judge."""
import pytest


pytestmark = pytest.mark.vm


def test_default_run_survives_fifty_kills(default_run):
    proc, results = default_run
    assert proc.returncode == 0, results["reasons"] + results["missing_evidence"]
    assert results["verdict"] == "PASS" and results["scenario"] == "crash"
    assert results["kills"] >= 50
    assert results["kills_in_flight"] >= 0.5 * results["kills"]  # the scenario's need (harness/scenarios.py)
    ev = results["evidence"]
    assert ev["redelivered"] > 0  # held requests really came back after restore
    assert ev["restores"] >= results["kills"]
    assert ev["reopens"] > 0  # the dead incarnation's objects were reopened by the kernel
    assert results["mismatches"] == 0 and results["read_errors"] == 0
    assert results["readers"]["files_never_verified"] == 0
    assert results["max_stall_s"] <= results["stall_bound_s"]
    assert results["findings"] == []


def test_default_run_writes_the_reports_people_read(default_run):
    """From the real run: JUnit for dashboards, Markdown for a reply, the timeline picture,
    results.json valid against its schema, and the progress lines on a non-terminal."""
    import json
    import xml.etree.ElementTree as ET
    from pathlib import Path

    import jsonschema

    from harness.judge import report

    proc, results = default_run
    run_dir = Path(results["kernel"]["bzimage"]).parent
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 7
    assert (run_dir / "report.md").read_text().startswith("### failover-harness: ✅ PASS")
    png = (run_dir / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    jsonschema.validate(results, json.loads(report.SCHEMA_FILE.read_text()))
    assert "faults" in proc.stderr and "kills" in proc.stderr  # progress, as plain lines
