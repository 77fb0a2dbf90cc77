"""The daemon's facts from the kernel alone (harness/judge/kernelfacts.py) against those from its
and the keeper's logs (evidence.daemon_facts), on every captured run (tests/fixtures/run-*): where
they agree, and each place they differ, exactly, with why. Then each definition's negative
control (the captured trace changed), and report.py's wiring for a foreign daemon."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from functools import cache
from pathlib import Path
from typing import NamedTuple

import jsonschema
import pytest

from guest_scripts.contract import Event
from harness.judge import evidence, kernelfacts, ledger, reopenumount, report, trace
from helpers import FIXTURES

RUNS = ("run-crash-5-kills", "run-close-fds", "run-adversarial", "run-cache-death", "run-no-failover")
CRASH = "run-crash-5-kills"

# incarnations the keeper started that never read the device: not in the ledger. run-adversarial's
# incarnation 11 (pid 303) wrote its `restore` and was killed (host kill #6) 10 ms later, before its
# first read(): a death all the same, from its exit in the trace (the kill named it, and a daemon
# went on after it), holding nothing.
NEVER_READ = {"run-adversarial": {303}}


class Judged(NamedTuple):
    logs: evidence.RunLogs
    events: list[trace.TraceEvent]
    ledger: ledger.Ledger
    log: evidence.DaemonFacts  # from the daemon's and keeper's logs
    kernel: evidence.DaemonFacts  # from the kernel


@cache
def judged(name: str) -> Judged:
    """Both sets of facts, loaded as report.evaluate loads them."""
    logs = evidence.RunLogs.load(FIXTURES / name)
    events = trace.parse(logs.trace)
    assert not logs.trace_lost and not logs.kprobe_missed  # a whole trace: report.py builds its ledger
    unmounted = reopenumount.judge(logs.keeper, events, complete=True)
    lg = ledger.build(events, None, frozenset(u.debug_id for u in unmounted if u.restored and u.debug_id is not None))
    return Judged(logs, events, lg, evidence.daemon_facts(logs.keeper, logs.daemon, logs.host_kills),
                  kernelfacts.daemon_facts_from_kernel(events, lg, logs.host_kills))


def started_pids(logs: evidence.RunLogs) -> set[int]:
    return {e["pid"] for e in logs.keeper if e.get("event") == Event.STARTED}


def by_pid(facts: evidence.DaemonFacts) -> dict[int, evidence.Death]:
    return {d.pid: d for d in facts.deaths}


def common_deaths(j: Judged) -> list[tuple[evidence.Death, evidence.Death]]:
    """(from the log, from the kernel) of every death both see."""
    kernel = by_pid(j.kernel)
    return [(d, kernel[d.pid]) for d in j.log.deaths if d.pid in kernel]


# -- where the kernel and the logs agree ----------------------------------------------------------

@pytest.mark.parametrize("name", RUNS)
def test_the_incarnations_that_read_the_device_are_the_keeper_s(name):
    j = judged(name)
    kernel = {p.tgid for p in j.ledger.processes}
    assert kernel <= started_pids(j.logs)
    assert started_pids(j.logs) - kernel == NEVER_READ.get(name, set())
    assert j.kernel.incarnations == j.log.incarnations  # the killed ones that never read counted too
    # numbered in the order they came (first read, or the exit of one that never read): the keeper's
    assert all(k.incarnation == log.incarnation for log, k in common_deaths(j))


def test_the_invisible_incarnation_wrote_a_restore_and_died_but_never_read():
    j = judged("run-adversarial")
    mine = [e.event for e in j.events if e.tgid == 303]
    assert "restore" in mine and "exit" in mine and "deliver" not in mine
    assert by_pid(j.log)[303].held == ()  # nothing held: the kernel lost nothing it could show


@pytest.mark.parametrize("name", RUNS)
def test_the_deaths_are_the_keeper_s_sigkills(name):
    j = judged(name)
    assert {d.pid for d in j.kernel.deaths} == {d.pid for d in j.log.deaths}
    # every other exit of a process that read the device: our daemon stopped at the end of the
    # run, or (cache-death) exiting once its cache died; the keeper logged each with exit code 0
    not_deaths = {p.tgid for p in j.ledger.processes if p.died_ts is not None} - {d.pid for d in j.kernel.deaths}
    clean = {e["pid"] for e in j.logs.keeper if e.get("event") == Event.DIED and e.get("exit_code") == 0}
    assert not_deaths == clean
    assert [d.cause for d in sorted(j.kernel.deaths, key=lambda d: d.pid)] == \
        [d.cause for d in sorted(j.log.deaths, key=lambda d: d.pid) if d.pid in by_pid(j.kernel)]


@pytest.mark.parametrize("name", RUNS)
def test_each_kill_is_matched_to_the_same_death(name):
    j = judged(name)
    assert len(j.kernel.kills) == len(j.log.kills)
    for log_kill, kernel_kill in zip(j.log.kills, j.kernel.kills):
        assert kernel_kill.pid == log_kill.pid
        assert (kernel_kill.death and kernel_kill.death.pid) == (log_kill.death and log_kill.death.pid)
        if log_kill.pid in NEVER_READ.get(name, ()):
            assert kernel_kill.death is not None and kernel_kill.death.held == ()


@pytest.mark.parametrize("name", RUNS)
def test_in_flight_restored_and_served_after_agree_per_death(name):
    j = judged(name)
    both = common_deaths(j)
    assert len(both) == len(j.kernel.deaths)
    for log_death, kernel_death in both:
        assert bool(kernel_death.held) == bool(log_death.held), log_death.pid
        assert kernel_death.restored == log_death.restored, log_death.pid
        assert kernel_death.served_after == log_death.served_after, log_death.pid
        # both from the death to the first answer after it, on their own clocks: the kernel's from
        # the exit, which the keeper reaps later (up to 1.2 s under TCG: run-no-failover's 246),
        # to the answer, which the daemon logs a little after the kernel took it
        assert log_death.recovery_s is not None and kernel_death.recovery_s is not None
        assert -0.01 < kernel_death.recovery_s - log_death.recovery_s < 1.5
    in_flight = [k.index for k in j.log.kills if k.death and k.death.in_flight]
    assert [k.index for k in j.kernel.kills if k.death and k.death.in_flight] == in_flight
    assert j.kernel.kills_in_flight == j.log.kills_in_flight


@pytest.mark.parametrize("name", RUNS)
def test_held_msg_ids_are_the_ledger_s(name):
    j = judged(name)
    for p in j.ledger.processes:
        assert len(p.held_ids) == p.held and len(p.redelivered_ids) == p.redelivered
        assert set(p.redelivered_ids) <= set(p.held_ids)
    for d in j.kernel.deaths:
        account = next((p for p in j.ledger.processes if p.tgid == d.pid), None)
        if account is None:  # killed before it read anything
            assert d.pid in NEVER_READ.get(name, ()) and (d.held, d.redelivered) == ((), ())
        else:
            assert (d.held, d.redelivered) == (account.held_ids, account.redelivered_ids)


@pytest.mark.parametrize("name", RUNS)
def test_restores_agree(name):
    j = judged(name)
    assert j.kernel.restores_ok == j.log.restores_ok == len(j.ledger.restores)
    assert j.kernel.restores_failed == j.log.restores_failed == 0


# -- where they differ, exactly -------------------------------------------------------------------

# (msg_ids held at a death by the log only, by the kernel only), per run
HELD_DIFFERENCES = {"run-adversarial": (29, 3)}


def _answered_in(j: Judged) -> dict[tuple[int, int], float]:
    """(tgid, msg_id) -> when the kernel first took that process's answer to it."""
    out: dict[tuple[int, int], float] = {}
    for e in j.events:
        mid = e.fields.get("mid") if e.event in ("copen", "cread") else \
            e.fields.get("id") if e.event == "copened" and e.fields.get("ret") == 0 else None
        if mid is not None:
            out.setdefault((e.tgid, mid), e.ts)
    return out


