"""Fault.UMOUNT_REOPEN judged (harness/judge/reopenumount.py): what the object's drop met, and the
rule's negative controls: first on trace lines in the kernel's format (the kprobes as
harness/judge/trace.py defines them), parsed as a run's are; then on the captured adversarial run
(seed 1, the correct kernel), changed where a kernel that does not wait for the reopen work, or
does not end its OPEN, changes it."""
import json
import re
import shutil
from pathlib import Path

import pytest

from harness.judge import reopenumount, trace
from harness.judge.reopenumount import DropState
from helpers import FIXTURES, judged

WAITER = 400
KEEPER = [{"event": "reopen_umounted", "pid": WAITER, "fsid": "img1.reopen1", "at": "open"}]
O = 0x2a  # the waiter's object


def line(task: str, pid: int, ts: float, event: str, args: str) -> str:
    return f"{task}-{pid:<6} ({pid:>7}) [000] .....  {ts:10.6f}: {event}: {args}"


MARK = line("python3", 300, 10.0, "tracing_mark_write", f"reopen_go={WAITER}")
READ = line("python3", WAITER, 10.1, "cachefiles_ondemand_read", f"o={O:08x} mid=0 oid=0 s=0 l=1000")


def work(start: float, end: float | None, obj: int = O, init_at: float | None = None, kworker: int = 50) -> list[str]:
    lines = [line("kworker/u8:1", kworker, start, "reopen_work", "(ondemand_object_worker+0x0/0x20)"),
             line("kworker/u8:1", kworker, init_at or start + 0.001, "init_object",
                  f"(cachefiles_ondemand_init_object+0x4/0x100) o={obj}")]
    if end is not None:
        lines.append(line("kworker/u8:1", kworker, end, "reopen_worked",
                          "(process_one_work+0x1/0x2 <- ondemand_object_worker)"))
    return lines


def delivered(ts: float, msg_id: int = 77, began: float | None = None, thread: int = 210) -> list[str]:
    """The OPEN for O delivered by a read() of the device that began at `began` (just before)."""
    return [line("python3", thread, ts - 0.0005 if began is None else began, "read_begin",
                 "(cachefiles_daemon_read+0x1/0x2)"),
            line("python3", thread, ts, "cachefiles_ondemand_open", f"o={O:08x} mid=0 oid=0 fd=12 f=0"),
            line("python3", thread, ts + 0.0005, "deliver", f"(vfs_read+0x1/0x2 <- cachefiles_ondemand_daemon_read) "
                 f"ret=53 msg_id={msg_id} opcode=0 len=53 object_id=9 a=0 b=0")]


def restore(ts: float, pid: int = 220) -> str:
    return line("python3", pid, ts, "restore", "(cachefiles_daemon_write+0x1/0x2)")


def copened(ts: float, ret: int, msg_id: int = 77) -> str:
    return line("python3", 211, ts, "copened", f"(cachefiles_daemon_write+0x1/0x2 <- cachefiles_ondemand_copen) "
                f"ret={ret} id=\"{msg_id}\"")


def drop(start: float, end: float | None, obj: int = O) -> list[str]:
    lines = [line("kworker/u8:2", 60, start, "drop", f"(cachefiles_ondemand_clean_object+0x4/0xcb) o={obj}")]
    if end is not None:
        lines.append(line("kworker/u8:2", 60, end, "dropped",
                          "(cachefiles_withdraw_cookie+0x1/0x2 <- cachefiles_ondemand_clean_object)"))
    return lines


def judge(*lines: str) -> reopenumount.ReopenUmount:
    events = trace.parse("\n".join(sorted(lines, key=lambda s: float(s.split(": ")[0].split()[-1]))))
    (u,) = reopenumount.judge(KEEPER, events)
    return u


def test_a_drop_that_ends_the_held_open_and_waits_for_the_work_decides_and_holds():
    u = judge(MARK, READ, *work(10.2, 10.52), *delivered(10.3), *drop(10.5, 10.53), copened(10.8, -22))
    assert (u.state, u.decided, u.violations) == (DropState.DELIVERED, True, ())
    assert (u.debug_id, u.drop_start, u.drop_end) == (O, 10.5, 10.53)


def test_a_drop_while_the_work_runs_before_its_open_is_delivered():
    u = judge(MARK, READ, *work(10.2, 10.55, init_at=10.52), *drop(10.5, 10.56))
    assert (u.state, u.decided, u.violations) == (DropState.RUNNING, True, ())


