"""The verdict rules, on run directories captured from real runs (tests/fixtures/run-*).

Each rule gets a negative control: the passing run, changed in one place the way a broken
kernel or daemon would change it, must FAIL by that rule's check. Every run judged here is
also read back through JUnit and mutate, which must classify it alike (both from its checks).
"""
import errno
import json
import shutil
from pathlib import Path

import pytest

from harness.judge import report
from helpers import FIXTURES, assert_reports_agree

GOLDEN = json.loads((FIXTURES / "verdicts.json").read_text())


def judged(run: Path) -> dict:
    """report.evaluate, and JUnit and mutate agreeing on what it found."""
    r = report.evaluate(run)
    assert_reports_agree(r)
    return r


@pytest.fixture
def passing_run(tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURES / "run-crash-5-kills", dst)
    return dst


def rewrite_jsonl(path: Path, change) -> None:
    """Apply `change(event) -> event | None` to every event of a log (None drops it)."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    kept = [e2 for e in events if (e2 := change(e)) is not None]
    path.write_text("".join(json.dumps(e) + "\n" for e in kept))


def test_captured_run_passes(passing_run):
    r = judged(passing_run)
    assert r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    assert r["scenario"] == "crash"
    assert r["kills"] == 5 and r["kills_in_flight"] == 5
    ev = r["evidence"]
    assert ev["redelivered"] == 5 and ev["restores"] == 5 and ev["deaths"] == 5
    assert ev["reopens"] >= 5 and ev["reads_after_reopen"] > 0  # the dead one's objects came back
    assert r["mismatches"] == 0 and r["read_errors"] == 0 and r["findings"] == []
    assert r["readers"]["files_never_verified"] == 0 and r["readers"]["p99_latency_s"] is not None
    assert all(d["recovery_s"] is not None and d["recovery_s"] < 5 for d in r["deaths"])
    assert (passing_run / "summary.txt").read_text().startswith("PASS")


def test_captured_close_fds_run_passes_on_kernel_evidence(tmp_path):
    r = judged(shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run"))
    assert r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    ev = r["evidence"]
    assert ev["fd_closes"] >= 10 and ev["reopens"] >= 10 and ev["reads_after_reopen"] >= 10
    assert ev["deaths"] == 0 and r["kills"] == 0


def test_close_fds_without_reopens_in_the_trace_is_inconclusive(tmp_path):
    """Checksums fine, but the kernel never showed the path: that proves nothing, so no PASS."""
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    (run / "guest" / "trace.txt").write_text("# tracer: nop\n")
    r = judged(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["reasons"] == [] and r["failed_checks"] == []
    assert "reopens" in r["missing_checks"]


def test_captured_no_failover_run_fails_on_read_errors(tmp_path):
    r = judged(shutil.copytree(FIXTURES / "run-no-failover", tmp_path / "run"))
    assert r["verdict"] == "FAIL"
    assert r["read_errors"] > 0
    assert "read-error" in r["failed_checks"]
    # a fresh cache starts its msg_ids at 0 again: that is not a re-delivery
    assert r["evidence"]["redelivered"] == 0


def test_checksum_mismatch_fails(passing_run):
    victim = passing_run / "guest" / "reader-0.jsonl"
    seen = []

    def corrupt(e):
        if e["event"] == "file" and not seen:
            seen.append(e)
            return {**e, "sha256": "0" * 64}
        return e
    rewrite_jsonl(victim, corrupt)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["mismatches"] == 1
    assert r["failed_checks"] == ["checksum"]


def test_a_read_error_fails(passing_run):
    with open(passing_run / "guest" / "reader-1.jsonl", "a") as f:
        f.write(json.dumps({"t": 1, "event": "read_error", "who": "reader", "reader": 1, "image": "img0",
                            "fsid": "img0.1x9", "path": "dir-c/large-0", "stage": "read", "errno": 5,
                            "error": "Input/output error"}) + "\n")
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["read_errors"] == 1 and r["failed_checks"] == ["read-error"]


def test_a_stall_fails(passing_run):
    with open(passing_run / "guest" / "reader-2.jsonl", "a") as f:
        f.write(json.dumps({"t": 1, "event": "stall", "who": "reader", "reader": 2, "what": "img0.2x1:x@0",
                            "waited_s": 31.0}) + "\n")
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["max_stall_s"] == 31.0
    assert r["failed_checks"] == ["stall"]


def test_a_reader_that_never_finished_fails(passing_run):
    rewrite_jsonl(passing_run / "guest" / "reader-0.jsonl", lambda e: None if e["event"] == "finished" else e)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert r["failed_checks"] == ["run-completed"]


def test_missing_restore_fails(passing_run):
    """`restore` a no-op in the kernel shows as held requests never coming back; a daemon that
    never writes it shows as no restore event. Either way: FAIL."""
    rewrite_jsonl(passing_run / "guest" / "daemon.jsonl", lambda e: None if e["event"] == "restore" and e["incarnation"] == 3 else e)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert "recovery" in r["failed_checks"]


def test_nothing_served_after_a_kill_fails(passing_run):
    last = max(json.loads(l)["incarnation"] for l in (passing_run / "guest" / "daemon.jsonl").read_text().splitlines())
    rewrite_jsonl(passing_run / "guest" / "daemon.jsonl",
                  lambda e: None if e["incarnation"] == last and e["event"] == "done" else e)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert r["failed_checks"] == ["recovery"]


def test_kills_that_hit_an_idle_daemon_are_inconclusive(passing_run):
    """The published test's flaw: kills that land while nothing is in flight prove nothing."""
    held = {(d["incarnation"], m) for d in judged(passing_run)["deaths"] for m in d["held"]}
    # pretend each held request had been answered just before the kill
    extra = []

    def answer(e):
        if e["event"] == "recv" and (e["incarnation"], e["msg_id"]) in held:
            extra.append({**e, "event": "done"})
        return e
    rewrite_jsonl(passing_run / "guest" / "daemon.jsonl", answer)
    with open(passing_run / "guest" / "daemon.jsonl", "a") as f:
        f.writelines(json.dumps(e) + "\n" for e in extra)
    r = judged(passing_run)
    assert r["verdict"] == "INCONCLUSIVE" and r["kills_in_flight"] == 0
    assert r["missing_checks"] == ["in-flight", "redelivered"]