def _closes_delivered(j: Judged) -> set[tuple[int, int]]:
    return {(e.tgid, e.fields["msg_id"]) for e in j.events
            if e.event == "deliver" and e.fields.get("ret", 0) > 0 and e.fields.get("opcode") == kernelfacts.CLOSE_OPCODE}


@pytest.mark.parametrize("name", RUNS)
def test_held_requests_differ_only_where_the_log_cannot_know(name):
    """A request the log holds and the kernel does not was answered before the death (the
    misbehaving daemon closes the anon fd around its copen and logs `close_fd`, not `done`; or the
    kill came between the answer and its `done` line), or is a CLOSE, which the kernel ends at its
    delivery. One the kernel holds and the log does not was delivered to a process killed before
    its `recv` line. What came back agrees on the rest."""
    j = judged(name)
    answered, closes = _answered_in(j), _closes_delivered(j)
    died = {p.tgid: p.died_ts for p in j.ledger.processes}
    log_only = kernel_only = 0
    for log_death, kernel_death in common_deaths(j):
        pid = log_death.pid
        recv = {e["msg_id"] for e in j.logs.daemon if e.get("pid") == pid and e.get("event") == Event.RECV}
        for msg_id in set(log_death.held) - set(kernel_death.held):
            log_only += 1
            ended_at = answered.get((pid, msg_id))
            assert (ended_at is not None and ended_at < (died[pid] or 0)) or (pid, msg_id) in closes, (pid, msg_id)
        for msg_id in set(kernel_death.held) - set(log_death.held):
            kernel_only += 1
            assert msg_id not in recv, (pid, msg_id)
        both = set(log_death.held) & set(kernel_death.held)
        assert set(log_death.redelivered) & both == set(kernel_death.redelivered) & both, pid
    assert (log_only, kernel_only) == HELD_DIFFERENCES.get(name, (0, 0))


