"""copenwake: a reopen's copen wakes every poll(2) sleeper on its device, from the trace alone."""
from __future__ import annotations

from harness.judge import copenwake, verdict
from harness.judge.checks import Check
from harness.judge.trace import TraceEvent, parse
from harness.scenarios import Needs

from helpers import FIXTURES
from test_junit import every_rule_broken

DEV, OTHER_DEV, EVENTFD = 0xA000, 0xB000, 0xC000
PWQ, WQ = 0x1000, 0x2000
POLLIN, POLLOUT = 0x1, 0x4
W, X = 50, 60  # the task that writes the copen, the one asleep in poll()
O = 7


judge = copenwake.judge


class Trace:
    """Events in order, a millisecond apart."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def add(self, event: str, pid: int, **fields: int) -> Trace:
        self.events.append(TraceEvent(len(self.events) / 1000, event, dict(fields), "t", pid, pid))
        return self

    def reopen(self, o: int = O) -> Trace:
        """The object opened, its anon fd released, opened again: the second OPEN is a reopen."""
        return self.add("open", W, o=o, mid=0, oid=0).add("fd_release", W, o=o, oid=1).add("open", W, o=o, mid=0, oid=0)

    def asleep(self, pid: int = X, file: int = DEV, pwq: int = PWQ, wq: int = WQ) -> Trace:
        return self.add("pollwait", pid, file=file, wq=wq, pwq=pwq).add("dev_polled", pid, mask=0)

    def copen(self, pid: int = W, file: int = DEV, o: int = O, wakes: tuple[tuple[int, int], ...] = ((PWQ, WQ),),
              returns: bool = True, key: int = 0) -> Trace:
        self.add("dev_write", pid, file=file).add("copen", pid, o=o, mid=9, l=0x1000)
        for pwq, wq in wakes:
            self.add("pollwake", pid, pwq=pwq, wq=wq, key=key, ekey=POLLIN)
        return self.add("copened", pid, ret=0, id=9) if returns else self


def test_a_reopen_copen_that_wakes_its_sleeper_passes():
    (c,) = judge(Trace().reopen().asleep().copen().events)
    assert c.decided and not c.missed and [s.pid for s in c.sleepers] == [X]


def test_a_reopen_copen_that_wakes_nobody_misses_the_sleeper():
    (c,) = judge(Trace().reopen().asleep().copen(wakes=()).events)
    assert c.decided and [s.pid for s in c.missed] == [X]
    assert f"task {W}" in c.describe() and f"not task(s) {X}" in c.describe()


def test_a_wake_of_another_queue_by_the_same_poll_is_not_the_device_s():
    (c,) = judge(Trace().reopen().asleep().copen(wakes=((PWQ, 0x9999),)).events)
    assert [s.pid for s in c.missed] == [X]


def test_a_wake_up_whose_key_misses_the_entry_s_events_wakes_nobody():
    (c,) = judge(Trace().reopen().asleep().copen(key=POLLOUT).events)
    assert [s.pid for s in c.missed] == [X]
    (c,) = judge(Trace().reopen().asleep().copen(key=POLLIN).events)
    assert c.decided and not c.missed


def test_another_task_s_wake_up_inside_the_copen_is_not_the_copen_s():
    # a reader's new request wakes the same queue as the copen runs: not the copen's wake-up
    t = Trace().reopen().asleep().copen(wakes=(), returns=False).add("pollwake", 70, pwq=PWQ, wq=WQ, key=0, ekey=POLLIN)
    (c,) = judge(t.add("copened", W, ret=0, id=9).events)
    assert [s.pid for s in c.missed] == [X]


def test_a_first_open_s_copen_is_not_judged():
    t = Trace().add("open", W, o=O, mid=0, oid=0).asleep().copen(wakes=())
    assert judge(t.events) == ()


def test_a_poll_already_over_has_nothing_to_wake():
    t = Trace().reopen().asleep().add("poll_free", X, pwq=PWQ).copen(wakes=())
    (c,) = judge(t.events)
    assert not c.decided and not c.missed


def test_a_poll_ending_as_the_copen_runs_is_not_knowable():
    t = Trace().reopen().asleep().copen(wakes=(), returns=False).add("poll_free", X, pwq=PWQ).add("copened", W, ret=0, id=9)
    (c,) = judge(t.events)
    assert not c.decided
    # woken before it ended: still judged, and right
    t = Trace().reopen().asleep().copen(returns=False).add("poll_free", X, pwq=PWQ).add("copened", W, ret=0, id=9)
    (c,) = judge(t.events)
    assert c.decided and not c.missed


def test_a_sleeper_on_another_device_is_not_this_copen_s():
    (c,) = judge(Trace().reopen().asleep(file=OTHER_DEV).copen(wakes=()).events)
    assert not c.decided


def test_an_entry_still_being_put_on_the_queue_is_not_yet_a_sleeper():
    # __pollwait entered, the device's poll not returned: the entry may not be on the queue yet
    t = Trace().reopen().add("pollwait", X, file=DEV, wq=WQ, pwq=PWQ).copen(wakes=())
    (c,) = judge(t.events)
    assert not c.decided


def test_another_file_s_entry_taken_by_a_later_device_poll_stays_that_file_s():
    # poll(dev, eventfd): the eventfd's entry is pending when poll()'s second pass asks the device
    # again with no entry of its own; it must not count as the device's
    t = Trace().reopen().add("pollwait", X, file=EVENTFD, wq=0x3000, pwq=PWQ).add("dev_polled", X, mask=0)
    (c,) = judge(t.copen(wakes=()).events)
    assert not c.decided


def test_the_copen_s_own_task_is_no_sleeper():
    (c,) = judge(Trace().reopen().asleep(pid=W).copen(wakes=()).events)
    assert not c.decided


def test_a_copen_that_never_returned_in_the_trace_decides_nothing():
    (c,) = judge(Trace().reopen().asleep().copen(wakes=(), returns=False).events)
    assert not c.decided and not c.missed


def test_an_incomplete_trace_judges_nothing():
    assert judge(Trace().reopen().asleep().copen(wakes=()).events, complete=False) == ()


def test_every_sleeper_must_be_woken():
    t = Trace().reopen().asleep().asleep(pid=61, pwq=0x1100).copen(wakes=((PWQ, WQ),))
    (c,) = judge(t.events)
    assert [s.pid for s in c.missed] == [61]


def test_the_verdict_fails_on_a_miss_and_needs_decided_copens():
    missed = judge(Trace().reopen().asleep().copen(wakes=()).events)
    woken = judge(Trace().reopen().asleep().copen().events)
    th = verdict.Thresholds(kills_requested=0, stall_bound_s=30, needs=Needs(copen_sleepers=1))
    failing = [r for r in every_rule_broken() if r.check is Check.COPEN_WAKE]
    assert failing and "1 of 1 reopen copen(s)" in failing[0].text
    assert missed[0].missed and not woken[0].missed
    reasons = verdict.failures(*_quiet_facts(), th=th, aborted=None, copen_wakes=missed)
    assert [r.check for r in reasons] == [Check.COPEN_WAKE]
    assert verdict.failures(*_quiet_facts(), th=th, aborted=None, copen_wakes=woken) == []
    assert _missing(th, woken) == []
    assert [m.check for m in _missing(th, ())] == [Check.COPEN_SLEEPERS]


def test_the_probes_lines_parse_as_the_judge_reads_them():
    text = "\n".join((
        "  python3-60 (   60) [000] .....  10.000001: pollwait: (__pollwait+0x0/0xc0) file=0xffff8880a000 "
        "wq=0xffff888002000 pwq=0xffffc90001000",
        "  python3-60 (   60) [000] .....  10.000002: dev_polled: (do_sys_poll+0x1c4/0x4a0 <- cachefiles_daemon_poll) mask=0x0",
        "  python3-50 (   50) [001] .....  10.100000: dev_write: (cachefiles_daemon_write+0x0/0x1a0) file=0xffff8880a000",
        "  python3-50 (   50) [001] .....  10.100100: pollwake: (pollwake+0x0/0x80) pwq=0xffffc90001000 wq=0xffff888002000 "
        "key=0x0 ekey=0x145",
        "  python3-60 (   60) [000] .....  10.200000: poll_free: (poll_freewait+0x0/0x90) pwq=0xffffc90001000",
    ))
    events = parse(text)
    assert [e.event for e in events] == ["pollwait", "dev_polled", "dev_write", "pollwake", "poll_free"]
    assert events[0].fields == {"file": 0xffff8880a000, "wq": 0xffff888002000, "pwq": 0xffffc90001000}
    assert events[3].fields["pwq"] == events[0].fields["pwq"] and events[3].pid == 50


def _quiet_facts() -> tuple:  # type: ignore[type-arg]
    from harness.judge import ledger
    from harness.judge.evidence import DaemonFacts, ReaderFacts
    from harness.judge.probes import ProbeCounts
    daemon = DaemonFacts(1, (), (), {}, 0, 0, 0, 0, ())
    readers = ReaderFacts(1, 1, 10, 10, 10, (), (), (), 0.1, (), 1, {})
    empty = ledger.Ledger(True, (), (), 1, {}, 0, 0, 0, ())
    probed = {k: ProbeCounts(0, 0, 0, ()) for k in ("epollin", "wakeup", "stale", "reuse", "close-copen", "late-write",
                                                    "second-fd")}
    return daemon, readers, empty, probed, []


def _missing(th: verdict.Thresholds, wakes: tuple[copenwake.CopenWake, ...]) -> list[verdict.Reason]:
    from harness.judge.trace import facts
    daemon, _, empty, probed, _ = _quiet_facts()
    return [m for m in verdict.missing_evidence(daemon, facts([]), empty, probed, 0, th, copen_wakes=wakes)
            if m.check is Check.COPEN_SLEEPERS]


def _fixture(name: str) -> list[TraceEvent]:
    return parse((FIXTURES / "copenwake" / f"{name}.trace.txt").read_text())


def test_real_runs_of_the_correct_kernel_wake_every_sleeper():
    """Captured runs (close-fds seed 1, 6.12.118): our daemon (its wake-up probe's thread asleep
    in poll() at each reopen) and the C daemon (lockless threads, each in poll() with no timeout)."""
    for name, copens, sleepers in (("python-close-fds-seed1", 6, 6), ("cdaemon-close-fds-seed1", 2, 4)):
        judged = judge(_fixture(name))
        assert (sum(c.decided for c in judged), sum(len(c.sleepers) for c in judged)) == (copens, sleepers), name
        assert not any(c.missed for c in judged), name


def test_a_real_run_of_the_mutant_misses_every_sleeper():
    """reopen-copen-no-wake with the C daemon: each reopen's copen wakes no thread of the others."""
    judged = judge(_fixture("cdaemon-reopen-copen-no-wake-seed1"))
    assert [(c.pid, [s.pid for s in c.missed]) for c in judged] == [(209, [210]), (210, [208])]


