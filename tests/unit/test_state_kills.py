"""Kills at kernel states: what statekill.py reads off the live trace (a pure parser), and how the
judge confirms from the run's trace that the daemon died in the state; each state with its
negative control (the answer, or the READ_COMPLETE, came before the death)."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

import statekill
from contract import HeldKill, KernelState, KillGate
from eventlog import EventLog
from harness.judge import ledger, statekills, trace

T = "         python3-{pid:<6}({tgid:>7}) [000] .....    {ts:.6f}: {body}"


def line(ts, body, pid=300, tgid=300):
    return T.format(pid=pid, tgid=tgid, ts=ts, body=body)


DELIVER = "deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret={ret} msg_id={mid} opcode={op} len=32 object_id=3 a=0 b=4096"
EXIT = "sched_process_exit: comm=python3 pid=300 prio=120"


def test_the_agent_reads_each_state_off_trace_pipe_lines():
    s = statekill.States()
    got = [s.of(*statekill.parse(x)[1:]) for x in (
        line(1, DELIVER.format(ret=32, mid=7, op=2)),
        line(2, DELIVER.format(ret=53, mid=8, op=0)),
        line(3, DELIVER.format(ret=0, mid=0, op=0)),  # an empty read delivers nothing
        line(4, "cachefiles_ondemand_fd_write: o=00000002 iB=21b s=1000 l=1000"),
        line(5, "cachefiles_ondemand_open: o=00000002 mid=0 oid=0 fd=10 f=0"),  # a first open
        line(6, "cachefiles_ondemand_fd_release: o=00000002 oid=3"),
        line(7, "cachefiles_ondemand_open: o=00000002 mid=0 oid=0 fd=11 f=0"),  # the reopen
        line(8, "restore: (cachefiles_ondemand_restore+0x4/0x14a)"),
    )]
    assert [g[0] if g else None for g in got] == [
        KernelState.DELIVERED_READ, KernelState.DELIVERED_OPEN, None, KernelState.DATA_WRITTEN, None, None,
        KernelState.REOPENING, KernelState.RESTORING]
    assert got[0][1] == {"msg_id": 7, "object_id": 3} and got[3][1] == {"o": 2, "off": 4096}


CASES = {
    KernelState.DELIVERED_READ: ([DELIVER.format(ret=32, mid=7, op=2)], "cachefiles_ondemand_cread: o=00000002 mid=7"),
    KernelState.DELIVERED_OPEN: ([DELIVER.format(ret=53, mid=8, op=0)], "copened: (cachefiles_daemon_write+0x1/0x2 <- cachefiles_ondemand_copen) ret=0 id=\"8\""),
    KernelState.DATA_WRITTEN: (["cachefiles_ondemand_fd_write: o=00000002 iB=21b s=0 l=1000"],
                               "cachefiles_ondemand_cread: o=00000002 mid=9"),
    KernelState.REOPENING: (["cachefiles_ondemand_fd_release: o=00000002 oid=3",
                             "cachefiles_ondemand_open: o=00000002 mid=0 oid=0 fd=11 f=0"],
                            "cachefiles_ondemand_copen: o=00000002 mid=10 l=1000"),
    KernelState.RESTORING: (["restore: (cachefiles_ondemand_restore+0x4/0x14a)"], DELIVER.format(ret=32, mid=11, op=2)),
}


@pytest.mark.parametrize("state", list(CASES))
def test_a_death_in_the_state_is_confirmed_and_one_after_the_answer_is_not(state):
    before, answer = CASES[state]
    lines = [line(1 + i, b) for i, b in enumerate(before)]
    died = trace.parse("\n".join([*lines, line(10, EXIT)]))
    answered = trace.parse("\n".join([*lines, line(9, answer), line(10, EXIT)]))
    assert statekills.died_in(state, 300, died)
    assert not statekills.died_in(state, 300, answered)
    assert not statekills.died_in(state, 301, died)  # another process's death says nothing


def test_the_hits_count_tries_kills_and_confirmations():
    events = trace.parse("\n".join([line(1, DELIVER.format(ret=32, mid=7, op=2)), line(2, EXIT)]))
    faults = [{"kind": "kill", "state": KernelState.DELIVERED_READ, "pid": 300},
              {"kind": "state_kill", "state": KernelState.DELIVERED_READ, "missed": True},
              {"kind": "kill", "pid": 300}]  # a timer kill: no state
    h = statekills.hits(faults, events)[KernelState.DELIVERED_READ]
    assert (h.tried, h.killed, h.confirmed) == (2, 1, 1)


def test_an_open_failed_at_its_copen_is_ended_in_the_ledger_not_held():
    """A copen the kernel takes the OPEN out for and then fails (its anon fd closed before it)
    has no `copen` tracepoint; the `copened` return probe ends it."""
    lines = [line(1, DELIVER.format(ret=53, mid=8, op=0)),
             line(2, "copened: (cachefiles_daemon_write+0x1/0x2 <- cachefiles_ondemand_copen) ret=0 id=\"8\""),
             line(3, EXIT)]
    assert ledger.build(trace.parse("\n".join(lines))).held == 0
    refused = lines[1].replace("ret=0", "ret=-22")  # a refused copen took nothing out
    assert ledger.build(trace.parse("\n".join([lines[0], refused, lines[2]]))).held == 1


COPENED = "copened: (cachefiles_daemon_write+0x1/0x2 <- cachefiles_ondemand_copen) ret={ret} id=\"{mid}\""


def held_after(*lines_):
    held = statekill.Held(process_of=lambda thread: {301: 300}.get(thread, thread))
    delivered = [held.of(*statekill.parse(x)) for x in lines_]
    return held, delivered


def test_the_agent_knows_which_process_holds_which_request_until_its_answer():
    """A gated kill (HeldKill) trusts this table: a request is held from its delivery to its
    answer, by the process whose thread read it; each answer with its control (none: still held)."""
    held, delivered = held_after(line(1, DELIVER.format(ret=32, mid=7, op=2), pid=301),  # a thread of 300
                                 line(2, DELIVER.format(ret=53, mid=8, op=0)))
    assert delivered == [(300, 7, 2), (300, 8, 0)]
    assert held.held_by(300) == (7, 2) and held.held_by(301) is None
    # a request held past HELD_FOR_S may be one the kernel ended unanswered: not trusted
    assert held.held_by(300, now=time.monotonic() + statekill.HELD_FOR_S + 1) is None
    # the tracepoints print msg_ids in hex, `deliver` and the copen command in decimal
    for answer, mid in (("cachefiles_ondemand_cread: o=00000002 mid=1a", 26),
                        ("cachefiles_ondemand_copen: o=00000002 mid=8 l=1000", 8),
                        (COPENED.format(ret=0, mid=8), 8)):  # a copen taken, then failed: ended too
        held, _ = held_after(line(1, DELIVER.format(ret=32, mid=26, op=2)), line(2, DELIVER.format(ret=53, mid=8, op=0)),
                             line(3, answer))
        # the answered one gone, the other held (held_by alone names the oldest, 26, either way)
        assert set(held.by_msg) == {m for m in (26, 8) if m != mid}
    held, _ = held_after(line(1, DELIVER.format(ret=53, mid=8, op=0)), line(2, COPENED.format(ret=-22, mid=8)))
    assert held.held_by(300) == (8, 0)  # a refused copen took nothing out


def test_nothing_is_held_of_a_close_an_empty_read_or_a_request_delivered_again_elsewhere():
    held, delivered = held_after(line(1, DELIVER.format(ret=32, mid=5, op=1)),  # a CLOSE: ended by its delivery
                                 line(2, DELIVER.format(ret=0, mid=0, op=0)))  # an empty read
    assert delivered == [None, None] and held.held_by(300) is None
    held, _ = held_after(line(1, DELIVER.format(ret=32, mid=7, op=2)),
                         line(2, DELIVER.format(ret=32, mid=7, op=2), pid=400, tgid=400))  # after restore
    assert held.held_by(300) is None and held.held_by(400) == (7, 2)


@pytest.mark.parametrize("word,parsed", [("held:250:2", (250, 2.0)), ("held:7:0.5", (7, 0.5)),
                                         ("held:0:2", None), ("held:x:2", None), ("held:250", None),
                                         ("delivered-read", None), ("off", None)])
def test_the_arming_word_of_a_gated_kill(word, parsed):
    assert HeldKill.parse(word) == parsed


def test_the_arming_word_round_trips():
    assert HeldKill.parse(HeldKill.arm(4242, 2.0)) == (4242, 2.0)


class AgentRig:
    """statekill.Agent on pipes of its own (the FIFO's words, the trace's lines), in a thread, and
    a real process (`sleep`) for it to stop, continue and kill."""

    def __init__(self, tmp_path):
        ctl_r, self.ctl = os.pipe()
        trace_r, self.trace = os.pipe()
        os.set_blocking(ctl_r, False)
        os.set_blocking(trace_r, False)
        self.log_path = tmp_path / "statekill.jsonl"
        agent = statekill.Agent(ctl_r, trace_r, EventLog(str(self.log_path), who="statekill"), keeper_pid=os.getpid())
        threading.Thread(target=agent.serve, daemon=True).start()
        self.daemon = subprocess.Popen(["sleep", "60"])

    def trace_line(self, body, ts=1.0):
        os.write(self.trace, (line(ts, body, pid=self.daemon.pid, tgid=self.daemon.pid) + "\n").encode())

    def arm(self, bound_s=5.0):
        time.sleep(0.05)  # the agent reads the trace as it comes; the arming drains it anyway
        os.write(self.ctl, f"{HeldKill.arm(self.daemon.pid, bound_s)}\n".encode())

    def kill(self, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log_path.exists():
                kills = [json.loads(x) for x in self.log_path.read_text().splitlines() if '"held_kill"' in x]
                if kills:
                    return kills[0]
            time.sleep(0.01)
        raise AssertionError("no gated kill")

    def state(self):
        with open(f"/proc/{self.daemon.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def agent_rig(tmp_path):
    rig = AgentRig(tmp_path)
    yield rig
    rig.daemon.kill()
    rig.daemon.wait()


def test_the_agent_kills_a_process_holding_a_request_once_stopped(agent_rig):
    agent_rig.trace_line("deliver: (vfs_read+0x84/0x14b <- cachefiles_ondemand_daemon_read) ret=abc msg_id=6 opcode=2")
    agent_rig.trace_line(DELIVER.format(ret=32, mid=7, op=2))  # after a garbled line: the agent goes on
    agent_rig.arm()
    k = agent_rig.kill()
    assert (k["gate"], k["killed"], k["stopped"], k["msg_id"]) == (KillGate.HELD, True, True, 7)
    assert agent_rig.daemon.wait(timeout=10) == -signal.SIGKILL


def test_the_agent_lets_a_process_holding_nothing_go_on_and_kills_it_at_the_next_delivery(agent_rig):
    """Control: the request answered before the arming is held no more; the process is not left
    stopped while the agent waits, and dies as the next request is delivered to it."""
    agent_rig.trace_line(DELIVER.format(ret=32, mid=7, op=2))
    agent_rig.trace_line("cachefiles_ondemand_cread: o=00000002 mid=7", ts=1.1)
    agent_rig.arm()
    time.sleep(0.3)
    assert agent_rig.daemon.poll() is None and agent_rig.state() not in ("T", "t")
    agent_rig.trace_line(DELIVER.format(ret=32, mid=8, op=2), ts=1.2)
    k = agent_rig.kill()
    assert (k["gate"], k["killed"], k["stopped"], k["msg_id"]) == (KillGate.DELIVERY, True, False, 8)
    assert agent_rig.daemon.wait(timeout=10) == -signal.SIGKILL


def test_the_agent_kills_at_the_bound_when_nothing_is_delivered(agent_rig):
    agent_rig.arm(bound_s=0.3)
    k = agent_rig.kill()
    assert (k["gate"], k["killed"]) == (KillGate.TIMEOUT, True) and k["waited_s"] >= 0.3
    assert agent_rig.daemon.wait(timeout=10) == -signal.SIGKILL
