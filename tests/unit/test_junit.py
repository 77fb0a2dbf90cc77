"""JUnit XML from results: parsed back, on runs captured from real runs, each check with its
negative case (the passing run changed the way a broken kernel would change it)."""
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from guest_scripts.contract import EndOfRun
from harness.judge import console, junit, ledger, probes, report, verdict
from harness.judge.checks import VERDICT_CHECKS, Check
from harness.judge.evidence import DaemonFacts, Death, Kill, ReaderFacts
from harness.judge.reread import Reread
from harness.judge.cachedeath import CacheDeathFacts
from harness.judge.killable import Waiter
from harness.judge.reopenumount import ReopenUmount
from harness.judge.copenwake import CopenWake, Entry
from harness.scenarios import Needs
from helpers import FIXTURES

WARNING_SPLAT = FIXTURES / "splats" / "WARNING.log"


def evaluated(name: str, tmp_path: Path) -> dict:
    return report.evaluate(shutil.copytree(FIXTURES / name, tmp_path / name))


def outcomes(xml_text: str) -> dict[str, str]:
    """test case name -> passed, failure, skipped or error"""
    root = ET.fromstring(xml_text)
    out = {}
    for case in root.iter("testcase"):
        child = next(iter(case), None)
        out[case.get("name")] = "passed" if child is None else child.tag
    return out


def test_a_failing_run_fails_exactly_its_checks(tmp_path):
    r = evaluated("run-no-failover", tmp_path)
    root = ET.fromstring(junit.render(r))
    assert root.tag == "testsuites" and root.get("failures") == "4" and root.get("errors") == "0"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "no-failover" and suite.get("failures") == "4"
    assert int(suite.get("tests")) == len(suite.findall("testcase"))
    failed = {n for n, o in outcomes(junit.render(r)).items() if o == "failure"}
    assert failed == {"data: checksums", "data: read errors", "data: read back from the cache files after drop_caches",
                      "ledger: every request answered or ended by the kernel"}
    message = root.find(".//testcase[@name='data: read errors']/failure").get("message")
    assert message.startswith(f"{r['read_errors']} read error(s)")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["verdict"] == "FAIL" and props["reproduce"] == r["reproduce"]


def test_a_passing_run_has_no_failure_and_shows_its_evidence(tmp_path):
    r = evaluated("run-crash-5-kills", tmp_path)
    o = outcomes(junit.render(r))
    assert set(o.values()) == {"passed"}
    # crash needs kills in flight and re-deliveries: both are test cases that passed
    assert o["evidence: kills on a request in flight"] == "passed" and o["evidence: held requests re-delivered"] == "passed"
    assert "evidence: anon fds closed" not in o  # not what crash needs
    assert o["kernel: console"] == "passed"
    # and report.evaluate wrote the same file into the run directory
    assert (tmp_path / "run-crash-5-kills" / "junit.xml").read_text() == junit.render(r)


def test_missing_evidence_is_skipped_not_passed_nor_failed(tmp_path):
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    (run / "guest" / "trace.txt").write_text("# tracer: nop\n")
    r = report.evaluate(run)
    assert r["verdict"] == "INCONCLUSIVE"
    o = outcomes(junit.render(r))
    assert o["evidence: reopens in the kernel trace"] == "skipped"
    assert o["evidence: anon fds closed"] == "passed"
    assert "failure" not in o.values()
    root = ET.fromstring(junit.render(r))
    assert root.get("skipped") == str(sum(v == "skipped" for v in o.values())) != "0"


def test_each_kernel_finding_is_a_test_case_with_its_fingerprint(tmp_path):
    run = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "run")
    with open(run / "console.log", "a") as f:
        f.write(WARNING_SPLAT.read_text())
    r = report.evaluate(run)
    (finding,) = console.scan_file(WARNING_SPLAT)
    o = outcomes(junit.render(r))
    name = f"kernel: {finding.title} [{finding.fingerprint}]"
    assert o[name] == "failure" and "kernel: console" not in o
    # the "kernel console:" reason is the finding's case: no other case is made for it
    assert all(n in {c.case for c in Check} or n == name for n in o)


def test_no_verdict_on_the_kernel_is_an_error(tmp_path):
    meta = {"request": {"scenario": "crash"}, "reproduce": "failover-harness run"}
    report.write_error(tmp_path, meta, "UNTESTABLE", "boot failed: no shell within 180s")
    r = json.loads((tmp_path / "results.json").read_text())
    root = ET.fromstring(junit.render(r))
    assert root.get("errors") == "1" and root.get("failures") == "0"
    (case,) = root.iter("testcase")
    assert case.find("error").get("message") == "UNTESTABLE: boot failed: no shell within 180s"
    assert (tmp_path / "junit.xml").is_file()