def test_the_correct_runs_without_their_wake_ups_are_caught():
    """The control on real data: the correct runs with the copens' pollwake lines taken out."""
    for name in ("python-close-fds-seed1", "cdaemon-close-fds-seed1"):
        events = _fixture(name)
        copeners = {c.pid for c in judge(events)}
        unwoken = [e for e in events if not (e.event == "pollwake" and e.pid in copeners)]
        judged = judge(unwoken)
        assert any(c.decided for c in judged) and all(c.missed == c.sleepers for c in judged if c.decided), name


def test_results_json_gives_the_copens_and_their_sleepers(tmp_path):
    """A captured close-fds run judged with the mutant's trace (the C daemon's, cut): results.json
    has `copen_wakes` as its schema says, the summary a line, the verdict the check."""
    import json
    import shutil

    import jsonschema

    from harness.judge import report

    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    shutil.copy(FIXTURES / "copenwake" / "cdaemon-reopen-copen-no-wake-seed1.trace.txt", run / "guest" / "trace.txt")
    report.evaluate(run)
    r = json.loads((run / "results.json").read_text())
    assert r["copen_wakes"] == {"copens": 2, "decided": 2, "sleepers": 2, "missed": 2,
                                "first_misses": r["copen_wakes"]["first_misses"]}
    assert len(r["copen_wakes"]["first_misses"]) == 2 and "copen-wake" in r["failed_checks"]
    schema = json.loads(report.SCHEMA_FILE.read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(r)) == []
    assert "reopens' copens: 2, with a poll(2) sleeper on their device 2; sleepers woken 0 of 2" in \
        (run / "summary.txt").read_text()


