"""The trace parser and the reopen correlation, on traces captured from real runs."""
from harness.judge import evidence, trace
from helpers import FIXTURES


def load(run: str):
    guest = FIXTURES / run / "guest"
    return trace.parse((guest / "trace.txt").read_text()), evidence.read_jsonl(guest / "daemon.jsonl")


def test_parse_a_line_of_each_kind():
    text = "\n".join([
        "# tracer: nop",
        "         python3-219     [001] .....    34.357625: cachefiles_ondemand_open: o=00000003 mid=0 oid=0 fd=5 f=0",
        "         python3-219     [001] .....    34.360000: cachefiles_ondemand_copen: o=00000003 mid=1a l=22c000",
        "          reader-230     [000] .....    34.400000: cachefiles_ondemand_read: o=00000003 mid=1b oid=4 s=20000 l=20000",
        "         python3-219     [001] .N...    35.622579: cachefiles_ondemand_fd_release: o=00000003 oid=4",
        "         python3-219     [001] .....    35.700000: cachefiles_ondemand_fd_write: o=00000003 iB=ab s=20000 l=20000",
        "  kworker/u4:2-40      [000] .....    35.800000: cachefiles_ondemand_cread: o=00000003 mid=1b",
        "         python3-219     [001] .....    35.900000: cachefiles_lookup: o=00000000 dB=2 B=0 e=0",
    ])
    events = trace.parse(text)
    assert [e.event for e in events] == ["open", "copen", "read", "fd_release", "fd_write", "cread"]
    assert events[0].fields == {"o": 3, "mid": 0, "oid": 0, "fd": 5, "f": 0}  # fd is decimal
    assert events[1].fields["mid"] == 0x1a and events[1].fields["l"] == 0x22C000
    assert events[2].fields["s"] == 0x20000 and events[2].ts == 34.4
    assert events[5].task == "kworker/u4:2"


def test_reopen_is_an_open_after_a_release_of_the_same_object():
    events = trace.parse("\n".join([
        "p-1 [000] ..... 1.0: cachefiles_ondemand_open: o=00000001 mid=0 oid=0 fd=5 f=0",
        "p-1 [000] ..... 1.1: cachefiles_ondemand_open: o=00000002 mid=0 oid=0 fd=6 f=0",
        "p-1 [000] ..... 2.0: cachefiles_ondemand_fd_release: o=00000001 oid=1",
        "p-1 [000] ..... 3.0: cachefiles_ondemand_open: o=00000001 mid=0 oid=0 fd=5 f=0",
        "p-1 [000] ..... 4.0: cachefiles_ondemand_fd_release: o=00000002 oid=2",  # withdrawn, never reopened
    ]))
    f = trace.facts(events)
    assert f.reopens == (trace.Reopen(1, 1, 3.0),)
    assert f.counts == {"open": 3, "fd_release": 2}


def test_a_reopen_is_reported_by_the_event_that_makes_it():
    """The pairing fed event by event (the ledger, the state kills): the `open` that is a reopen says so."""
    reopens = trace.Reopens()
    events = trace.parse("\n".join([
        "p-1 [000] ..... 1.0: cachefiles_ondemand_fd_release: o=00000001 oid=1",
        "p-1 [000] ..... 2.0: cachefiles_ondemand_open: o=00000002 mid=0 oid=0 fd=5 f=0",
        "p-1 [000] ..... 3.0: cachefiles_ondemand_open: o=00000001 mid=0 oid=0 fd=6 f=0",
    ]))
    assert [reopens.feed(e) for e in events] == [None, None, trace.Reopen(1, 1, 3.0)]
    assert reopens.reopened == {1}


def test_daemon_calls_keep_both_counts_where_the_rules_differ():
    """A read() that failed (EEXIST) is a read of the device for the ledger's `first_read`, not for
    kernelfacts' `first_read_ok`; a successful copen is two answers (its tracepoint, its return)."""
    head = "python3-{0} ({0}) [000] ..... {1}: "
    deliver = "deliver: (vfs_read+0x1/0x2 <- cachefiles_ondemand_daemon_read) "
    calls = trace.DaemonCalls()
    for e in trace.parse("\n".join([
        head.format(7, "1.0") + deliver + "ret=-17 msg_id=0 opcode=0 len=0 object_id=0 a=0 b=0",
        head.format(7, "2.0") + deliver + "ret=55 msg_id=3 opcode=0 len=55 object_id=1 a=0 b=7",
        head.format(7, "3.0") + "cachefiles_ondemand_copen: o=00000001 mid=3 l=224000",
        head.format(7, "3.1") + 'copened: (cachefiles_daemon_write+0x1/0x2 <- cachefiles_ondemand_copen) ret=0 id="3"',
        head.format(8, "4.0") + "restore: (cachefiles_ondemand_restore+0x4/0x14a)",
        head.format(8, "5.0") + deliver + "ret=0 msg_id=0 opcode=0 len=0 object_id=0 a=0 b=0",
    ])):
        calls.feed(e)
    assert calls.first_read == {7: 1.0, 8: 5.0} and calls.first_read_ok == {7: 2.0, 8: 5.0}
    assert calls.last_read_ok == {7: 2.0, 8: 5.0} and calls.last_read == 5.0
    assert calls.reads == [(1.0, 7), (2.0, 7), (5.0, 8)]
    assert calls.answers == [3.0, 3.1] and calls.copened == {1}
    assert calls.restores == [(4.0, 8)]


def test_captured_close_fds_trace_shows_the_reopens():
    events, daemon = load("run-close-fds")
    f = trace.facts(events)
    closes = sum(1 for e in daemon if e.get("event") == "close_fd")
    assert closes == 40
    # every close the daemon made is an fd_release in the kernel; most are reopened on the next READ
    assert f.counts["fd_release"] >= closes
    assert 10 <= len(f.reopens) <= closes
    assert trace.reads_after_reopens(daemon) >= len(f.reopens)


def test_before_any_fault_nothing_is_a_reopen():
    """The first incarnation of the crash run, before the first kill: every OPEN is a first one."""
    _, daemon = load("run-crash-5-kills")
    first = [e for e in daemon if e.get("incarnation") == 1]
    assert any(e.get("op") == "READ" for e in first)
    assert trace.reads_after_reopens(first) == 0
    assert trace.reads_after_reopens(daemon) > 0  # after the kills, the objects came back


def test_overrun_is_noticed(tmp_path):
    run = tmp_path / "run"
    (run / "guest").mkdir(parents=True)
    (run / "guest" / "trace-stats.txt").write_text("entries: 10\noverrun: 0\nentries: 9\noverrun: 3\n")
    assert evidence.RunLogs.load(run).trace_lost
    (run / "guest" / "trace-stats.txt").write_text("entries: 10\noverrun: 0\ncommit overrun: 0\n")
    assert not evidence.RunLogs.load(run).trace_lost
