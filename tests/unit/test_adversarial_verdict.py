"""The misbehaving daemon's run judged (tests/fixtures/run-adversarial: `adversarial`, seed 1, the
correct kernel), and each of its rules' negative controls: the run changed where a broken kernel
would change it (a late answer accepted, a msg_id reused, a READ for an object whose fd was
closed before its copen, a write after an umount's CLOSE accepted for good or refused otherwise than
ENOBUFS, a kill that did not land in its state) or a misbehaviour that never
reached the kernel."""
import json
import shutil
from pathlib import Path

import pytest

from contract import KERNEL_STATES
from helpers import FIXTURES, judged

RUN = FIXTURES / "run-adversarial"


@pytest.fixture
def run(tmp_path) -> Path:
    return shutil.copytree(RUN, tmp_path / "run")


def rewrite(path: Path, change) -> None:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(e2) + "\n" for e in events if (e2 := change(e)) is not None))


def test_the_misbehaving_daemon_passes_on_the_correct_kernel_with_every_path_reached(run):
    r = judged(run)
    assert r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    assert set(r["misbehaviours"]) == {"restore-live", "stale", "lockless-close", "close-copen", "late-close"}
    assert all(m["decided"] >= 3 for m in r["misbehaviours"].values()), r["misbehaviours"]
    assert set(r["state_kills"]) == set(KERNEL_STATES)
    assert all(s["confirmed"] >= 3 for s in r["state_kills"].values()), r["state_kills"]
    assert r["probes"]["stale"]["violations"] == 0 and r["probes"]["stale"]["decided"] > 0
    assert r["probes"]["late-write"]["violations"] == 0 and r["probes"]["late-write"]["decided"] > 0
    assert r["read_errors"] == 0 and r["mismatches"] == 0


def probe_changed(run: Path, probe: str, outcome: str) -> None:
    done = False

    def change(e):
        nonlocal done
        if not done and e.get("event") == "probe" and e.get("probe") == probe:
            done = True
            return {**e, "outcome": outcome}
        return e
    rewrite(run / "guest" / "daemon.jsonl", change)
    assert done


@pytest.mark.parametrize("probe,outcome,check", [
    ("stale", "accepted", "stale-answer-probe"),
    ("stale", "unexpected", "stale-answer-probe"),
    ("close-copen", "read-on-closed", "close-copen-probe"),
    ("late-write", "writable", "late-write-probe"),
    ("late-write", "unexpected", "late-write-probe"),
])
def test_a_wrong_answer_to_a_misbehaviour_fails_by_its_probe(run, probe, outcome, check):
    probe_changed(run, probe, outcome)
    r = judged(run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == [check]


def test_a_reused_msg_id_fails(run):
    with open(run / "guest" / "daemon.jsonl", "a") as f:
        f.write(json.dumps({"t": 1.0, "event": "probe", "incarnation": 1, "probe": "reuse", "msg_id": 7,
                            "object_id": 3, "op": "READ", "outcome": "reused"}) + "\n")
    r = judged(run)
    assert r["failed_checks"] == ["stale-answer-probe"] and "delivered again" in r["reasons"][0]


def test_a_redundant_answer_that_nobody_gave_is_a_daemon_error(run):
    log = run / "guest" / "daemon.jsonl"
    first = next(e for e in map(json.loads, log.read_text().splitlines()) if e.get("event") == "redundant")
    rewrite(log, lambda e: None if e.get("event") == "done" and (e.get("incarnation"), e.get("msg_id")) == (
        first["incarnation"], first["msg_id"]) else e)
    assert "daemon-errors" in judged(run)["failed_checks"]


def test_a_misbehaviour_that_never_reached_the_kernel_is_missing_evidence(run):
    rewrite(run / "guest" / "daemon.jsonl", lambda e: None if e.get("event") == "close_fd" and e.get("busy") else e)
    r = judged(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["misbehaviours"]
    assert "lockless-close 0" in r["missing_evidence"][0]


def test_kills_not_confirmed_in_their_state_are_missing_evidence(run):
    """Each restoring kill's process was then delivered a request after its restore (put before
    its exit): the trace no longer confirms it died restoring."""
    lines = (run / "guest" / "trace.txt").read_text().splitlines()
    kills = [json.loads(x) for x in (run / "faults.jsonl").read_text().splitlines()]
    pids = {k["pid"] for k in kills if k.get("state") == "restoring" and k["kind"] == "kill"}
    out = []
    for line in lines:
        for pid in pids:
            if f"sched_process_exit: comm=python3 pid={pid} " in line:
                head = line.split("sched_process_exit:")[0]
                out.append(f"{head}deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=32 "
                           "msg_id=999999 opcode=2 len=32 object_id=999998 a=0 b=4096")
                out.append(f"{head}cachefiles_ondemand_cread: o=00000001 mid={999999:x}")  # answered
        out.append(line)
    (run / "guest" / "trace.txt").write_text("\n".join(out) + "\n")
    r = judged(run)
    assert r["state_kills"]["restoring"]["confirmed"] == 0
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["state-kills"], r["reasons"]