# kernel minus log, by opcode, besides CLOSE (below)
ANSWERED_DIFFERENCES = {
    # 25 OPENs the misbehaving daemon closed the anon fd of around its copen (close-copen: it logs
    # `close_fd`, no `done`; the kernel took each out at its copen); 2 OPENs and 1 READ answered
    # by a process killed before its `done` line (below)
    "run-adversarial": {"OPEN": 27, "READ": 1},
    # one READ_COMPLETE the kernel took (its `cread`) 56 us after the `unbind` probe, at the entry of
    # the device's release, which ends every live request in the ledger (`flushed`)
    "run-cache-death": {"READ": -1},
}


@pytest.mark.parametrize("name", RUNS)
def test_answered_by_op(name):
    j = judged(name)
    # a CLOSE is never answered: the kernel ends it at its delivery; our daemon logs `done` once
    # it has closed the fd, so the log counts CLOSEs and the kernel none
    assert "CLOSE" not in j.kernel.answered and 0 < j.log.answered["CLOSE"] <= j.ledger.by_op["CLOSE"]
    expected = {op: n + ANSWERED_DIFFERENCES.get(name, {}).get(op, 0) for op, n in j.log.answered.items() if op != "CLOSE"}
    assert j.kernel.answered == expected


def test_the_adversarial_run_s_answers_the_log_never_shows():
    j = judged("run-adversarial")
    closed_at_copen = [e for e in j.logs.daemon if e.get("event") == Event.CLOSE_FD and e.get("at") == "copen"]
    assert len(closed_at_copen) == 25
    answered = _answered_in(j)
    done = {(e["pid"], e["msg_id"]) for e in j.logs.daemon if e.get("event") == Event.DONE}
    died = {p.tgid: p.died_ts or 0.0 for p in j.ledger.processes}
    killed_before_done = {key: round(died[key[0]] - ts, 4) for key, ts in answered.items()
                          if key not in done and key not in {(e["pid"], e["msg_id"]) for e in closed_at_copen}}
    # (pid, msg_id) -> how long before its process's exit the kernel took the answer: 13-33 ms
    assert killed_before_done.keys() == {(319, 830), (349, 1225), (339, 1213)}
    assert all(0 < s < 0.05 for s in killed_before_done.values())


