"""The daemon's incarnations, deaths and kills from the kernel alone: DaemonFacts for a daemon whose
own log the judge cannot rely on (a foreign daemon: README, "The kernel's ledger").

evidence.daemon_facts reads them from our daemon's and keeper's logs; here they come from the
kernel's trace (trace.parse) and its ledger (ledger.build), and from the host's own record of
the kills it made (faults.jsonl: `kind` "kill" and the `pid` it signalled). Nothing is taken from
the daemon. The definitions:

- an incarnation is a daemon process (tgid) that read the device (the ledger's processes: a
  read() that delivered a message or found nothing), numbered 1.. in order of its first read. A
  process that never read the device (killed before its first read, or a supervisor that only
  holds the device fd) is none: the kernel cannot tell it from any other process;
- a death is the exit of an incarnation (its last thread's `sched_process_exit`: the ledger's
  `died_ts`), with two exceptions, both only for a process no host kill names (a process the
  host killed is always a death: the kill hit a daemon):
  - its cache died under it: the device was released (`unbind`) after its last read and before
    it exited. The death was the cache's (ledger.CacheDeath, cachedeath.py judges it), and no
    `restore` can follow: the next incarnation binds a new cache;
  - the end of the run: it held nothing and no process read the device after it exited. A
    daemon stopped at the end is such an exit; the kernel cannot tell it from a death that
    nothing followed, and there is nothing in that death for the kernel to lose (what it held
    is the ledger's to judge, and a death holding something stays a death);
  its cause is "kill" when a host kill names its tgid, else "signal" (an exit the host did not
  ask for: the kernel does not say whether a signal or the process itself ended it; crash
  points are our daemon's own, so `point` is None);
- held: the lifetimes the ledger delivered to it and had not ended when it died (ledger
  `ProcessAccount.held_ids`: the ledger's `held` count, by msg_id);
- redelivered: of those, the ones the ledger counts as delivered again (`redelivered_ids`): a
  delivery after the next `restore`, or an OPEN refused with EEXIST after it (taken out for the
  new reader, its anon fd still open). "After the death" and "after the restore" are the same
  for every run that can pass: a held request delivered after the death with no `restore`
  between is the ledger's `double` violation;
- restored: a `restore` after the death and before the next death, written by a process other
  than the dead one (the next incarnation or a supervisor: a foreign daemon may restore from any
  process, so the writer need not be the next reader);
- served_after: restored, and some process answered a request after the death (`copen`,
  `cread`, or `copened` with return 0: the kernel took the request out); recovery_s: from the
  death to that first answer, whatever the restore.

And for the whole run:
- answered: the ledger's lifetimes ended by their answer, by opcode. A CLOSE is never answered:
  the kernel ends it at its delivery (our daemon logs a `done` once it has closed the fd);
- empty_reads: the ledger's (every read() that returned 0, whatever the daemon read it for);
- restores_ok: every `restore`. The kprobe fires at the entry of cachefiles_ondemand_restore: a
  write the device refuses before it (a dead cache) never shows, one it refuses itself (not in
  on-demand mode) shows as any other, so a failed restore cannot be told from the trace:
  restores_failed is 0;
- fd_closes: anon fds the daemon let go unasked, as close-fds makes ours do: an `fd_release`
  (i) not for an object id a CLOSE was delivered for (the daemon's answer to a CLOSE; a CLOSE
  queued and not yet read does not count: the daemon did not know of it), and (ii) in a process
  that went on serving after it (a later read of the device, answer, `restore` or write through
  an anon fd). (ii) leaves out the fds a process releases as it exits: its exit_files, after its
  last thread's `sched_process_exit`, and a clean exit that closes what it holds first (cache-death's
  daemon, whose releases come before its exit). An OPEN's anon fd the daemon closes because it
  could not answer it (its object dropped) is one (our daemon logs it `dropped`, not `close_fd`);
- errors: none. The daemon's own errors are in its log; what the kernel refused of it leaves
  its request unanswered, which the ledger judges.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .evidence import DaemonFacts, Death, Kill, LogEvent
from .ledger import OPCODES, Ledger, ProcessAccount
from .trace import DaemonCalls, TraceEvent

CLOSE_OPCODE = next(code for code, op in OPCODES.items() if op == "CLOSE")
# what a process does while it serves: one of these after an anon fd's release says it was alive after it
_SERVING = frozenset({"deliver", "read_begin", "restore", "copen", "cread", "copened", "fd_write"})


@dataclass(frozen=True)
class _Trace:
    """What the kernel facts need of the trace beyond the ledger, in one pass."""
    first_read: dict[int, float]  # tgid -> its first read() of the device that returned (>= 0)
    last_read: dict[int, float]  # tgid -> its last one
    reads: tuple[tuple[float, int], ...]  # (ts, tgid) of every read() of the device, in order
    restores: tuple[tuple[float, int], ...]  # (ts, tgid of the writer) of every `restore`
    answers: tuple[float, ...]  # every answer the kernel took, in order
    unbinds: tuple[float, ...]  # every release of the device
    fd_closes: int  # anon fds the daemon let go unasked (module docstring)


def _scan(events: list[TraceEvent]) -> _Trace:
    # each process's read()s of the device, the restores and the answers, tracked as the ledger
    # tracks them; of the two counts where the rules differ, these facts take the read()s that
    # returned >= 0 (first_read_ok: the incarnations) and every answer the kernel took
    calls = DaemonCalls()
    unbinds: list[float] = []
    asked: set[int] = set()  # object ids (oid: one anon fd's) a CLOSE was delivered for, not released since
    unasked: list[tuple[float, int]] = []  # (ts, tgid) of each anon fd released with no CLOSE asked
    last_served: dict[int, float] = {}  # tgid -> the last thing it did serving the device
    for e in events:
        calls.feed(e)
        f = e.fields
        if e.event in _SERVING:
            last_served[e.process] = e.ts
        if e.event == "deliver" and f.get("ret", -1) > 0 and f.get("opcode") == CLOSE_OPCODE:
            asked.add(f.get("object_id", -1))
        elif e.event == "unbind":
            unbinds.append(e.ts)
        elif e.event == "fd_release" and "oid" in f:
            if f["oid"] in asked:
                asked.discard(f["oid"])  # the answer to a CLOSE the daemon was given
            else:
                unasked.append((e.ts, e.process))
    # a release by a process that served no more after it is its exit's: exit_files (after its last
    # thread's sched_process_exit), or a clean exit closing what it holds (cache-death's daemon)
    fd_closes = sum(1 for ts, tgid in unasked if last_served.get(tgid, float("-inf")) > ts)
    return _Trace(calls.first_read_ok, calls.last_read_ok, tuple(calls.reads), tuple(calls.restores),
                  tuple(sorted(calls.answers)), tuple(unbinds), fd_closes)


def _is_death(p: ProcessAccount, t: _Trace, killed: set[int]) -> bool:
    died = p.died_ts
    if died is None:
        return False
    if p.tgid in killed:
        return True
    last = t.last_read.get(p.tgid, died)
    if any(last < u <= died for u in t.unbinds):
        return False  # its cache died under it: cachedeath.py's
    read_after = any(ts > died and tgid != p.tgid for ts, tgid in t.reads)
    return bool(p.held_ids) or read_after  # else the end of the run


@dataclass(frozen=True)
class _IdleProcess:
    """A killed process that never read the device: what a death needs of a ProcessAccount."""
    tgid: int
    died_ts: float | None
    held_ids: tuple[int, ...] = ()
    redelivered_ids: tuple[int, ...] = ()


def _idle_deaths(events: list[TraceEvent], pids: set[int]) -> dict[int, float]:
    """tgid -> its last thread's exit, of the `pids` whose exit the trace has."""
    exits: dict[int, float] = {}
    for e in events:
        if e.event == "exit" and e.process in pids:
            exits[e.process] = e.ts
    return exits