def test_a_crash_point_request_never_redelivered_fails(passing_run):
    """Dying at read_received, the daemon held a READ the kernel has no answer for: if no later
    incarnation receives it, restore lost it."""
    deaths = judged(passing_run)["deaths"]
    victim = deaths[0]
    with open(passing_run / "guest" / "daemon.jsonl", "a") as f:
        f.write(json.dumps({"t": 0, "event": "crash_point", "who": "daemon", "incarnation": victim["incarnation"],
                            "pid": victim["pid"], "point": "read_received"}) + "\n")
    later = {(victim["incarnation"] + 1, m) for m in victim["held"]}
    rewrite_jsonl(passing_run / "guest" / "daemon.jsonl",
                  lambda e: None if e["event"] == "recv" and (e["incarnation"], e["msg_id"]) in later else e)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and "held-requests" in r["failed_checks"]
    assert any(f"died at read_received holding msg_id(s) {sorted(victim['held'])}" in reason for reason in r["reasons"])


def test_fewer_kills_than_asked_fails(passing_run):
    meta = json.loads((passing_run / "run.json").read_text())
    meta["scenario"]["kills"] = 6
    (passing_run / "run.json").write_text(json.dumps(meta))
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert r["failed_checks"] == ["kills"]


def test_a_kill_that_missed_the_daemon_fails(passing_run):
    rewrite_jsonl(passing_run / "faults.jsonl", lambda e: {**e, "pid": 99999} if e["index"] == 0 else e)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert "kills" in r["failed_checks"]


def test_a_kernel_warning_on_the_console_fails(passing_run):
    with open(passing_run / "console.log", "a") as f:
        f.write("[   20.000000] WARNING: CPU: 1 PID: 230 at fs/cachefiles/ondemand.c:540 cachefiles_ondemand_send_req+0x1/0x2\n")
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert r["findings"][0]["kind"] == "warning" and r["failed_checks"] == ["splat"]


def test_an_aborted_run_fails_and_keeps_the_console_tail(passing_run):
    meta = json.loads((passing_run / "run.json").read_text())
    meta["aborted"] = "guest hung: no answer within 120s to: kill -KILL 230"
    (passing_run / "run.json").write_text(json.dumps(meta))
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and "console_tail" in r
    assert r["reason_checks"][0] == "run-completed" and "run-completed" in r["failed_checks"]


def test_a_daemon_woken_for_nothing_again_and_again_fails(passing_run):
    """Patch 4's narrower EPOLLIN: a few empty wake-ups per restore are normal, a busy loop is not."""
    r = judged(passing_run)
    assert r["verdict"] == "PASS" and 0 < r["evidence"]["empty_reads"] <= 2 * r["evidence"]["restores"] + 10
    with open(passing_run / "guest" / "daemon.jsonl", "a") as f:
        for _ in range(2 * r["evidence"]["restores"] + 10 - r["evidence"]["empty_reads"]):
            f.write(json.dumps({"t": 1, "event": "empty_read", "incarnation": 6, "pid": 1}) + "\n")
    assert judged(passing_run)["verdict"] == "PASS"  # at the bound: still a PASS
    with open(passing_run / "guest" / "daemon.jsonl", "a") as f:
        for _ in range(1):
            f.write(json.dumps({"t": 1, "event": "empty_read", "incarnation": 6, "pid": 1}) + "\n")
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert r["failed_checks"] == ["empty-wakeups"]


