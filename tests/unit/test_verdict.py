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

from harness.judge import report, trace
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
    assert ev["redelivered"] == 5 and ev["restores"] == 5 and ev["deaths"] == 5  # each death held one
    lg = r["ledger"]
    assert lg["available"] and lg["held_at_death"] == lg["redelivered"] == 5 and lg["violations"] == dict.fromkeys(
        ("held", "double", "unanswered", "closed"), 0)
    assert lg["daemon_log_disagrees"] == [] and lg["anon_fds_handed"] == lg["anon_fds_released"]
    assert r["probes"]["epollin"]["decided"] > 0 and r["probes"]["epollin"]["violations"] == 0
    assert ev["reopens"] >= 5 and ev["reads_after_reopen"] > 0  # the dead one's objects came back
    assert r["mismatches"] == 0 and r["read_errors"] == 0 and r["findings"] == []
    assert r["readers"]["files_never_verified"] == 0 and r["readers"]["p99_latency_s"] is not None
    # recovered within the stall bound (5.7-16.8 s: the run shared the machine with a debug guest)
    assert all(d["recovery_s"] is not None and d["recovery_s"] < r["stall_bound_s"] for d in r["deaths"])
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


def held_deliveries(trace_lines: list[str]) -> list[int]:
    """Line numbers of the deliveries a dead daemon process held, which a later process got again
    after a restore (from the trace alone)."""
    last: dict[int, tuple[int, int]] = {}  # msg_id -> (line, tgid) of its latest delivery
    held = []
    for i, line in enumerate(trace_lines):
        (e,) = trace.parse(line) or [None]
        if e is None or e.event != "deliver" or e.fields.get("ret", 0) <= 0:
            continue
        msg_id = e.fields["msg_id"]
        if msg_id in last and last[msg_id][1] != e.tgid:
            held.append(last[msg_id][0])
        last[msg_id] = (i, e.tgid)
    return held


def edit_trace(run: Path, change) -> None:
    path = run / "guest" / "trace.txt"
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")


def test_kills_that_hit_an_idle_daemon_are_inconclusive(passing_run):
    """The published test's flaw: kills that land while nothing is in flight prove nothing. The
    kernel's ledger is changed to say so: the deliveries each dead process held never happened."""
    edit_trace(passing_run, lambda lines: [l for i, l in enumerate(lines) if i not in set(held_deliveries(lines))])
    r = judged(passing_run)
    assert r["verdict"] == "INCONCLUSIVE" and r["kills_in_flight"] == 0, r["reasons"]
    assert r["missing_checks"] == ["in-flight", "redelivered"]


def test_a_held_request_never_delivered_again_fails_with_its_msg_id(passing_run):
    """What a dead daemon held comes back after the restore: one re-delivery taken out of the
    kernel's trace (a kernel that failed that request at the death)."""
    victim = None

    def drop_one_redelivery(lines: list[str]) -> list[str]:
        nonlocal victim
        first_held = held_deliveries(lines)[0]
        msg_id = trace.parse(lines[first_held])[0].fields["msg_id"]
        again = next(i for i in range(first_held + 1, len(lines)) if f"msg_id={msg_id} " in lines[i] and "deliver:" in lines[i])
        victim = msg_id
        return lines[:again] + lines[again + 1:]
    edit_trace(passing_run, drop_one_redelivery)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["held-requests"], r["reasons"]
    assert f"msg_id {victim} " in r["reasons"][0] and "was not delivered again after the restore" in r["reasons"][0]


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


def append_probe(run: Path, **fields) -> None:
    last_open = next(json.loads(line) for line in reversed((run / "guest" / "daemon.jsonl").read_text().splitlines())
                     if '"op":"OPEN"' in line.replace(" ", "") and '"recv"' in line)
    with open(run / "guest" / "daemon.jsonl", "a") as f:
        f.write(json.dumps({"t": 1, "event": "probe", "who": "daemon", "incarnation": last_open["incarnation"],
                            "pid": last_open["pid"], "msg_id": last_open["msg_id"], "object_id": last_open["object_id"],
                            "cookie": last_open["cookie"], **fields}) + "\n")


