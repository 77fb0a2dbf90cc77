"""What the daemon asked the kernel at protocol points (its `probe` events), counted.

Both probes sit on an OPEN the daemon has read and not yet answered (guest_scripts/daemon.py):
- epollin (patch 4), on every OPEN: is the device quiet while the READ that caused a reopen
  waits for this copen? It decides only on a reopen: an OPEN for a cookie that was opened before
  (each reader round mounts fresh fsids, so nothing else asks for a cookie twice);
- wakeup, on the reopens the daemon itself can tell (a cookie this incarnation opened before):
  does the copen wake a thread asleep in poll()?
A probe that decided nothing is no evidence; a violation on any OPEN is a FAIL.

The adversarial daemon's probes are decided wherever they are asked (misbehaviour.py counts
them as the evidence of its misbehaviours):
- stale: a late answer (copen or READ_COMPLETE for a msg_id answered before, or never delivered)
  must be refused with EINVAL;
- reuse: logged only when a msg_id this run answered was delivered again (ids are cyclic);
- close-copen: after a reopen's anon fd was closed around its copen, the cookie is opened again
  and no READ is delivered for the closed object;
- late-write: after a CLOSE (the cookie withdrawn by an umount), seeking and writing through the
  object's anon fd is refused with ENOBUFS once the cache file is dropped, nothing else, and
  within a stall bound;
- second-fd (supervise_fds): a held reopen's OPEN, re-delivered by the restore while a
  supervisor keeps its anon fd, refused with EEXIST (as it must be); an OPEN delivered for a
  cookie whose object the daemon holds open through an inherited fd is the violation.
"""
from __future__ import annotations

from dataclasses import dataclass

from guest_scripts.contract import Event, Probe, ProbeOutcome
from .evidence import LogEvent, OpenedCookies

KINDS = (Probe.EPOLLIN, Probe.WAKEUP, Probe.STALE, Probe.REUSE, Probe.CLOSE_COPEN, Probe.LATE_WRITE, Probe.SECOND_FD)
ON_REOPENS = (Probe.EPOLLIN, Probe.WAKEUP)  # decided only on reopens


@dataclass(frozen=True)
class ProbeCounts:
    ran: int
    decided: int  # on a reopen, and not given up (busy)
    held: int  # of those, the kernel answered right
    violations: tuple[LogEvent, ...]  # on any OPEN


def probe_counts(daemon: list[LogEvent]) -> dict[str, ProbeCounts]:
    cookies = OpenedCookies()
    ran = {k: 0 for k in KINDS}
    decided = {k: 0 for k in KINDS}
    held = {k: 0 for k in KINDS}
    violations: dict[str, list[LogEvent]] = {k: [] for k in KINDS}
    for e in daemon:
        kind = e.get("event")
        if kind == Event.PROBE and (probe := str(e.get("probe"))) in ran:
            ran[probe] += 1
            reopen = cookies.asked(e) if probe in ON_REOPENS else True
            outcome = e.get("outcome")
            if outcome in ProbeOutcome.VIOLATIONS:
                violations[probe].append(e)
            if outcome != ProbeOutcome.BUSY and reopen:
                decided[probe] += 1
                held[probe] += outcome not in ProbeOutcome.VIOLATIONS
        elif kind == Event.DONE and e.get("op") == "OPEN":
            cookies.answered(e)
    return {k: ProbeCounts(ran[k], decided[k], held[k], tuple(violations[k])) for k in KINDS}


def describe(e: LogEvent) -> str:
    """What a violating probe saw, with the OPEN it waited on."""
    what = {ProbeOutcome.SPIN: f"the device stayed readable with nothing to read ({e.get('empties')} empty reads)",
            ProbeOutcome.EARLY_READ: "a READ of the object was delivered before its OPEN was answered",
            ProbeOutcome.ASLEEP: "a thread asleep in poll() was not woken by the copen",
            ProbeOutcome.ACCEPTED: f"a late {e.get('op')} answer was accepted ({e.get('origin')})",
            ProbeOutcome.UNEXPECTED: f"a late {e.get('op')} answer was refused with errno {e.get('errno')}, not EINVAL "
                                     f"({e.get('origin')})",
            ProbeOutcome.REUSED: f"a msg_id answered before was delivered again, now for a {e.get('op')}",
            ProbeOutcome.READ_ON_CLOSED: "a READ was delivered for an object whose anon fd was closed before its copen",
            ProbeOutcome.SECOND_FD: f"an OPEN was delivered (a second anon fd) for an object held open through the "
                                    f"inherited anon fd of object_id {e.get('held_object_id')}"}
    if e.get("probe") == Probe.LATE_WRITE:
        what[ProbeOutcome.UNEXPECTED] = (f"seek and write through the anon fd after its object's CLOSE were answered "
                                         f"{e.get('errnos')} (errnos; None: accepted), not ENOBUFS")
        what[ProbeOutcome.WRITABLE] = (f"the anon fd still took writes a stall bound after its object's CLOSE "
                                       f"({e.get('accepted')} accepted)")
    outcome = what.get(str(e.get("outcome")), e.get("outcome"))
    if e.get("probe") in (Probe.STALE, Probe.REUSE):
        return f"{outcome}: msg_id {e.get('msg_id')} object_id {e.get('object_id')}"
    return f"{outcome}: msg_id {e.get('msg_id')} object_id {e.get('object_id')} ({e.get('cookie')})"