def test_held_requests_a_kernel_drops_at_the_daemons_death_fail(passing_run):
    """The failover's promise: what a killed daemon held comes back. A kernel that fails those
    requests at the death (the behaviour before the series) loses every one of them."""
    r = judged(passing_run)
    assert all(d["held"] and d["held"] == d["redelivered"] for d in r["deaths"])
    held_by = {d["incarnation"]: set(d["held"]) for d in r["deaths"]}
    # no later incarnation receives what a dead one held
    rewrite_jsonl(passing_run / "guest" / "daemon.jsonl", lambda e: None if e.get("event") == "recv" and any(
        e["incarnation"] > inc and e["msg_id"] in ids for inc, ids in held_by.items()) else e)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL"
    assert "held-requests" in r["failed_checks"], r["reasons"]


# What daemon.py logs when the kernel refuses it, as (the op of the request it answered, or None
# for a read() of the device that failed before any request came, the error event's fields)
DAEMON_ERRORS = {
    "an OPEN re-delivered while its anon fd is open": (None, {"op": "read", "errno": errno.EEXIST, "error": "File exists"}),
    "READ_COMPLETE refused": ("READ", {"op": "READ", "call": "READ_COMPLETE", "errno": errno.EINVAL,
                                       "error": "Invalid argument"}),
    "copen refused": ("OPEN", {"op": "OPEN", "call": "copen", "errno": errno.EINVAL, "error": "Invalid argument"}),
    "a READ for an object never opened": ("READ", {"op": "READ", "error": "unknown object"}),
}


def log_daemon_error(run: Path, answered_op: str | None, error: dict) -> dict:
    """The daemon's error event in the run's log: in place of the first answer to an `answered_op`
    request (the kernel refused that answer), or appended to the last incarnation's events."""
    log = run / "guest" / "daemon.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    if answered_op is None:
        last = events[-1]
        logged = {"t": last["t"], "event": "error", "who": "daemon", "incarnation": last["incarnation"],
                  "pid": last["pid"], **error}
        events.append(logged)
    else:
        i = next(i for i, e in enumerate(events) if e["event"] == "done" and e["op"] == answered_op)
        logged = events[i] = {**{k: events[i][k] for k in ("t", "who", "incarnation", "pid", "msg_id", "object_id")},
                              "event": "error", **error}
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    return logged


@pytest.mark.parametrize("answered_op, error", DAEMON_ERRORS.values(), ids=DAEMON_ERRORS)
def test_an_answer_the_kernel_refused_fails(passing_run, answered_op, error):
    """The readers may never notice (the page cache retries, a re-delivery answers it), so the
    daemon's own errors are judged: each names the op, the request and the errno."""
    logged = log_daemon_error(passing_run, answered_op, error)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["daemon-errors"], r["reasons"]
    call = f" ({error['call']})" if "call" in error else ""
    assert r["reasons"] == [f"1 daemon error(s), first {error['op']}{call} msg_id {logged.get('msg_id', '-')} "
                            f"object_id {logged.get('object_id', '-')}: {error['error']} (errno {error.get('errno', '-')})"]


def test_the_no_failover_control_expects_eio_and_nothing_else(tmp_path):
    """The negative control kills the cache with the daemon: EIO is what its plan causes, judged
    by the readers' errors, not the daemon's. Any other errno is still the daemon-errors check's."""
    run = shutil.copytree(FIXTURES / "run-no-failover", tmp_path / "run")
    log_daemon_error(run, None, {"op": "read", "errno": errno.EIO, "error": "Input/output error"})
    log_daemon_error(run, "OPEN", {"op": "OPEN", "call": "copen", "errno": errno.EIO, "error": "Input/output error"})
    r = judged(run)
    assert {k: r[k] for k in ("verdict", "reasons", "missing_evidence")} == GOLDEN["run-no-failover"]
    assert "daemon-errors" not in r["failed_checks"] and r["evidence"]["daemon_errors"] == 2
    log_daemon_error(run, None, dict(DAEMON_ERRORS["an OPEN re-delivered while its anon fd is open"][1]))
    assert "daemon-errors" in judged(run)["failed_checks"]


def test_the_errnos_a_scenario_expects_are_its_data_not_its_name(passing_run):
    """The crash scenario as recorded, told to expect EIO, takes it as the no-failover one does."""
    log_daemon_error(passing_run, None, {"op": "read", "errno": errno.EIO, "error": "Input/output error"})
    assert judged(passing_run)["failed_checks"] == ["daemon-errors"]
    meta = json.loads((passing_run / "run.json").read_text())
    meta["scenario"]["expected_daemon_errnos"] = [errno.EIO]
    (passing_run / "run.json").write_text(json.dumps(meta))
    assert judged(passing_run)["verdict"] == "PASS"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_captured_run_judges_as_it_did_before_checks_were_types(name, tmp_path):
    """tests/fixtures/verdicts.json was recorded before the reasons carried their checks: the
    verdict and every word of the reasons and missing evidence are unchanged."""
    r = judged(shutil.copytree(FIXTURES / name, tmp_path / name))
    assert {k: r[k] for k in ("verdict", "reasons", "missing_evidence")} == GOLDEN[name]


def test_the_golden_file_covers_every_captured_run():
    assert sorted(GOLDEN) == sorted(p.name for p in FIXTURES.glob("run-*"))