def test_the_cache_death_s_answer_after_the_release_began():
    j = judged("run-cache-death")
    unbind = next(e.ts for e in j.events if e.event == "unbind")
    cread = next(e for e in j.events if e.event == "cread" and e.tgid == 206 and e.fields["mid"] == 49)
    assert 0 < cread.ts - unbind < 0.0001
    assert any(e.get("event") == Event.DONE and e.get("pid") == 206 and e.get("msg_id") == 49 for e in j.logs.daemon)


@pytest.mark.parametrize("name", RUNS)
def test_empty_reads_include_the_probes_own(name):
    """The kernel counts every read() that found nothing; our daemon logs `empty_read` for its
    serving loop's, and counts the epollin probe's drain reads in the probe's line (`empties`)."""
    j = judged(name)
    probes = sum(int(e.get("empties", 0)) for e in j.logs.daemon if e.get("event") == Event.PROBE)
    assert j.kernel.empty_reads == j.log.empty_reads + probes
    assert probes == (4 if name == "run-close-fds" else 0)


@pytest.mark.parametrize("name", RUNS)
def test_fd_closes_are_the_daemon_s_own_closes(name):
    """The anon fds the daemon let go unasked: our daemon logs each `close_fd`, except the fd of an
    OPEN it could not answer because its object was dropped (the umount-reopen fault: it logs
    `dropped`), which the kernel cannot tell from any other close."""
    j = judged(name)
    dropped = sum(1 for e in j.logs.daemon if e.get("event") == Event.DROPPED and e.get("op") == "OPEN")
    assert j.kernel.fd_closes == j.log.fd_closes + dropped
    assert (j.log.fd_closes, dropped) == {"run-close-fds": (40, 0), "run-adversarial": (55, 5)}.get(name, (0, 0))


@pytest.mark.parametrize("name", RUNS)
def test_the_daemon_s_errors_are_not_the_kernel_s(name):
    assert judged(name).kernel.errors == ()
    assert judged(name).log.errors == ()  # every captured run is of a correct kernel


# -- negative controls: the captured trace changed ------------------------------------------------

def crash_lines() -> list[str]:
    return (FIXTURES / CRASH / "guest" / "trace.txt").read_text().splitlines()


def facts(lines: list[str], host_kills: list[evidence.LogEvent] | None = None) -> evidence.DaemonFacts:
    events = trace.parse("\n".join(lines))
    kills = judged(CRASH).logs.host_kills if host_kills is None else host_kills
    return kernelfacts.daemon_facts_from_kernel(events, ledger.build(events), kills)


def without(lines: list[str], *needles: str) -> list[str]:
    out = [line for line in lines if not all(n in line for n in needles)]
    assert len(out) == len(lines) - 1, needles
    return out


def test_the_captured_crash_run_unchanged():
    f = facts(crash_lines())
    assert [(d.pid, d.restored, d.served_after) for d in f.deaths] == [(p, True, True) for p in (216, 228, 230, 231, 232)]


def test_no_restore_after_a_death_is_not_restored():
    # 228, the next incarnation, wrote the only `restore` between 216's death and its own
    f = facts(without(crash_lines(), "python3-228", "restore:"))
    d = by_pid(f)
    assert (d[216].restored, d[216].served_after) == (False, False)
    assert d[216].recovery_s is not None  # answers came, from a process that never restored
    assert all(d[p].restored for p in (228, 230, 231, 232))


def test_a_restore_by_the_dead_process_itself_does_not_restore():
    lines = crash_lines()
    i = next(i for i, line in enumerate(lines) if "python3-228" in line and "restore:" in line)
    lines[i] = lines[i].replace("python3-228     (    228)", "python3-216     (    216)")
    assert not by_pid(facts(lines))[216].restored