def every_rule_broken() -> list[verdict.Reason]:
    """Facts that break every rule of verdict.failures at once: its reasons."""
    unrestored = Death(1, 10, "kill", None, (1, 2), (), False, False, None)
    unserved = Death(2, 11, "kill", None, (), (), True, False, None)
    lost = Death(3, 12, "crash_point", "read_received", (7,), (), True, True, 1.0)
    daemon = DaemonFacts(4, (unrestored, unserved, lost), (Kill(0, 10, unrestored), Kill(1, 99, None)),
                         {}, 0, 2, 0, 0,
                         ({"op": "READ", "msg_id": 7, "errno": 22},))  # a READ_COMPLETE refused
    readers = ReaderFacts(1, 1, 2, 0, 10, ({"image": "i", "path": "p"},), ({"stage": "read"},),
                          ({"waited_s": 99},), 0.1, ("i/p",), 1, {})
    broken_ledger = ledger.Ledger(True, (), (), 1, {}, 0, 0, 0,
                                  tuple(ledger.Violation(rule, f"{rule} broken") for rule in ledger.RULES))
    probed = {kind: probes.ProbeCounts(1, 1, 0, ({"outcome": outcome},))
              for kind, outcome in (("epollin", "spin"), ("wakeup", "asleep"), ("stale", "accepted"),
                                    ("reuse", "reused"), ("close-copen", "read-on-closed"),
                                    ("late-write", "writable"), ("second-fd", "second-fd"))}
    end = EndOfRun({}, keeper_exited=False, device_reopen_error="Device or resource busy", d_state=[])
    finding = console.scan_file(WARNING_SPLAT)
    th = verdict.Thresholds(kills_requested=5, stall_bound_s=30, needs=Needs())
    read_back = Reread(True, 1, ("i/p: not found",), (), 1, ("msg_id 9 object_id 1 off 0x0 len 0x1000",))
    never_rebound = CacheDeathFacts(asked=2, released=1, deaths=(), never_rebound=9.0, explained=(), clock_offset_s=0.0)
    unkillable = Waiter(300, "img0.waiter1", queued_ts=10.0, exit_ts=12.5, restore_ts=12.0)
    outlived = ReopenUmount(301, "img1.reopen1", "open", 7, "open-delivered", 20.0, 20.1,
                            ("the reopen work on object 00000007 returned 0.010 s after the drop did",))
    asleep = Entry(pwq=0x10, wq=0x20, pid=302)
    unwoken = CopenWake(30.0, 303, 7, 12, sleepers=[asleep], returned=True)
    return verdict.failures(daemon, readers, broken_ledger, probed, finding, th, aborted="guest hung", end=end,
                            reread=read_back, cache=never_rebound, waiters=(unkillable,), reopen_umounts=(outlived,),
                            copen_wakes=(unwoken,))


def test_every_reason_the_verdict_gives_has_its_check():
    reasons = every_rule_broken()
    assert len(reasons) >= 20
    assert {r.check for r in reasons} == set(VERDICT_CHECKS)


def test_a_reason_is_filed_by_its_check_not_by_its_words():
    r = {"verdict": "FAIL", "reasons": ["the moon is in the wrong phase"], "failed_checks": ["stall"],
         "reason_checks": ["stall"], "missing_evidence": [], "missing_checks": [], "scenario": "crash",
         "findings": []}
    root = ET.fromstring(junit.render(r))
    assert {n for n, o in outcomes(junit.render(r)).items() if o == "failure"} == {"data: stalls"}
    assert root.find(".//testcase[@name='data: stalls']/failure").get("message") == "the moon is in the wrong phase"


def test_several_runs_in_one_file_with_distinct_names(tmp_path):
    a = evaluated("run-crash-5-kills", tmp_path)
    b = evaluated("run-no-failover", tmp_path)
    c = {**a, "kernel": {**a["kernel"], "flavor": "debug"}}
    root = ET.fromstring(junit.render_many([a, b, c]))
    names = [s.get("name") for s in root.findall("testsuite")]
    assert len(set(names)) == 3 and "no-failover" in names
    assert all(n.startswith("crash [") for n in names if n != "no-failover")
    assert root.get("failures") == "4"
    assert root.get("tests") == str(sum(int(s.get("tests")) for s in root.findall("testsuite")))


@pytest.mark.parametrize("verdict_", ["ERROR", "UNTESTABLE"])
def test_error_shapes_have_one_case(verdict_):
    r = {"verdict": verdict_, "reasons": ["x"], "request": {"scenario": "close-fds"}}
    root = ET.fromstring(junit.render(r))
    assert [s.get("name") for s in root.iter("testsuite")] == ["close-fds"]
    assert root.get("tests") == "1" and root.get("errors") == "1"


def test_the_same_bug_twice_is_one_test_case():
    f = {"kind": "warning", "line_no": 3, "text": "WARNING: CPU: 0 PID: 1 at x", "title": "WARNING in f",
         "frames": ["f"], "fingerprint": "0123456789ab"}
    r = {"verdict": "FAIL", "reasons": ["kernel console: 2 finding(s): WARNING in f [0123456789ab]"],
         "failed_checks": ["splat"], "reason_checks": ["splat"], "missing_evidence": [], "missing_checks": [],
         "scenario": "crash", "findings": [f, {**f, "line_no": 40}]}
    root = ET.fromstring(junit.render(r))
    (case,) = [c for c in root.iter("testcase") if c.get("name").startswith("kernel: ")]
    assert case.get("name") == "kernel: WARNING in f [0123456789ab]"
    assert case.find("failure").get("message") == "WARNING in f [0123456789ab] (seen 2 times)"
    assert root.get("failures") == "1"
