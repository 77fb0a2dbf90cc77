"""results.json against its documented schema (harness/judge/results.schema.json), on every captured
run, the error shape, and with provenance; and the schema rejects what is not results.json."""
import copy
import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from harness.judge import report
from harness.judge.checks import EVIDENCE_CHECKS, VERDICT_CHECKS
from helpers import FIXTURES

RUNS = sorted(p.name for p in FIXTURES.glob("run-*"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(report.SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def judged(run: Path) -> dict:
    """results.json as written: the schema describes the file (evaluate's own dict holds tuples)."""
    report.evaluate(run)
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def passing(tmp_path_factory) -> dict:
    return judged(shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path_factory.mktemp("r") / "run"))


def errors(validator, results: dict) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(results)]


def test_the_schema_names_the_version_report_writes():
    schema = json.loads(report.SCHEMA_FILE.read_text())
    assert schema["properties"]["schema_version"]["const"] == report.RESULTS_SCHEMA_VERSION
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("name", RUNS)
def test_every_captured_run_is_valid(name, tmp_path, validator):
    assert errors(validator, judged(shutil.copytree(FIXTURES / name, tmp_path / name))) == []


def test_crash_points_and_an_aborted_run_are_valid(tmp_path, validator):
    run = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["aborted"] = "guest hung: daemon incarnation 3 serving: not within 60s"
    meta["crash_plan"] = {"1": "read_received"}
    (run / "run.json").write_text(json.dumps(meta))
    r = judged(run)
    assert "console_tail" in r and "crash_points" in r and r["verdict"] == "FAIL"
    assert errors(validator, r) == []


@pytest.mark.parametrize("status", ["ERROR", "UNTESTABLE"])
def test_the_error_shape_is_valid(status, tmp_path, validator):
    meta = {"request": {"scenario": "crash", "seed": 1}, "reproduce": "failover-harness run", "timing": {"total_s": 3.0}}
    report.write_error(tmp_path, meta, status, "something")
    assert errors(validator, json.loads((tmp_path / "results.json").read_text())) == []


def with_provenance(results: dict, provenance) -> dict:
    return {**results, "provenance": provenance}


def test_provenance_is_valid_whole_or_as_far_as_the_run_got(passing, validator):
    whole = {"source": "tree:/src/linux", "base": {"commit": "a" * 40, "describe": "v6.12"}, "head": "b" * 40,
             "patches": [{"index": 1, "subject": "cachefiles: add restore", "message_id": "<1@x>", "status": "applied",
                          "commit": "c" * 40, "files": ["fs/cachefiles/ondemand.c"], "message": ""},
                         {"subject": "cachefiles: narrow EPOLLIN", "message_id": None, "status": "already-present",
                          "commit": None}],
             "config_hash": "47e23f543402e96b", "harness_version": "0.1.0",
             "command_line": ["failover-harness", "run", "--series", "s.mbox"]}
    assert errors(validator, with_provenance(passing, whole)) == []
    # a series that did not apply: only the patches are known
    partial = {"patches": [{"index": 1, "subject": "x", "message_id": None, "status": "failed", "commit": None,
                            "files": [], "message": "patch does not apply"}]}
    assert errors(validator, with_provenance(passing, partial)) == []
    assert errors(validator, with_provenance(passing, None)) == []


@pytest.mark.parametrize("change, complaint", [
    (lambda r: r.pop("verdict"), "'verdict' is a required property"),
    (lambda r: r.update(verdict="MAYBE"), "'MAYBE' is not one of"),
    (lambda r: r.update(kills="5"), "'5' is not of type 'integer'"),
    (lambda r: r.update(schema_version=3), "4 was expected"),
    (lambda r: r.pop("failed_checks"), "'failed_checks' is a required property"),
    (lambda r: r.update(failed_checks=["hang"]), "'hang' is not one of"),
    (lambda r: r.update(failed_checks=["stall", "stall"]), "has non-unique elements"),
    (lambda r: r.update(missing_checks=["stall"]), "'stall' is not one of"),
    (lambda r: r.pop("reason_checks"), "'reason_checks' is a required property"),
    (lambda r: r.update(surprise=True), "Unevaluated properties are not allowed ('surprise'"),
    (lambda r: r.pop("evidence"), "'evidence' is a required property"),
    (lambda r: r["evidence"].pop("restores"), "'restores' is a required property"),
    (lambda r: r["deaths"][0].update(cause="old age"), "'old age' is not one of"),
    (lambda r: r.update(findings=[{"kind": "warning", "line_no": 0, "text": "", "title": "",
                                   "frames": [], "fingerprint": "xyz"}]), "0 is less than the minimum of 1"),
    (lambda r: r.update(provenance={"patches": [{"subject": "s", "status": "bogus"}]}), "'bogus' is not one of"),
    (lambda r: r.update(provenance="tree"), "'tree' is not of type 'object', 'null'"),
])
def test_what_is_not_results_json_is_rejected(change, complaint, passing, validator):
    r = copy.deepcopy(passing)
    change(r)
    found = errors(validator, r)
    assert any(complaint in e for e in found), found


def test_the_error_shape_needs_its_message(validator):
    r = {"schema_version": report.RESULTS_SCHEMA_VERSION, "verdict": "UNTESTABLE", "reasons": [], "failed_checks": [], "request": {},
         "reproduce": "x", "harness_version": "0"}
    assert any("should be non-empty" in e for e in errors(validator, r))
    # and a judged verdict needs the judged fields
    assert any("'evidence' is a required property" in e for e in errors(validator, {**r, "verdict": "PASS"}))


def test_the_schema_names_every_check_and_only_those():
    """The slugs are defined once, in checks.Check; the schema's enums must say the same."""
    defs = json.loads(report.SCHEMA_FILE.read_text())["$defs"]
    assert defs["verdict_check"]["enum"] == [c.slug for c in VERDICT_CHECKS]
    assert defs["evidence_check"]["enum"] == [c.slug for c in EVIDENCE_CHECKS]


def test_a_failing_run_names_its_checks_in_check_order(tmp_path, validator):
    r = judged(shutil.copytree(FIXTURES / "run-no-failover", tmp_path / "run"))
    assert r["failed_checks"] == ["checksum", "read-error", "reread", "unanswered"]
    assert r["reason_checks"] == ["read-error", "checksum", "reread", "unanswered"]  # as the reasons come
    assert r["missing_checks"] == [] and errors(validator, r) == []