def test_a_work_that_returns_after_the_drop_did_fails():
    u = judge(MARK, READ, *work(10.2, 10.6), *delivered(10.3), *drop(10.5, 10.53), copened(10.8, -22))
    assert u.state == DropState.DELIVERED
    (v,) = u.violations
    assert "returned 0.070 s after the drop did" in v


def test_a_work_that_never_returns_fails():
    (v,) = judge(MARK, READ, *work(10.2, None), *delivered(10.3), *drop(10.5, 10.53)).violations
    assert "never returned (the drop did not wait for it)" in v


def test_a_work_that_begins_on_the_object_after_its_drop_fails():
    """The mutant's shape: queued before the drop, started (init_object) once the object went."""
    u = judge(MARK, READ, *work(10.2, 10.9, init_at=10.8), *drop(10.5, 10.53))
    assert u.state == DropState.RUNNING
    (v,) = u.violations
    assert "began on object 0000002a 0.270 s after its drop returned" in v


def test_a_late_copen_the_kernel_takes_after_the_drop_fails():
    (v,) = judge(MARK, READ, *work(10.2, 10.52), *delivered(10.3), *drop(10.5, 10.53), copened(10.8, 0)).violations
    assert "msg_id 77" in v and "the kernel took the copen" in v


def test_a_drop_that_leaves_the_open_outstanding_until_its_copen_fails():
    """A drop that does not end the held OPEN waits on the work, which waits on the copen: the
    copen is taken during the drop, and the drop returns after it."""
    (v,) = judge(MARK, READ, *work(10.2, 15.51), *delivered(10.3), *drop(10.5, 15.52), copened(15.5, 0)).violations
    assert "still there to answer 5.000 s later: the drop did not end it" in v


def test_a_drop_that_never_returns_fails():
    (v,) = judge(MARK, READ, *work(10.2, 10.52), *delivered(10.3), *drop(10.5, None)).violations
    assert v == "the drop of object 0000002a never returned"


def test_a_drop_that_met_no_reopen_or_a_finished_one_decides_nothing():
    assert judge(MARK, READ, *drop(10.5, 10.53)).state == DropState.NONE
    answered = judge(MARK, READ, *work(10.2, 10.45), *delivered(10.3), copened(10.4, 0), *drop(10.5, 10.53))
    assert (answered.state, answered.decided, answered.violations) == (DropState.ANSWERED, False, ())


def test_an_open_for_the_object_by_a_read_begun_after_its_drop_returned_fails():
    u = judge(MARK, READ, *work(10.2, 10.55, init_at=10.52), *drop(10.5, 10.56), *delivered(10.7, began=10.6))
    assert u.violations == ("an OPEN for object 0000002a was delivered by a read() of the device that began "
                            "0.040 s after its drop returned",)


def test_an_open_taken_by_a_read_begun_before_the_drop_may_come_out_after_it():
    """The read() took the OPEN before the drop cancelled it, and was slow to hand it out: the
    drop does not wait for a read(), and the late copen is refused."""
    u = judge(MARK, READ, *work(10.2, 10.55), *delivered(10.7, began=10.49), *drop(10.5, 10.56), copened(10.8, -22))
    assert (u.state, u.decided, u.violations) == (DropState.RUNNING, True, ())


def test_a_drop_after_a_restore_marked_the_held_open_again():
    """UmountAt.RESTORE: the holder died, the next incarnation's restore came, the drop came
    before any read() took the OPEN again."""
    u = judge(MARK, READ, *work(10.2, 10.56), *delivered(10.3), restore(10.45), *drop(10.5, 10.57), copened(10.9, -22))
    assert (u.state, u.decided, u.restored, u.decided_in_restore, u.violations) == \
        (DropState.RESTORED, True, True, True, ())


def test_a_drop_after_the_restored_open_was_delivered_again():
    u = judge(MARK, READ, *work(10.2, 10.56), *delivered(10.3), restore(10.45), *delivered(10.48, thread=221),
              *drop(10.5, 10.57), copened(10.9, -22))
    assert (u.state, u.decided_in_restore, u.violations) == (DropState.DELIVERED, True, ())
    no_restore = judge(MARK, READ, *work(10.2, 10.56), *delivered(10.3), *drop(10.5, 10.57))
    assert (no_restore.state, no_restore.restored, no_restore.decided_in_restore) == (DropState.DELIVERED, False, False)