def daemon_facts_from_kernel(events: list[TraceEvent], ledger: Ledger, host_kills: list[LogEvent]) -> DaemonFacts:
    """DaemonFacts from the trace, its ledger and the host's kills (module docstring). With no
    ledger (the trace lost events, or had no kprobes) there are no incarnations: every kill is one
    that hit no daemon, as far as the kernel can tell."""
    t = _scan(events)
    killed = {pid for k in host_kills if isinstance(pid := k.get("pid"), int)}
    readers = {p.tgid for p in ledger.processes}
    # a worker the host killed before it ever read the device (it had nothing to read yet, or was
    # still starting): unknown to the ledger, but its exit is in the trace. A death that held
    # nothing, not a kill that missed: the kill target was right. Only if a daemon went on after it
    # (a restore, or another process's first read): a process that exits only as the run ends (a
    # supervisor stopped) was no worker
    idle = {tgid: ts for tgid, ts in _idle_deaths(events, killed - readers).items()
            if any(r > ts for r, _ in t.restores) or any(first > ts for first in t.first_read.values())}
    # numbered as they came: by first read, or (never read) by exit
    came = {**{p.tgid: t.first_read.get(p.tgid, float("inf")) for p in ledger.processes}, **idle}
    number = {tgid: i for i, tgid in enumerate(sorted(came, key=lambda g: (came[g], g)), 1)}
    dying = [p for p in ledger.processes if _is_death(p, t, killed)]
    every: list[ProcessAccount | _IdleProcess] = [*dying, *(_IdleProcess(tgid, ts) for tgid, ts in idle.items())]
    dying_all = sorted(every, key=lambda p: p.died_ts or 0.0)
    deaths: list[Death] = []
    for i, p in enumerate(dying_all):
        died = p.died_ts if p.died_ts is not None else 0.0
        next_death = dying_all[i + 1].died_ts if i + 1 < len(dying_all) else None
        until = next_death if next_death is not None else float("inf")
        restored = any(died < ts < until and tgid != p.tgid for ts, tgid in t.restores)
        k = bisect.bisect_right(t.answers, died)
        answer = t.answers[k] if k < len(t.answers) else None
        deaths.append(Death(
            incarnation=number[p.tgid], pid=p.tgid, cause="kill" if p.tgid in killed else "signal",
            point=None,  # crash points are our daemon's own
            held=p.held_ids, redelivered=p.redelivered_ids, restored=restored,
            served_after=restored and answer is not None,
            recovery_s=round(answer - died, 4) if answer is not None else None))
    by_pid = {d.pid: d for d in deaths}
    return DaemonFacts(
        incarnations=len(number),
        deaths=tuple(deaths),
        kills=tuple(Kill(i, hk.get("pid", -1), by_pid.get(hk.get("pid", -1))) for i, hk in enumerate(host_kills)),
        answered=dict(ledger.answered),
        empty_reads=sum(p.empty_reads for p in ledger.processes),
        restores_ok=len(t.restores),
        restores_failed=0,  # not seen by a kprobe at the entry: module docstring
        fd_closes=t.fd_closes,  # module docstring
        errors=(),  # the daemon's own, in its log: not the kernel's
    )