def test_a_restore_by_a_process_that_never_reads_restores():
    """A foreign daemon's supervisor may write the `restore`: any process but the dead one."""
    lines = crash_lines()
    i = next(i for i, line in enumerate(lines) if "python3-228" in line and "restore:" in line)
    lines[i] = lines[i].replace("python3-228     (    228)", "python3-215     (    215)")  # the keeper
    assert by_pid(facts(lines))[216].restored


def test_a_restore_after_the_next_death_is_too_late():
    lines = without(crash_lines(), "python3-228", "restore:")
    assert not by_pid(facts(lines))[216].restored  # 230's restore (93.1) comes after 228 died (78.0)


def test_no_exit_no_death():
    f = facts(without(crash_lines(), "sched_process_exit: comm=python3 pid=216 "))
    assert 216 not in by_pid(f)
    assert f.kills[0].pid == 216 and f.kills[0].death is None
    assert [k.death is not None for k in f.kills[1:]] == [True] * 4


def test_a_kill_whose_pid_never_read_the_device_killed_no_incarnation():
    kills = [*judged(CRASH).logs.host_kills, {"index": 5, "kind": "kill", "pid": 215}]  # the keeper: never reads
    f = facts(crash_lines(), kills)
    assert f.kills[5] == evidence.Kill(5, 215, None)
    assert [k.death and k.death.pid for k in f.kills[:5]] == [216, 228, 230, 231, 232]


def test_the_end_of_the_run_is_no_death_unless_a_kill_names_it():
    """233 serves to the end and is stopped (the keeper: exit code 0): it held nothing and no
    process read the device after. Had the host killed it, it would be a death, and unrestored."""
    assert 233 not in by_pid(facts(crash_lines()))
    kills = [*judged(CRASH).logs.host_kills, {"index": 5, "kind": "kill", "pid": 233}]
    d = by_pid(facts(crash_lines(), kills))[233]
    assert (d.cause, d.restored, d.served_after, d.held) == ("kill", False, False, ())


def test_an_exit_that_held_a_request_is_a_death_even_at_the_end():
    """233 given a READ just before its exit, never answered: it died holding it."""
    lines = crash_lines()
    exit_233 = next(i for i, line in enumerate(lines) if "sched_process_exit: comm=python3 pid=233 " in line)
    lines.insert(exit_233, "         python3-233     (    233) [000] .....   186.400000: deliver: (vfs_read+0x84/0x14b <- "
                           "cachefiles_ondemand_daemon_read) ret=32 msg_id=999 opcode=2 len=32 object_id=4242 a=0 b=4096")
    d = by_pid(facts(lines))[233]
    assert (d.held, d.cause, d.restored, d.served_after) == ((999,), "signal", False, False)


def test_an_exit_after_its_cache_died_is_the_cache_s():
    j = judged("run-cache-death")
    assert {206, 245, 254, 267}.isdisjoint(by_pid(j.kernel))
    lines = (FIXTURES / "run-cache-death" / "guest" / "trace.txt").read_text().splitlines()
    # without the device's release the exit of 206 is a death: the next process read the device
    d = by_pid(facts(without(lines, "python3-207", "unbind:"), []))[206]
    assert d.cause == "signal" and d.held == ()


def test_fd_closes_control():
    """A CLOSE delivered makes its release the daemon's answer; without it the release is unasked."""
    lines = (FIXTURES / "run-close-fds" / "guest" / "trace.txt").read_text().splitlines()
    assert facts(lines, []).fd_closes == 40
    close = next(line for line in lines if "deliver:" in line and " opcode=1 " in line and " ret=16 " in line)
    assert facts(without(lines, close), []).fd_closes == 41
    # the releases at an exit are not the daemon's: the crash run's 15 (3 a death) are none
    assert facts(crash_lines()).fd_closes == 0


def test_no_ledger_no_incarnations():
    f = kernelfacts.daemon_facts_from_kernel([], ledger.Ledger.none("the ring buffer overran"),
                                             judged(CRASH).logs.host_kills)
    assert f.incarnations == 0 and f.deaths == () and all(k.death is None for k in f.kills)