def test_a_restored_open_the_drop_left_outstanding_fails():
    """The drop did not cancel the OPEN the restore marked again: the next incarnation read it
    after the drop began, and the kernel took its copen."""
    (v,) = judge(MARK, READ, *work(10.2, 10.8), *delivered(10.3), restore(10.45), *drop(10.5, 10.81),
                 *delivered(10.6, thread=221), copened(10.7, 0)).violations
    assert "msg_id 77" in v and "restored, outstanding when the drop began" in v and "took the copen" in v


def test_a_work_that_ended_before_the_drop_is_not_one_it_met():
    u = judge(MARK, READ, *work(10.2, 10.3), *drop(10.5, 10.53))
    assert (u.state, u.decided) == (DropState.NONE, False)


def test_an_incomplete_trace_decides_nothing_and_finds_nothing():
    """A lost return (ring buffer, a kprobe's miss) would read as a work or a drop never returned."""
    lines = (MARK, READ, *work(10.2, None), *delivered(10.3), *drop(10.5, 10.53))
    events = trace.parse("\n".join(lines))
    assert judge(*lines).violations
    (u,) = reopenumount.judge(KEEPER, events, complete=False)
    assert (u.state, u.decided, u.violations) == (DropState.DELIVERED, False, ())


def test_other_objects_works_and_drops_are_not_the_waiters():
    u = judge(MARK, READ, *work(10.2, 10.9, obj=O + 1, kworker=51), *drop(10.4, 10.41, obj=O + 1),
              *work(10.25, 10.52), *delivered(10.3), *drop(10.5, 10.53))
    assert (u.state, u.violations) == (DropState.DELIVERED, ())


def test_no_read_of_the_waiters_or_no_drop_decides_nothing():
    assert judge(MARK, *drop(10.5, 10.53)).state == DropState.NO_DROP
    assert judge(MARK, READ, *work(10.2, 10.52)).state == DropState.NO_DROP
    # a READ before the mark is its mount's, served: not the one that found the object closed
    early = line("python3", WAITER, 9.0, "cachefiles_ondemand_read", f"o={O:08x} mid=0 oid=0 s=0 l=1000")
    assert judge(early, MARK, *drop(10.5, 10.53)).state == DropState.NO_DROP


# -- the captured run (tests/fixtures/run-adversarial: seed 1, the correct kernel) -------------

RUN = FIXTURES / "run-adversarial"


@pytest.fixture
def run(tmp_path) -> Path:
    return shutil.copytree(RUN, tmp_path / "run")


def trace_lines(run: Path) -> list[str]:
    return (run / "guest" / "trace.txt").read_text().splitlines()


def set_trace(run: Path, lines: list[str]) -> None:
    (run / "guest" / "trace.txt").write_text("\n".join(lines) + "\n")


def decided(r: dict) -> list[dict]:
    return [u for u in r["reopen_umounts"] if u["decided"]]


def test_every_held_reopen_met_by_its_drop_is_ended_and_waited_for(run):
    r = judged(run)
    assert r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    unmounted = r["reopen_umounts"]
    assert len(decided(r)) >= 3 and not any(u["violations"] for u in unmounted), unmounted
    assert all(u["state"] == DropState.DELIVERED for u in unmounted if u["at"] == "open"), unmounted
    # at a restore: the drop came before the restored OPEN was delivered again (restore: the
    # incarnation starting) or after (redeliver: its threads reading), both after the restore
    at_restore = [u for u in decided(r) if u["at"] in ("restore", "redeliver")]
    assert len(at_restore) >= 3 and all(u["restored"] for u in at_restore), unmounted
    assert {u["state"] for u in at_restore} == {DropState.RESTORED, DropState.DELIVERED}, at_restore
    # the daemon's late answer to each OPEN it held was refused: the drop had ended it
    daemon = [json.loads(line) for line in (run / "guest" / "daemon.jsonl").read_text().splitlines()]
    held = [u for u in decided(r) if u["state"] == DropState.DELIVERED]
    assert sum(e["event"] == "dropped" and e["errno"] == 22 for e in daemon) >= len(held)


