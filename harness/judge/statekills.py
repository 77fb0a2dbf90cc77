"""Kills at kernel states (Fault.STATE_KILL), confirmed from the run's trace.

statekill.py kills the daemon at the first event of the armed state that it reads live; the kill
lands a little later. Whether the daemon died *in* that state is read here from the run's own
trace, between the process's last event of that kind and its exit (the last thread's
`sched_process_exit`):
- delivered-open / delivered-read: the last OPEN (READ) delivered to it was not answered before
  it died (no `copen`/`copened`/`cread` of that msg_id);
- data-written: no READ_COMPLETE (`cread`) of that object from it after its last anon fd write;
- reopening: the last reopen OPEN it was handed (an `open` of an object whose anon fd had been
  released) got no `copen` before it died;
- restoring: nothing was delivered to it between its last `restore` and its death (what the
  restore marked again had not come back to it; its other threads may have finished answering
  what they held before).
The report gives, for each state, the kills tried, made and confirmed; a scenario needs a number
confirmed in each (scenarios.Needs.state_kill_hits).
"""
from __future__ import annotations

from dataclasses import dataclass

from guest_scripts.contract import KERNEL_STATES, Fault, KernelState
from .evidence import LogEvent
from .trace import Reopens, TraceEvent

ANSWERS = ("copen", "copened", "cread")


@dataclass(frozen=True)
class StateHits:
    tried: int  # the host armed the agent
    killed: int  # the agent killed a daemon process at the state
    confirmed: int  # the trace shows it died in the state


def _answer_id(e: TraceEvent) -> int | None:
    if e.event == "copened":
        return e.fields.get("id") if e.fields.get("ret") == 0 else None
    return e.fields.get("mid")


def died_in(state: str, pid: int, events: list[TraceEvent]) -> bool:
    exits = [e.ts for e in events if e.event == "exit" and e.process == pid]
    if not exits:
        return False
    died = max(exits)
    mine = [e for e in events if e.process == pid and e.ts <= died]

    def after(ts: float) -> list[TraceEvent]:
        return [e for e in events if ts < e.ts <= died]
    if state in (KernelState.DELIVERED_OPEN, KernelState.DELIVERED_READ):
        opcode = 0 if state == KernelState.DELIVERED_OPEN else 2
        last = next((e for e in reversed(mine) if e.event == "deliver" and e.fields.get("opcode") == opcode
                     and e.fields.get("ret", 0) > 0), None)
        return last is not None and not any(e.event in ANSWERS and _answer_id(e) == last.fields.get("msg_id")
                                             for e in after(last.ts))
    if state == KernelState.DATA_WRITTEN:
        last = next((e for e in reversed(mine) if e.event == "fd_write"), None)
        return last is not None and not any(e.event == "cread" and e.process == pid and e.fields.get("o") == last.fields.get("o")
                                            for e in after(last.ts))
    if state == KernelState.REOPENING:
        reopens = Reopens()
        last = None
        for e in events:
            if e.ts > died:
                break
            if reopens.feed(e) is not None and e.process == pid:
                last = e
        return last is not None and not any(e.event == "copen" and e.fields.get("o") == last.fields.get("o")
                                            for e in after(last.ts))
    if state == KernelState.RESTORING:
        last = next((e for e in reversed(mine) if e.event == "restore"), None)
        return last is not None and not any(e.event == "deliver" and e.process == pid and e.fields.get("ret", 0) > 0
                                            for e in after(last.ts))
    return False


def hits(faults: list[LogEvent], events: list[TraceEvent]) -> dict[str, StateHits]:
    """Per KernelState, from the host's faults.jsonl (its state kills and misses) and the trace."""
    out = {}
    for state in KERNEL_STATES:
        mine = [f for f in faults if f.get("state") == state]
        killed = [f for f in mine if f.get("kind") == Fault.KILL]
        out[state] = StateHits(len(mine), len(killed),
                               sum(1 for f in killed if died_in(state, int(f.get("pid", -1)), events)))
    return out