# -- report.py: a foreign daemon judged from the kernel -------------------------------------------

def foreign_run(tmp_path: Path, name: str = CRASH, daemon: object = None) -> Path:
    run = shutil.copytree(FIXTURES / name, tmp_path / name)
    meta = json.loads((run / "run.json").read_text())
    meta["daemon"] = {"name": "cdaemon", "foreign": True} if daemon is None else daemon
    (run / "run.json").write_text(json.dumps(meta))
    return run


def test_foreign_daemon_is_read_from_run_json():
    assert report.foreign_daemon({}) is None
    assert report.foreign_daemon({"daemon": {"name": "daemon.py"}}) is None
    assert report.foreign_daemon({"daemon": {"name": "daemon.py", "foreign": False}}) is None
    assert report.foreign_daemon({"daemon": {"name": "cdaemon", "foreign": True}}) == "cdaemon"


def test_a_foreign_daemon_s_run_is_judged_from_the_kernel(tmp_path):
    run = foreign_run(tmp_path)
    r = report.evaluate(run)
    assert (r["verdict"], r["reasons"], r["missing_evidence"]) == ("PASS", [], [])
    assert r["evidence"]["daemon_facts_from"] == "kernel" and r["evidence"]["foreign_daemon"] == "cdaemon"
    assert r["evidence"]["requests_answered"] == {"OPEN": 27, "READ": 267}  # no CLOSE: the kernel's count
    assert [d["pid"] for d in r["deaths"]] == [216, 228, 230, 231, 232] and r["kills_in_flight"] == 5
    assert "daemon facts: from the kernel's trace and ledger (foreign daemon cdaemon)" in (run / "summary.txt").read_text()
    schema = json.loads(report.SCHEMA_FILE.read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads((run / "results.json").read_text()))) == []


def test_a_foreign_daemon_s_reads_after_reopen_come_from_the_kernel(tmp_path):
    """close-fds' evidence for another daemon: the ledger's READs on reopened objects (174, as
    our daemon's log has them), with no daemon log at all; ours still from its log."""
    run = foreign_run(tmp_path, "run-close-fds")
    (run / "guest" / "daemon.jsonl").write_text("")
    r = report.evaluate(run)
    assert r["evidence"]["reads_after_reopen"] == 174 and "reads-after-reopen" not in r.get("missing_checks", [])


def test_a_foreign_daemon_needs_no_log_of_its_own(tmp_path):
    run = foreign_run(tmp_path)
    for log in ("daemon.jsonl", "keeper.jsonl"):
        (run / "guest" / log).write_text("")
    r = report.evaluate(run)
    assert r["verdict"] == "PASS" and r["evidence"]["deaths"] == 5 and r["evidence"]["incarnations"] == 6


def test_without_the_key_the_logs_are_judged(tmp_path):
    """A run.json with no foreign daemon (ours, or a run from before --daemon) is judged from the logs."""
    today = report.evaluate(shutil.copytree(FIXTURES / CRASH, tmp_path / "today"))
    assert "daemon_facts_from" not in today["evidence"] and today["evidence"]["requests_answered"]["CLOSE"] == 12
    not_foreign = report.evaluate(foreign_run(tmp_path / "b", daemon={"name": "python", "foreign": False}))
    assert not_foreign["evidence"] == today["evidence"] and not_foreign["deaths"] == today["deaths"]
    assert not_foreign["verdict"] == today["verdict"]


def test_a_foreign_daemon_s_run_without_a_ledger_is_inconclusive_not_failed(tmp_path):
    run = foreign_run(tmp_path)
    trace_txt = run / "guest" / "trace.txt"
    trace_txt.write_text("\n".join(l for l in trace_txt.read_text().splitlines() if "deliver:" not in l) + "\n")
    r = report.evaluate(run)
    assert r["verdict"] == "INCONCLUSIVE" and "kills" not in r["failed_checks"], r["reasons"]