def test_a_restored_open_handed_out_by_a_read_begun_after_its_drop_fails(run):
    """An OPEN a restore marked again, which the drop ended before any read() took it, handed out
    by a read() that began after the drop returned: the drop left it queued."""
    u = next(u for u in decided(judged(run)) if u["state"] == DropState.RESTORED)
    lines = trace_lines(run)
    (dropped,) = [i for i, s in enumerate(lines) if " dropped: " in s and ts(s) == u["drop_end"]]
    at = u["drop_end"]
    lines[dropped + 1:dropped + 1] = [
        f"         python3-999     (    999) [001] .....  {at + 0.010:.6f}: read_begin: (cachefiles_daemon_read+0x1/0x2)",
        f"         python3-999     (    999) [001] .....  {at + 0.011:.6f}: cachefiles_ondemand_open: "
        f"o={u['debug_id']:08x} mid=0 oid=0 fd=12 f=0"]
    set_trace(run, lines)
    r = judged(run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["reopen-umount-probe"], r["reasons"]
    assert "by a read() of the device that began 0.010 s after its drop returned" in r["reasons"][0]
    # begun before the drop returned, it may have taken the OPEN first: no violation
    lines[dropped + 1] = lines[dropped + 1].replace(f"{at + 0.010:.6f}", f"{at - 0.000001:.6f}")
    set_trace(run, lines)
    assert judged(run)["verdict"] == "PASS"


def test_a_reopen_work_that_returns_after_its_drop_fails(run):
    """The worker's return moved to just after the drop's: the drop did not wait for it."""
    u = decided(judged(run))[0]
    lines = trace_lines(run)
    (worked,) = [i for i, s in enumerate(lines) if " reopen_worked: " in s and u["drop_start"] - 5 < ts(s) < u["drop_end"]
                 and worker_of(lines, i, u["debug_id"])]
    line = lines.pop(worked)
    (dropped,) = [i for i, s in enumerate(lines) if " dropped: " in s and ts(s) == u["drop_end"]]
    lines.insert(dropped + 1, line.replace(f" {ts(line):.6f}: ", f" {u['drop_end'] + 0.000001:.6f}: "))
    set_trace(run, lines)
    r = judged(run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["reopen-umount-probe"], r["reasons"]
    assert "the drop did not wait for it" in r["reasons"][0]


def test_a_held_open_the_kernel_takes_after_its_drop_fails(run):
    """The held OPEN's late copen, refused (ret=-22), made accepted: the drop left it outstanding."""
    lines = trace_lines(run)
    first = decided(judged(run))[0]
    refused = [i for i, s in enumerate(lines) if " copened: " in s and "ret=-22" in s and ts(s) > first["drop_end"]]
    lines[refused[0]] = lines[refused[0]].replace("ret=-22", "ret=0")
    set_trace(run, lines)
    r = judged(run)
    assert r["verdict"] == "FAIL" and "reopen-umount-probe" in r["failed_checks"], r["reasons"]
    assert "the drop did not end it" in " ".join(r["reasons"])


def test_without_the_drops_nothing_is_decided(run):
    """The drops' returns taken out: no drop is judged, so none excuses the held OPENs it ended
    after a restore either (the ledger's `held`): not a PASS, and no evidence."""
    set_trace(run, [s for s in trace_lines(run) if " dropped: " not in s])
    r = judged(run)
    assert r["verdict"] != "PASS" and "reopen-umounts" in r["missing_checks"], r["missing_evidence"]
    assert "restore-umounts" in r["missing_checks"] and not decided(r)


def ts(line: str) -> float:
    m = re.search(r" (\d+\.\d+): ", line)
    return float(m.group(1)) if m else -1.0


def worker_of(lines: list[str], at: int, debug_id: int) -> bool:
    """Whether the reopen_worked line at `at` ends a work whose init_object named `debug_id`."""
    pid = re.match(r"\s*\S+-(\d+)", lines[at]).group(1)
    for s in reversed(lines[:at]):
        if re.match(rf"\s*\S+-{pid}\s", s) and " init_object: " in s:
            return s.endswith(f" o={debug_id}")
    return False


def test_a_cookie_is_live_until_listed_dropped_or_gone():
    """The keeper's and the daemon's reading of /proc/fs/netfs/cookies (6.12's format)."""
    from guest_scripts.contract import cookie_live
    key = "img0.reopen4".encode().hex()
    head = "COOKIE   VOLUME   REF ACT ACC S FL DEF\n======== ======== === === === = == ================\n"
    assert cookie_live(head + f"0000002a 00000003   2   1   0 A 2a {key},\n", "img0.reopen4")
    assert not cookie_live(head + f"0000002a 00000003   1   0   0 D 2a {key},\n", "img0.reopen4")
    assert not cookie_live(head, "img0.reopen4")
    assert not cookie_live(head + f"0000002b 00000003   2   1   0 A 2a {'img0.reopen40'.encode().hex()},\n",
                           "img0.reopen4")