@pytest.mark.parametrize("probe, outcome, check, words", [
    ("epollin", "spin", "epollin-probe", "the device stayed readable with nothing to read"),
    ("epollin", "early-read", "epollin-probe", "a READ of the object was delivered before its OPEN was answered"),
    ("wakeup", "asleep", "wakeup-probe", "a thread asleep in poll() was not woken by the copen"),
])
def test_a_probe_answered_wrong_fails_by_its_check_alone(passing_run, probe, outcome, check, words):
    """Patch 4 and the copen's wake-up, asked at the protocol point: one wrong answer is a FAIL,
    however many wake-ups or reopens the run had."""
    append_probe(passing_run, probe=probe, outcome=outcome, empties=64, drained=0)
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == [check], r["reasons"]
    assert words in r["reasons"][0]


def test_close_fds_whose_probes_never_decided_is_inconclusive(tmp_path):
    """A probe that never ran on a reopen proves nothing: not a PASS."""
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    rewrite_jsonl(run / "guest" / "daemon.jsonl", lambda e: None if e["event"] == "probe" else e)
    r = judged(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["reopen-probes"]


@pytest.mark.parametrize("file, text, why", [
    ("trace-stats.txt", "overrun: 12\n", "the ring buffer overran"),
    ("kprobe-profile.txt", "  deliver    311    2\n  restore    5    0\n", "the kprobes missed 2 hit(s)"),
])
def test_a_trace_that_lost_events_makes_no_ledger(passing_run, file, text, why):
    """A lost event would read as a lost request: no ledger, INCONCLUSIVE, and the reason said."""
    (passing_run / "guest" / file).write_text(text)
    r = judged(passing_run)
    assert r["verdict"] == "INCONCLUSIVE" and r["ledger"]["incomplete"] == why and "ledger" in r["missing_checks"]
    assert any(why in m for m in r["missing_evidence"])


def test_a_run_without_the_kernel_s_ledger_is_inconclusive(passing_run):
    edit_trace(passing_run, lambda lines: [l for l in lines if "deliver:" not in l])
    r = judged(passing_run)
    assert r["verdict"] == "INCONCLUSIVE" and "ledger" in r["missing_checks"], r["reasons"]


@pytest.mark.parametrize("end, words", [
    ({"keeper_exited": False}, "the keeper never exited"),
    ({"device_reopen_error": "Device or resource busy (errno 16)"}, "/dev/cachefiles could not be opened again"),
    ({"d_state": ["python3[230] in fscache_withdraw_cache"]}, "task left in D state: python3[230]"),
    ({"failed_umounts": {"/run/failover-harness/mnt/r0-img0": "umount did not return within 10s"}}, "umount did not return"),
])
def test_what_the_end_of_a_run_leaves_fails(passing_run, end, words):
    path = passing_run / "guest" / "end.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **end}))
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["end-of-run"], r["reasons"]
    assert words in r["reasons"][0]


def test_an_anon_fd_never_released_fails_at_the_end(passing_run):
    edit_trace(passing_run, lambda lines: [l for i, l in enumerate(lines)
                                           if i != max(j for j, x in enumerate(lines) if "fd_release:" in x)])
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["end-of-run"], r["reasons"]
    assert "anon fds handed out by OPENs were never released" in r["reasons"][0]


def test_a_reader_umount_that_had_to_detach_fails(passing_run):
    with open(passing_run / "guest" / "reader-0.jsonl", "a") as f:
        f.write(json.dumps({"t": 1, "event": "umount_failed", "fsid": "img0.1x0", "errno": 16,
                            "error": "Device or resource busy"}) + "\n")
    r = judged(passing_run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["end-of-run"]


def test_held_requests_a_kernel_drops_at_the_daemons_death_fail(passing_run):
    """The failover's promise: what a killed daemon held comes back. A kernel that fails those
    requests at the death (the behaviour before the series) loses every one of them."""
    r = judged(passing_run)
    assert r["ledger"]["held_at_death"] > 0 and r["ledger"]["held_at_death"] == r["ledger"]["redelivered"]

    def no_redeliveries(lines: list[str]) -> list[str]:
        held = held_deliveries(lines)
        msg_ids = {trace.parse(lines[i])[0].fields["msg_id"] for i in held}
        firsts = set(held)
        return [l for i, l in enumerate(lines) if i in firsts or not (
            "deliver:" in l and any(f"msg_id={m} " in l for m in msg_ids) and i > min(held))]
    edit_trace(passing_run, no_redeliveries)
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
def test_every_captured_run_judges_as_recorded(name, tmp_path):
    """tests/fixtures/verdicts.json records each captured run's verdict, reasons and missing
    evidence, word for word: a change of any rule's words or outcome shows here (re-record it
    with the fixtures, on purpose)."""
    r = judged(shutil.copytree(FIXTURES / name, tmp_path / name))
    assert {k: r[k] for k in ("verdict", "reasons", "missing_evidence")} == GOLDEN[name]


def test_the_golden_file_covers_every_captured_run():
    assert sorted(GOLDEN) == sorted(p.name for p in FIXTURES.glob("run-*"))


def stopped_early(run: Path, probe: str) -> None:
    """Mark the run as the runner does when a probe failed and the faults stopped."""
    meta = json.loads((run / "run.json").read_text())
    meta["timing"]["faults_stopped_early"] = f"the kernel failed a probe; the faults stopped early: {probe}"
    (run / "run.json").write_text(json.dumps(meta))


def test_a_run_whose_faults_stopped_early_asked_for_the_kills_it_made(tmp_path):
    """--after-fail stop ends the faults once a probe failed: the kills not made were not asked
    for (so both sides of a submission fail the same checks). Control: the same cut run without
    the stop is short of kills."""
    run = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "run")
    faults = (run / "faults.jsonl").read_text().splitlines()
    (run / "faults.jsonl").write_text("\n".join(faults[:2]) + "\n")
    assert "kills" in judged(run)["failed_checks"]
    stopped_early(run, "stale (accepted)")
    assert "kills" not in judged(run)["failed_checks"]


def test_a_run_decided_early_does_not_wait_for_its_readers(tmp_path):
    """The drain of a run stopped once a probe failed kills the readers at once: one that never
    finished is no abort there; elsewhere it is (control)."""
    run = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "run")
    reader = run / "guest" / "reader-0.jsonl"
    reader.write_text("".join(line + "\n" for line in reader.read_text().splitlines() if '"finished"' not in line))
    assert "run-completed" in judged(run)["failed_checks"]
    stopped_early(run, "epollin (spin)")
    assert "run-completed" not in judged(run)["failed_checks"]


def test_a_run_decided_early_is_not_asked_to_have_read_every_file(tmp_path):
    """Its readers were killed before they read every file once: a file never read is no
    checksum failure there (control: elsewhere it is); a file read wrong still is."""
    run = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "run")
    reader = run / "guest" / "reader-0.jsonl"
    lines = reader.read_text().splitlines()
    files = [line for line in lines if '"event": "file"' in line or '"event":"file"' in line]
    first_path = json.loads(files[0])["path"]
    for r in (run / "guest").glob("reader-*.jsonl"):
        r.write_text("".join(line + "\n" for line in r.read_text().splitlines()
                             if not (('"file"' in line) and json.loads(line).get("path") == first_path)))
    assert "checksum" in judged(run)["failed_checks"]
    stopped_early(run, "epollin (spin)")
    assert "checksum" not in judged(run)["failed_checks"]
