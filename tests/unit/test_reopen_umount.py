"""Fault.UMOUNT_REOPEN judged (harness/judge/reopenumount.py): what the object's drop met, and the
rule's negative controls. The trace lines are in the kernel's format (the kprobes as
harness/judge/trace.py defines them), parsed as a run's are; the captured adversarial run is
judged in test_adversarial_verdict.py."""
from harness.judge import reopenumount, trace
from harness.judge.reopenumount import DropState

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


def delivered(ts: float, msg_id: int = 77) -> list[str]:
    return [line("python3", 210, ts, "cachefiles_ondemand_open", f"o={O:08x} mid=0 oid=0 fd=12 f=0"),
            line("python3", 210, ts + 0.0005, "deliver", f"(vfs_read+0x1/0x2 <- cachefiles_ondemand_daemon_read) ret=53 "
                 f"msg_id={msg_id} opcode=0 len=53 object_id=9 a=0 b=0")]


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
