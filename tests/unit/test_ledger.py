"""The kernel's ledger of requests, on traces captured from real runs (tests/fixtures), and each
rule's negative control: the captured trace changed where a broken kernel would change it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.judge import ledger, trace

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CRASH = FIXTURES / "run-crash-5-kills" / "guest" / "trace.txt"
CLOSE_FDS = FIXTURES / "run-close-fds" / "guest" / "trace.txt"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def build(text_lines: list[str]) -> ledger.Ledger:
    return ledger.build(trace.parse("\n".join(text_lines)))


def deliveries(text_lines: list[str]) -> list[tuple[int, dict[str, int], int]]:
    """(line index, fields, tgid) of every `deliver` event with a message."""
    out = []
    for i, line in enumerate(text_lines):
        (e,) = trace.parse(line) or [None]
        if e is not None and e.event == "deliver" and e.fields.get("ret", 0) > 0:
            out.append((i, e.fields, e.tgid))
    return out


def first_redelivered(text_lines: list[str]) -> tuple[int, int]:
    """(msg_id, line index of its delivery after the restore) of the first held request."""
    seen: dict[int, int] = {}
    restored = False
    for i, line in enumerate(text_lines):
        if "restore:" in line:
            restored = True
        m = re.search(r"deliver: .* ret=([1-9]\d*) msg_id=(\d+)", line)
        if m:
            msg_id = int(m.group(2))
            if restored and msg_id in seen:
                return msg_id, i
            seen[msg_id] = i
    raise AssertionError("no re-delivery in the fixture")


@pytest.mark.parametrize("path", [CRASH, CLOSE_FDS], ids=["crash", "close-fds"])
def test_a_correct_kernel_s_captured_run_breaks_no_rule(path):
    lg = build(lines(path))
    assert lg.available and lg.lifetimes > 0
    assert lg.violations == ()
    assert lg.unknown_drop_ids == 0  # the drop probe reads the object's debug id right
    assert lg.anon_fds_handed == lg.anon_fds_released  # every daemon process had exited


def test_the_crash_run_s_held_requests_all_come_back():
    lg = build(lines(CRASH))
    assert lg.held > 0 and lg.held == lg.redelivered
    assert len(lg.restores) >= 5  # one per kill


def test_a_held_request_that_never_comes_back_is_named():
    """Negative control of `held`: drop the re-delivery (what a kernel that failed the held
    request at the daemon's death shows)."""
    text = lines(CRASH)
    msg_id, again = first_redelivered(text)
    del text[again]
    broken = build(text).of_rule("held")
    assert len(broken) == 1 and f"msg_id {msg_id} " in broken[0].text
    assert broken[0].blame == "kernel" and str(broken[0]).startswith("[kernel] ")  # a restore came after the death


def test_a_held_request_with_no_restore_after_its_holder_s_death_is_the_daemon_s_loss():
    """The daemon that never writes `restore`: every restore after the first held request's
    death taken out of the trace, and its re-delivery. The next processes read the device; the
    request is lost, and the ledger says whose doing that is: the daemon's (with the restores in,
    the same loss is the kernel's)."""
    text, msg_id, o, died, again = held_at_a_death()
    answer = re.compile(rf"cachefiles_ondemand_c(read|open): o=[0-9a-f]+ mid={msg_id:x}\b")
    text = [line for i, line in enumerate(text) if i != again and not (i > again and answer.search(line))]
    assert [v.blame for v in build(text).of_rule("held")] == ["kernel"]
    text = [line for i, line in enumerate(text) if i <= died or " restore: " not in line]
    mine = [v for v in build(text).of_rule("held") if f"msg_id {msg_id} " in v.text]
    assert len(mine) == 1 and mine[0].blame == "daemon" and "no process wrote `restore` after" in mine[0].text
    # the trace ending at that death (a run's last), no process after it to have written one
    assert build(text[:died + 1]).of_rule("held") == []
    # controls: answered by msg_id later (a supervisor's takeover), or its object dropped before
    # the next process read: not lost
    takeover = [*text[:again], f"         python3-1     (    1) [000] .....   {trace.parse(text[again])[0].ts:.6f}: "
                f"cachefiles_ondemand_cread: o=00000001 mid={msg_id:x}", *text[again:]]
    assert not [v for v in build(takeover).of_rule("held") if f"msg_id {msg_id} " in v.text]
    ts = trace.parse(text[died])[0].ts
    dropped = [*text[:died + 1], waiter_killed(text, msg_id, o, ts + 0.000001),
               f"         umount-1     (    1) [000] .....   {ts + 0.000002:.6f}: "
               f"drop: (cachefiles_ondemand_clean_object+0x4/0xcb) o={o}", *text[died + 1:]]
    assert not [v for v in build(dropped).of_rule("held") if f"msg_id {msg_id} " in v.text]


def held_at_a_death() -> tuple[list[str], int, int, int, int]:
    """The crash run's trace, and of its first request held at a death: msg_id, object, the line
    of its holder's exit and the line of its re-delivery."""
    text = lines(CRASH)
    msg_id, again = first_redelivered(text)
    first = next(i for i, line in enumerate(text) if f"msg_id={msg_id} " in line and "deliver:" in line)
    holder = trace.parse(text[first])[0].tgid
    died = next(i for i in range(first, again) if f"sched_process_exit: comm=python3 pid={holder} " in text[i])
    return text, msg_id, _object_of(text, msg_id), died, again


def test_a_held_request_whose_object_was_dropped_before_the_restore_was_ended_by_the_kernel():
    """The kernel's own end: its waiter killed (the killable wait takes the request out), then
    the object withdrawn, before a restore could bring the request back. Dropped while its waiter
    lives on, it is no excuse: a waiting reader keeps its object, so the READ had ended before
    with no event (the kernel failed it at the death, its reader went on and unmounted: the
    drop only seems to end it). Dropped after the restore, neither: its reader waits on it, so
    on a correct kernel it comes back first (the negative controls)."""
    text, msg_id, o, died, again = held_at_a_death()
    ts = trace.parse(text[died])[0].ts
    killed = waiter_killed(text, msg_id, o, ts + 0.000001)
    dropped_before = [*text[:died + 1], killed, drop_line(ts + 0.000002, o), *text[died + 1:again], *text[again + 1:]]
    lg = build(dropped_before)
    assert lg.of_rule("held") == [] and sum(p.ended_by_kernel for p in lg.processes) == 1
    # its waiter alive at the drop (killed after it, or never)
    for alive in ([*text[:died + 1], drop_line(ts + 0.000002, o), waiter_killed(text, msg_id, o, ts + 0.000003),
                   *text[died + 1:again], *text[again + 1:]],
                  [*text[:died + 1], drop_line(ts + 0.000002, o), *text[died + 1:again], *text[again + 1:]]):
        broken = build(alive).of_rule("held")
        assert len(broken) == 1 and f"msg_id {msg_id} " in broken[0].text and broken[0].blame == "kernel"
        assert f"its object's drop at {ts + 0.000002:.6f} does not excuse it: its reader, task " \
               f"{waiter_of(text, msg_id, o)}, was not killed" in broken[0].text
    # its waiter gone on (another READ it queued was delivered) before the drop: the READ had
    # ended, unseen
    waiter = waiter_of(text, msg_id, o)
    queued = _line(waiter, ts + 0.0000011, f"cachefiles_ondemand_read: o={o:08x} mid=0 oid=0 s=0 l=1000")
    oid = next(e.fields["object_id"] for e in trace.parse("\n".join(text[:died]))
               if e.event == "deliver" and e.fields.get("msg_id") == msg_id)
    delivered = _line(999, ts + 0.0000012, "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) "
                      f"ret=64 msg_id=900 opcode=2 len=64 object_id={oid} a=0 b=4096")
    went_on = [*text[:died + 1], queued, delivered, drop_line(ts + 0.000002, o), *text[died + 1:again],
               *text[again + 1:]]
    broken = build(went_on).of_rule("held")
    assert len(broken) == 1 and f"went on at {ts + 0.0000012:.6f} (read delivered), not killed" in broken[0].text
    # what a SIGKILLed reader really shows (every killed waiter of the adversarial fixture): the
    # readahead's READ given up, read_folio queues one more, given up at once, then its exit
    killed_on_its_way_out = [*text[:died + 1], queued, waiter_killed(text, msg_id, o, ts + 0.0000015),
                             drop_line(ts + 0.000002, o), *text[died + 1:again], *text[again + 1:]]
    lg = build(killed_on_its_way_out)
    assert lg.of_rule("held") == [] and sum(p.ended_by_kernel for p in lg.processes) == 1
    dropped_after = [*text[:again], drop_line(trace.parse(text[again])[0].ts, o), *text[again + 1:]]
    broken = build(dropped_after).of_rule("held")
    assert len(broken) == 1 and f"msg_id {msg_id} " in broken[0].text
    # ... nor is it when its object was unmounted on purpose after a restore (Fault.UMOUNT_REOPEN):
    # that excuses only the object's OPEN (the reopen's, which reopenumount judges), not a READ
    events = trace.parse("\n".join(dropped_after))
    assert len(ledger.build(events, unmounted=frozenset({o})).of_rule("held")) == 1


def test_a_held_reopen_open_dropped_after_the_restore_is_left_to_reopenumount():
    """An OPEN held at a death, marked again by the restore, and ended by its object's drop before
    any read() took it: a `held` violation, unless the object is one the keeper unmounted on
    purpose after the restore (then reopenumount judges the drop)."""
    o, holder = 30, 304
    lines = [f"         python3-306     (    {holder}) [001] .....    80.000000: cachefiles_ondemand_open: o={o:08x} mid=0 oid=0 fd=12 f=0",
             f"         python3-306     (    {holder}) [001] .....    80.000050: deliver: (vfs_read+0x1/0x2 <- cachefiles_ondemand_daemon_read) ret=63 msg_id=724 opcode=0 len=63 object_id=85 a=0 b=12",
             f"         python3-306     (    {holder}) [001] .....    80.500000: sched_process_exit: comm=python3 pid={holder} prio=120",
             "         python3-320     (    320) [000] .....    81.000000: restore: (cachefiles_daemon_write+0x1/0x2)",
             drop_line(81.500000, o)]
    events = trace.parse("\n".join(lines))
    (held,) = ledger.build(events).of_rule("held")
    assert "OPEN msg_id 724" in held.text
    excused = ledger.build(events, unmounted=frozenset({o}))
    assert excused.of_rule("held") == [] and sum(p.ended_by_kernel for p in excused.processes) == 1


def test_an_open_a_read_took_before_its_drop_and_handed_out_after_is_that_request():
    """The drop ended the OPEN while a read() that began before it held it (the drop does not wait
    for a read()): the delivery after the drop is the same request, ended by the drop. Begun after
    the drop returned, the read() cannot have taken it: a new request, never answered."""
    o, pid = 30, 306
    def at(ts: float, event: str, args: str) -> str:
        return f"         python3-{pid}     (    {pid}) [001] .....    {ts:.6f}: {event}: {args}"
    def lines(began: float) -> list[str]:
        return [at(80.0, "read_begin", "(cachefiles_daemon_read+0x1/0x2)"),
                at(80.0001, "cachefiles_ondemand_open", f"o={o:08x} mid=0 oid=0 fd=12 f=0"),
                at(80.0002, "deliver", "(vfs_read+0x1/0x2 <- cachefiles_ondemand_daemon_read) ret=63 msg_id=724 "
                   "opcode=0 len=63 object_id=85 a=0 b=12"),
                "         python3-320     (    320) [000] .....    81.000000: restore: (cachefiles_daemon_write+0x1/0x2)",
                drop_line(81.5, o),
                f"   kworker/u8:2-63      (     63) [001] .....    81.502000: dropped: (cachefiles_withdraw_cookie+0x1/0x2 <- cachefiles_ondemand_clean_object)",
                at(began, "read_begin", "(cachefiles_daemon_read+0x1/0x2)"),
                at(81.51, "cachefiles_ondemand_open", f"o={o:08x} mid=0 oid=0 fd=13 f=0"),
                at(81.5101, "deliver", "(vfs_read+0x1/0x2 <- cachefiles_ondemand_daemon_read) ret=63 msg_id=724 "
                   "opcode=0 len=63 object_id=86 a=0 b=12")]
    taken = ledger.build(trace.parse("\n".join(sorted(lines(81.4999), key=lambda s: float(s.split(": ")[0].split()[-1])))))
    assert not taken.violations, taken.violations
    late = ledger.build(trace.parse("\n".join(lines(81.503))))
    assert [v.rule for v in late.violations] == ["unanswered"]


def test_a_held_request_answered_before_the_restore_was_taken_over():
    """A supervisor kept the anon fd across the death: the next process answers the held request
    by its msg_id before its `restore`, and the request was never lost. Answered only after the
    restore, and not delivered again, it is no excuse (the negative control: the restore must
    bring it back, and did not)."""
    text, msg_id, o, died, again = held_at_a_death()
    restore = next(i for i in range(died, again) if "restore:" in text[i])
    ts = trace.parse(text[died])[0].ts
    answered = [*text[:died + 1], answer_line(ts + 0.000001, o, msg_id), *text[died + 1:again], *text[again + 1:]]
    lg = build(answered)
    assert lg.of_rule("held") == [] and sum(p.taken_over for p in lg.processes) == 1
    late = trace.parse(text[restore])[0].ts + 0.000001
    answered_late = [*text[:restore + 1], answer_line(late, o, msg_id), *text[restore + 1:again], *text[again + 1:]]
    broken = build(answered_late).of_rule("held")
    assert len(broken) == 1 and f"msg_id {msg_id} " in broken[0].text


def answer_line(ts: float, o: int, msg_id: int) -> str:
    return f"         python3-999     (    999) [001] .....    {ts:.6f}: cachefiles_ondemand_cread: o={o:08x} mid={msg_id:x}"


def waiter_of(text: list[str], msg_id: int, o: int) -> int:
    """The task whose `read` tracepoint queued the READ of object `o` first delivered as `msg_id`."""
    first = next(i for i, line in enumerate(text) if f"msg_id={msg_id} " in line and "deliver:" in line)
    (e,) = trace.parse(text[first])
    queued = f"cachefiles_ondemand_read: o={o:08x} mid=0 oid=0 s={e.fields['a']:x} l={e.fields['b']:x}"
    return next(trace.parse(line)[0].pid for line in reversed(text[:first]) if line.endswith(queued))


def waiter_killed(text: list[str], msg_id: int, o: int, ts: float) -> str:
    """The exit of that READ's waiter at `ts` (a SIGKILLed reader)."""
    pid = waiter_of(text, msg_id, o)
    return _line(pid, ts, f"sched_process_exit: comm=python3 pid={pid} prio=120")


def drop_line(ts: float, o: int) -> str:
    return f"   kworker/u8:2-63      (     63) [001] .....    {ts:.6f}: drop: (cachefiles_ondemand_clean_object+0x4/0xcb) o={o}"


def _object_of(text: list[str], msg_id: int) -> int:
    for line in text:
        m = re.search(rf"cachefiles_ondemand_c(?:read|open): o=([0-9a-f]+) mid={msg_id:x}\b", line)
        if m:
            return int(m.group(1), 16)
    raise AssertionError(f"msg_id {msg_id} was never answered")


def test_a_request_delivered_twice_without_a_restore_is_named():
    """Negative control of `double`: a READ delivered again at once, no restore between."""
    text = lines(CLOSE_FDS)
    i, fields, _ = next(d for d in deliveries(text) if d[1]["opcode"] == 2)
    text.insert(i + 1, text[i].replace(f"{trace.parse(text[i])[0].ts:.6f}", f"{trace.parse(text[i])[0].ts + 0.000001:.6f}"))
    broken = build(text).of_rule("double")
    assert len(broken) == 1 and f"READ msg_id {fields['msg_id']} " in broken[0].text


def test_an_id_reused_after_its_answer_is_a_new_request_not_a_double():
    """The kernel reuses a msg_id once its request is done: a lifetime, not an id, is judged.
    Built from the captured run: every answered READ's id given to the next READ as well."""
    text = lines(CLOSE_FDS)
    reads = [d for d in deliveries(text) if d[1]["opcode"] == 2]
    # two READs in a row, the first answered before the second is delivered
    first, second = next((a, b) for a, b in zip(reads, reads[1:]) if _answered_before(text, a[1]["msg_id"], b[0]))
    old, new = second[1]["msg_id"], first[1]["msg_id"]
    text[second[0]] = text[second[0]].replace(f"msg_id={old} ", f"msg_id={new} ")
    text = [re.sub(rf"(cachefiles_ondemand_cread: o=[0-9a-f]+ mid=){old:x}$", rf"\g<1>{new:x}", line) for line in text]
    lg = build(text)
    assert lg.violations == () and lg.lifetimes == build(lines(CLOSE_FDS)).lifetimes


def _answered_before(text: list[str], msg_id: int, index: int) -> bool:
    return any(re.search(rf"cachefiles_ondemand_cread: o=[0-9a-f]+ mid={msg_id:x}$", line) for line in text[:index])


def test_a_request_never_answered_is_named():
    """Negative control of `unanswered`: a READ's answer (its cread) taken out, and the drop of
    its object (a reader stuck on it never unmounts): the device's close at the end fails it."""
    text = lines(CLOSE_FDS)
    i = next(i for i, line in enumerate(text) if "cachefiles_ondemand_cread:" in line)
    mid = int(re.search(r"mid=([0-9a-f]+)", text[i]).group(1), 16)
    o = int(re.search(r"o=([0-9a-f]+)", text[i]).group(1), 16)
    del text[i]
    assert build(text).of_rule("unanswered") == []  # its object's drop ended it: the kernel's own end
    text = [line for line in text if not line.endswith(f"drop: (cachefiles_ondemand_clean_object+0x4/0xcb) o={o}")]
    broken = build(text).of_rule("unanswered")
    assert len(broken) == 1 and f"READ msg_id {mid} " in broken[0].text and "device was closed" in broken[0].text
    assert broken[0].blame == "daemon"  # given to a daemon that let the device go with it unanswered


def test_a_read_delivered_to_a_closed_object_is_named():
    """Negative control of `closed` (patches 1 and 3): the object's anon fd released just before
    a READ of it is delivered, and no copen since."""
    text = lines(CLOSE_FDS)
    i, fields, _ = next(d for d in deliveries(text) if d[1]["opcode"] == 2)
    o = _object_of(text, fields["msg_id"])
    ts = trace.parse(text[i])[0].ts
    text.insert(i, f"         python3-1     (    1) [000] .....    {ts - 0.000001:.6f}: "
                   f"cachefiles_ondemand_fd_release: o={o:08x} oid={fields['object_id']:x}")
    broken = build(text).of_rule("closed")
    assert broken and f"READ msg_id {fields['msg_id']} " in broken[0].text


def test_a_queued_read_never_delivered_is_named():
    text = lines(CLOSE_FDS)
    text.append("         python3-1     (    1) [000] .....   999.000000: "
                "cachefiles_ondemand_read: o=0000ffff mid=0 oid=0 s=7777000 l=1000")
    broken = build(text).of_rule("unanswered")
    assert len(broken) == 1 and "object 65535 off 125267968 len 4096" in broken[0].text
    assert broken[0].blame == "daemon"  # queued after the daemon's last read(): nobody read the device since


def test_a_queued_read_never_delivered_while_the_daemon_read_the_device_is_the_kernel_s_loss():
    """The same READ queued before the daemon's last read() of the device: the daemon asked and
    the kernel did not hand it out (the REOPENING hang of CVE-2024-41074 looks so)."""
    text = lines(CLOSE_FDS)
    i, _, _ = deliveries(text)[-1]
    ts = trace.parse(text[i])[0].ts
    text.insert(i, f"         python3-1     (    1) [000] .....   {ts - 0.000001:.6f}: "
                   "cachefiles_ondemand_read: o=0000ffff mid=0 oid=0 s=7777000 l=1000")
    broken = build(text).of_rule("unanswered")
    assert len(broken) == 1 and broken[0].blame == "kernel" and "no daemon read" not in broken[0].text


def test_a_queued_read_whose_task_exited_before_its_delivery_was_abandoned():
    """A task killed while its READ waits (a killable wait) gives the READ up: abandoned, not
    unanswered. Its control: the same READ with the exit of another task is unanswered."""
    read = "cachefiles_ondemand_read: o=0000ffff mid=0 oid=0 s=7777000 l=1000"
    text = lines(CLOSE_FDS) + [_line(4242, 999.0, read)]
    lg = build(text + [_line(4242, 999.5, "sched_process_exit: comm=python3 pid=4242 prio=120")])
    assert lg.of_rule("unanswered") == [] and lg.abandoned_reads == 1
    lg = build(text + [_line(4243, 999.5, "sched_process_exit: comm=python3 pid=4243 prio=120")])
    assert len(lg.of_rule("unanswered")) == 1 and lg.abandoned_reads == 0


def test_the_daemon_log_and_the_ledger_are_compared_per_process():
    lg = build(lines(CRASH))
    delivered = {p.tgid: p.delivered for p in lg.processes}
    assert ledger.disagreements(lg, delivered) == []
    pid = next(iter(delivered))
    (account,) = [p for p in lg.processes if p.tgid == pid]
    dying = f" ({account.died_reading} of them as it died)" if account.died_reading else ""
    assert ledger.disagreements(lg, {**delivered, pid: delivered[pid] + 1}) == [
        f"process {pid}: the kernel delivered {delivered[pid]} request(s){dying}, the daemon logged {delivered[pid] + 1}"]


def test_a_daemon_killed_as_a_request_was_delivered_may_not_have_logged_it_and_no_other():
    """A kill gated on a delivery lands between the daemon's read() and its log line: the log may
    be short by the deliveries its threads died on, not by one more, nor over. Control: the same
    delivery followed by the thread's answer was seen, and a log short of it disagrees."""
    died_on_it = _held_open_then([])
    lg = build(died_on_it)
    assert [(p.tgid, p.delivered, p.died_reading) for p in lg.processes] == [(100, 1, 1)]
    assert ledger.disagreements(lg, {100: 0}) == ledger.disagreements(lg, {100: 1}) == []
    assert ledger.disagreements(lg, {100: 2}) == [
        "process 100: the kernel delivered 1 request(s) (1 of them as it died), the daemon logged 2"]
    answered = build([*died_on_it[:2], _line(100, 1.5, "cachefiles_ondemand_copen: o=00000001 mid=5 l=1000"),
                      *died_on_it[2:]])
    assert [(p.tgid, p.delivered, p.died_reading) for p in answered.processes] == [(100, 1, 0)]
    assert ledger.disagreements(answered, {100: 0}) == ["process 100: the kernel delivered 1 request(s), the daemon logged 0"]


def _thread_line(pid: int, tgid: str, ts: float, rest: str) -> str:
    return f"         python3-{pid}     ({tgid:>7}) [001] .....    {ts:.6f}: {rest}"


def test_died_reading_is_per_thread_and_only_a_pollwake_leaves_it_standing():
    """The allowance is the delivering thread's: another thread's exit is not it; a pollwake (an
    interrupt's, in its context) between the delivery and the exit leaves it; any other event of
    the thread (its data write) clears it; an exit whose tgid the trace lost (`-------`) is still
    charged to the process the delivery was counted in."""
    deliver = _line(100, 1.1, "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=64 msg_id=5 "
                              "opcode=2 len=64 object_id=1 a=0 b=4096")
    exit_100 = _line(100, 2.0, "sched_process_exit: comm=python3 pid=100 prio=120")
    helper_exit = _thread_line(101, "100", 1.5, "sched_process_exit: comm=python3 pid=101 prio=120")
    pollwake = _line(100, 1.5, "pollwake: (pollwake+0x0/0x80) pwq=0xffffc90001000 wq=0xffff888002000 key=0x0 ekey=0x1")
    fd_write = _line(100, 1.5, "cachefiles_ondemand_fd_write: o=00000001 iB=21b s=0 l=1000")
    died = {p.tgid: p.died_reading for p in build([deliver, helper_exit]).processes}
    assert died.get(100, 0) == 0  # the helper died; the reader lives on
    assert [p.died_reading for p in build([deliver, pollwake, exit_100]).processes if p.tgid == 100] == [1]
    assert [p.died_reading for p in build([deliver, fd_write, exit_100]).processes if p.tgid == 100] == [0]
    by_thread = _thread_line(101, "100", 1.1, deliver.split(": ", 1)[1])  # thread 101 of process 100 read it
    lost_tgid = _thread_line(101, "-------", 2.0, "sched_process_exit: comm=python3 pid=101 prio=120")
    assert [(p.tgid, p.delivered, p.died_reading) for p in build([by_thread, lost_tgid]).processes] == [(100, 1, 1)]


def test_a_trace_without_the_kprobes_has_no_ledger():
    text = [line for line in lines(CRASH) if "deliver:" not in line]
    assert not build(text).available


def test_an_id_given_to_another_request_while_its_own_lives_is_named():
    """A READ whose msg_id the kernel hands to another READ before any answer: the first one
    ended where no event shows it (a kernel that loses requests and reuses their ids)."""
    text = lines(CLOSE_FDS)
    i, fields, _ = next(d for d in deliveries(text) if d[1]["opcode"] == 2)
    ts = trace.parse(text[i])[0].ts
    other = text[i].replace(f"{ts:.6f}", f"{ts + 0.000001:.6f}").replace(f" a={fields['a']} ", f" a={fields['a'] + 4096} ")
    broken = build([*text[:i + 1], other, *text[i + 1:]]).of_rule("unanswered")
    assert len(broken) == 1 and f"READ msg_id {fields['msg_id']} " in broken[0].text and "given to another request" in broken[0].text


def _line(pid: int, ts: float, rest: str) -> str:
    return f"         python3-{pid}     (    {pid}) [001] .....    {ts:.6f}: {rest}"


def _held_open_then(after_restore: list[str]) -> list[str]:
    """An OPEN delivered to process 100, which dies holding it; process 101 writes `restore`."""
    return [_line(100, 1.0, "cachefiles_ondemand_open: o=00000001 mid=0 oid=0 fd=7 f=0"),
            _line(100, 1.1, "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=55 msg_id=5 "
                            "opcode=0 len=55 object_id=1 a=34359738383 b=7"),
            _line(100, 2.0, "sched_process_exit: comm=python3 pid=100 prio=120"),
            _line(101, 3.0, "restore: (cachefiles_ondemand_restore+0x4/0x14a)"), *after_restore]


def test_a_held_open_refused_with_eexist_after_the_restore_was_delivered_again():
    """A supervisor kept the OPEN's anon fd: the restore re-delivers it, and read() refuses it
    (EEXIST; the message is not copied out, so no msg_id is seen). The refusal before the restore,
    or none at all, is no excuse (the negative controls)."""
    eexist = "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=-17 msg_id=0 opcode=0 len=0 object_id=0 a=0 b=0"
    lg = build(_held_open_then([_line(101, 3.5, eexist)]))
    assert lg.violations == () and lg.redelivered == 1
    assert [v.rule for v in build(_held_open_then([])).violations] == ["held", "unanswered"]
    early = _held_open_then([])
    early.insert(3, _line(101, 2.5, eexist))  # refused before the restore re-marked it: not this OPEN
    assert "held" in [v.rule for v in build(early).violations]


def _read_delivered_then_the_cache_dies(after: list[str]) -> list[str]:
    """A READ queued and delivered to process 100 (the daemon), another queued and never
    delivered; then the device's last reference goes (`unbind`)."""
    return [_line(100, 1.0, "cachefiles_ondemand_open: o=00000001 mid=0 oid=0 fd=7 f=0"),
            _line(100, 1.1, "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=55 msg_id=1 "
                            "opcode=0 len=55 object_id=1 a=34359738383 b=7"),
            _line(100, 1.2, "cachefiles_ondemand_copen: o=00000001 mid=1 l=100000"),
            _line(200, 1.3, "cachefiles_ondemand_read: o=00000001 mid=0 oid=0 s=0 l=1000"),
            _line(200, 1.4, "cachefiles_ondemand_read: o=00000001 mid=0 oid=0 s=1000 l=1000"),
            _line(100, 1.5, "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=64 msg_id=2 "
                            "opcode=2 len=64 object_id=1 a=0 b=4096"),
            _line(100, 2.0, "unbind: (cachefiles_daemon_release+0x4/0x5c)"), *after]


BIND = "bind: (cachefiles_daemon_write+0x142/0x16a <- cachefiles_daemon_bind) ret={ret}"


def test_requests_a_cache_failed_when_it_died_mid_run_were_ended_by_the_kernel():
    """A release followed by a new cache's bind is a death (Fault.CACHE_DEATH): the READ delivered
    and the one queued were failed by it. The negative controls: no bind after the release, or
    only a refused one (the tag still in use), and both are requests never answered."""
    lg = build(_read_delivered_then_the_cache_dies([_line(300, 2.5, BIND.format(ret=-16)),
                                                     _line(300, 3.0, BIND.format(ret=0))]))
    assert lg.violations == ()
    (death,) = lg.cache_deaths
    assert (death.ts, death.rebound_ts, death.refused_binds, death.flushed_delivered, death.flushed_queued) == (
        2.0, 3.0, 1, 1, 1)
    for after in ([], [_line(300, 3.0, BIND.format(ret=-16))]):
        lg = build(_read_delivered_then_the_cache_dies(after))
        assert lg.cache_deaths == ()
        broken = lg.of_rule("unanswered")
        assert len(broken) == 2 and "READ msg_id 2 " in broken[0].text and "device was closed" in broken[0].text
        assert "object 1 off 4096 len 4096 queued by the kernel and never delivered" in broken[1].text


def test_reads_on_reopened_objects_are_counted_from_the_kernel_alone():
    """The evidence another daemon's close-fds run needs without its log: on the captured run, the
    ledger's count is the one our daemon's log gives; with no anon fd ever released (no reopen),
    none."""
    from harness.judge import evidence
    text = lines(CLOSE_FDS)
    logged = trace.reads_after_reopens(evidence.read_jsonl(CLOSE_FDS.parent / "daemon.jsonl"))
    assert build(text).reads_after_reopen == logged > 10
    assert build([line for line in text if "fd_release" not in line]).reads_after_reopen == 0


def test_a_helper_thread_s_exit_is_not_its_process_s_death():
    """A daemon thread that exits (a probe's, a closer's) while its process goes on reading: the
    process died at its last thread's exit, which no read of its follows. Control: the same exit
    with no read after it is the death."""
    text = lines(CRASH)
    last = max(i for i, line in enumerate(text) if "deliver:" in line and "python3-233 " in line)
    first = min(i for i, line in enumerate(text) if "deliver:" in line and "python3-233 " in line)
    ts = trace.parse(text[first])[0].ts
    exit_line = (f"         python3-299     (    233) [000] .....   {ts + 0.000001:.6f}: "
                 "sched_process_exit: comm=python3 pid=299 prio=120")
    alive = [line for line in text if "pid=233 " not in line or "sched_process_exit" not in line]  # 233 lives on
    with_thread_exit = [*alive[:first + 1], exit_line, *alive[first + 1:]]
    assert next(p for p in build(with_thread_exit).processes if p.tgid == 233).died_ts is None
    cut = [*alive[:last + 1], exit_line.replace(f"{ts + 0.000001:.6f}", f"{trace.parse(alive[last])[0].ts + 0.000001:.6f}")]
    assert next(p for p in build(cut).processes if p.tgid == 233).died_ts is not None


def test_a_read_delivered_for_an_object_id_no_open_handed_out_is_the_kernel_s_loss():
    """A READ delivered with object id -1 (a closed object's, as a broken copen leaves it) cannot be
    answered by any daemon: unanswered, and the kernel's."""
    text = lines(CLOSE_FDS)
    i, fields, _ = next(d for d in deliveries(text) if d[1]["opcode"] == 2)
    text[i] = text[i].replace(f"object_id={fields['object_id']} ", "object_id=4294967295 ")
    answer = re.compile(rf"cachefiles_ondemand_cread: o=[0-9a-f]+ mid={fields['msg_id']:x}\b")
    text = [line for line in text if not answer.search(line)]
    mine = [v for v in build(text).of_rule("unanswered") if f"READ msg_id {fields['msg_id']} " in v.text]
    assert len(mine) == 1 and mine[0].blame == "kernel" and "no OPEN handed out its object id" in mine[0].text


def test_a_held_request_a_restore_did_not_bring_back_is_the_kernel_s_though_the_device_ended_it():
    """What a kernel whose `restore` does nothing leaves: held at a death, never delivered again,
    and failed only when the device was closed at the end. The kernel's loss (a restore came);
    control: with the restores taken out, the daemon's."""
    text, msg_id, o, died, again = held_at_a_death()
    answer = re.compile(rf"cachefiles_ondemand_c(read|open): o=[0-9a-f]+ mid={msg_id:x}\b")
    text = [line for i, line in enumerate(text) if i != again and not (i > again and answer.search(line))
            and not line.endswith(f"drop: (cachefiles_ondemand_clean_object+0x4/0xcb) o={o}")]
    mine = [v for v in build(text).of_rule("unanswered") if f"msg_id {msg_id} " in v.text]
    assert len(mine) == 1 and "device was closed" in mine[0].text and mine[0].blame == "kernel"
    text = [line for i, line in enumerate(text) if i <= died or " restore: " not in line]
    mine = [v for v in build(text).of_rule("unanswered") if f"msg_id {msg_id} " in v.text]
    assert len(mine) == 1 and mine[0].blame == "daemon"


HELD_READ_LOST_MOUNT_FAILED = FIXTURES / "ledger" / "held-read-lost-mount-failed.trace.txt"


def test_a_held_read_the_kernel_failed_at_the_death_is_named_though_its_object_was_dropped_after():
    """Captured from `held-read-lost-at-death` (cold restarts, seed 3; the copen-wake probes' lines
    cut): the mount's superblock READ, held by the daemon process killed at 63.183, failed by the
    mutant when its anon fd was released; the mount failed with EIO (the run's one read error) and
    its object was dropped at 63.198, before the restore at 64.983. The drop did not end the READ:
    its waiter, the mounting task, was not killed. Control: the same trace with that task killed
    before the drop (a killable wait the kernel ends by taking the request out) names nothing."""
    text = lines(HELD_READ_LOST_MOUNT_FAILED)
    (broken,) = build(text).of_rule("held")
    assert broken.blame == "kernel" and broken.text.startswith("READ msg_id 127 object_id 21 object 6 off 0 len 4096")
    assert "its object's drop at 63.198145 does not excuse it: its reader, task 208, was not killed" in broken.text
    drop = next(i for i, line in enumerate(text) if " 63.198145: drop: " in line)
    killed = [*text[:drop], _line(208, 63.198, "sched_process_exit: comm=python3 pid=208 prio=120"), *text[drop:]]
    lg = build(killed)
    assert lg.of_rule("held") == [] and sum(p.ended_by_kernel for p in lg.processes) == 1