def test_misses_of_copenwake_s_probes_leave_the_ledger_whole(tmp_path):
    """`pollwake` hits nested in another probe's handler are missed (adversarial: 2266 of 3130),
    never a copen's own: the ledger stays whole and copenwake judges; a miss of a probe it cannot
    do without (`pollwait`) makes copenwake decide nothing, the ledger still whole."""
    import json
    import shutil

    from harness.judge import report

    def judged(profile: str) -> dict:
        run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / profile.split()[0])
        shutil.copy(FIXTURES / "copenwake" / "cdaemon-reopen-copen-no-wake-seed1.trace.txt", run / "guest" / "trace.txt")
        (run / "guest" / "kprobe-profile.txt").write_text(f"  deliver    311    0\n  {profile}\n")
        report.evaluate(run)
        return json.loads((run / "results.json").read_text())

    woke_nobody = judged("pollwake    3130    2266")
    assert woke_nobody["ledger"]["incomplete"] is None and "copen-wake" in woke_nobody["failed_checks"]
    blind = judged("pollwait    34599    1")
    assert blind["ledger"]["incomplete"] is None and "copen_wakes" not in blind
    assert "copen-wake" not in blind["failed_checks"]
    assert "the kprobes missed 1 hit(s)" in judged("deliver    311    1")["ledger"]["incomplete"]
