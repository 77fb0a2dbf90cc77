"""Facts in, verdict out.

FAIL when the kernel did something wrong: wrong data, a read error, a stall, a kill not
recovered from, an answer of the daemon refused, a splat. INCONCLUSIVE when nothing went wrong
but a failover path the scenario exists for never ran (the run proves nothing about it). PASS
only when neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .checks import Check, Reason, Status
from .console import Finding
from .evidence import DaemonFacts, LogEvent, ReaderFacts
from ..scenarios import CRASH_POINTS, UNANSWERED_POINTS, Needs
from .trace import TraceFacts

HELD_LOST_SHARE = 0.2
HELD_LOST_SLACK = 1
SPURIOUS_WAKEUPS_PER_RESTORE = 2
SPURIOUS_WAKEUPS_PER_CLOSE = 1
SPURIOUS_WAKEUPS_SLACK = 10

@dataclass(frozen=True)
class Thresholds:
    kills_requested: int
    stall_bound_s: float
    needs: Needs = field(default_factory=Needs)
    crash_points_planned: int = 0
    expected_daemon_errnos: frozenset[int] = frozenset()  # scenarios.Scenario's: the fault plan's own


@dataclass(frozen=True)
class Verdict:
    status: Status
    reasons: tuple[Reason, ...]  # why FAIL
    missing: tuple[Reason, ...]  # which evidence never showed (INCONCLUSIVE, or beside a FAIL)


def failures(daemon: DaemonFacts, readers: ReaderFacts, findings: list[Finding], th: Thresholds,
             aborted: str | None) -> list[Reason]:
    reasons: list[Reason] = []
    if aborted:
        reasons.append(Reason(Check.RUN_COMPLETED, f"run aborted: {aborted}"))

    # the data
    if readers.files_verified == 0:
        reasons.append(Reason(Check.CHECKSUM, "no file was read back correctly"))
    if readers.mismatches:
        m = readers.mismatches[0]
        reasons.append(Reason(Check.CHECKSUM, f"{len(readers.mismatches)} checksum mismatch(es), "
                                             f"first {m.get('image')}/{m.get('path')}"))
    if readers.read_errors:
        e = readers.read_errors[0]
        reasons.append(Reason(Check.READ_ERROR, f"{len(readers.read_errors)} read error(s), first {e.get('stage')} "
                              f"{e.get('fsid')}/{e.get('path')}: {e.get('error')} (errno {e.get('errno')})"))
    if readers.max_stall_s > th.stall_bound_s:
        reasons.append(Reason(Check.STALL, f"a read stalled {readers.max_stall_s:.1f}s (bound {th.stall_bound_s:.0f}s)"))
    if readers.never_verified:
        reasons.append(Reason(Check.CHECKSUM, f"{len(readers.never_verified)} file(s) never read back correctly, "
                                             f"first {readers.never_verified[0]}"))

    # the failover: every death, by our kill or at a crash point, is recovered from
    kills = daemon.kills
    if len(kills) < th.kills_requested:
        reasons.append(Reason(Check.KILLS, f"only {len(kills)} of {th.kills_requested} kills were made"))
    if missed := [k.index for k in kills if k.death is None]:
        reasons.append(Reason(Check.KILLS, f"{len(missed)} kill(s) did not kill a daemon incarnation, first kill #{missed[0]}"))
    if not_restored := [d.incarnation for d in daemon.deaths if not d.restored]:
        reasons.append(Reason(Check.RECOVERY, f"{len(not_restored)} death(s) not followed by a successful restore, "
                                             f"first of incarnation {not_restored[0]}"))
    if not_served := [d.incarnation for d in daemon.deaths if d.restored and not d.served_after]:
        reasons.append(Reason(Check.RECOVERY, f"{len(not_served)} death(s) not followed by requests served again, "
                                             f"first of incarnation {not_served[0]}"))

    # what killed daemons held, the next incarnations must receive again. Not each and every one:
    # on correct kernels about one in fifty is not seen again (its mount may be gone by then), so
    # a few are allowed; a kernel that fails held requests at the daemon's death loses them all
    kill_deaths = [d for d in daemon.deaths if d.cause == "kill"]
    held = sum(len(d.held) for d in kill_deaths)
    lost = sum(len(set(d.held) - set(d.redelivered)) for d in kill_deaths)
    if daemon.restores_ok and lost > max(HELD_LOST_SLACK, HELD_LOST_SHARE * held):
        reasons.append(Reason(Check.HELD_REQUESTS, f"{lost} of {held} requests held by killed daemons were never delivered "
                                                  f"again (allowed {max(HELD_LOST_SLACK, int(HELD_LOST_SHARE * held))})"))

    for d in daemon.deaths:
        if d.point in UNANSWERED_POINTS and (never_again := set(d.held) - set(d.redelivered)):
            reasons.append(Reason(Check.HELD_REQUESTS, f"incarnation {d.incarnation} died at {d.point} holding msg_id(s) "
                                                      f"{sorted(never_again)} that no later incarnation received again"))

    # patch 4: poll says readable only when a request can be read. A restore wakes the daemon
    # about once for nothing, a closed fd rarely; a kernel that raises EPOLLIN for requests the
    # daemon cannot read (READs of objects being reopened) wakes it again and again. Measured
    # against this bound, 36 correct-kernel runs of every scenario used at most 0.40 of it; the
    # two EPOLLIN mutants 1.5 to 11 times it
    allowed = (SPURIOUS_WAKEUPS_PER_RESTORE * daemon.restores_ok + SPURIOUS_WAKEUPS_PER_CLOSE * daemon.fd_closes
               + SPURIOUS_WAKEUPS_SLACK)
    if daemon.empty_reads > allowed:
        reasons.append(Reason(Check.EMPTY_WAKEUPS, f"{daemon.empty_reads} empty wake-ups (poll said readable, read found "
                                                  f"nothing), allowed {allowed}: the daemon busy-loops"))

    # what the daemon did, the kernel must accept: a READ_COMPLETE, a copen, a read() of the device
    # refused (EEXIST: an OPEN re-delivered while its anon fd is still open), a request for an
    # object it never opened, a message that does not parse. The readers may never see it (the
    # page cache retries), so it is judged here; errors the scenario's faults cause are not
    if unexpected := [e for e in daemon.errors if e.get("errno") not in th.expected_daemon_errnos]:
        reasons.append(Reason(Check.DAEMON_ERRORS, f"{len(unexpected)} daemon error(s), first {_daemon_error(unexpected[0])}"))

    # the kernel
    if findings:
        titles = list(dict.fromkeys(f"{f.title} [{f.fingerprint}]" for f in findings))
        reasons.append(Reason(Check.SPLAT, f"kernel console: {len(findings)} finding(s): {'; '.join(titles[:5])}"))
    return reasons


def _daemon_error(e: LogEvent) -> str:
    """`READ (READ_COMPLETE) msg_id 7 object_id 3: Invalid argument (errno 22)`; `-` for what the
    daemon could not know (a read() of the device that failed has no msg_id)."""
    call = f" ({e['call']})" if e.get("call") else ""
    return (f"{e.get('op', '?')}{call} msg_id {e.get('msg_id', '-')} object_id {e.get('object_id', '-')}: "
            f"{e.get('error')} (errno {e.get('errno', '-')})")


def missing_evidence(daemon: DaemonFacts, trace: TraceFacts, reads_after_reopen: int, th: Thresholds) -> list[Reason]:
    needs = th.needs
    missing: list[Reason] = []
    if needs.in_flight_share and daemon.kills:
        share = daemon.kills_in_flight / len(daemon.kills)
        if share < needs.in_flight_share:
            missing.append(Reason(Check.IN_FLIGHT, f"only {daemon.kills_in_flight}/{len(daemon.kills)} kills ({share:.0%}) hit "
                                                  f"a request in flight (need {needs.in_flight_share:.0%}): "
                                                  "the failover path was not exercised"))
    counts = (
        (Check.REDELIVERED, daemon.redelivered, needs.redelivered, "held requests re-delivered after a restore"),
        (Check.FD_CLOSES, daemon.fd_closes, needs.fd_closes, "anon fds closed by the daemon"),
        (Check.REOPENS, len(trace.reopens), needs.reopens,
         "reopens in the kernel trace (anon fd released, then the same object opened again)"),
        (Check.READS_AFTER_REOPEN, reads_after_reopen, needs.reads_after_reopen, "READs delivered on a reopened object"),
    )
    for check, got, need, what in counts:
        if got < need:
            missing.append(Reason(check, f"{what}: {got}, need {need}"))
    if needs.crash_point_hits and th.crash_points_planned:
        hits = daemon.crash_points()
        if never := [p for p in CRASH_POINTS if len(hits.get(p, [])) < needs.crash_point_hits]:
            missing.append(Reason(Check.CRASH_POINTS, f"crash points never reached: {', '.join(never)}"))
    return missing


def decide(daemon: DaemonFacts, readers: ReaderFacts, trace: TraceFacts, reads_after_reopen: int,
           findings: list[Finding], th: Thresholds, aborted: str | None = None) -> Verdict:
    reasons = failures(daemon, readers, findings, th, aborted)
    missing = missing_evidence(daemon, trace, reads_after_reopen, th)
    status = Status.FAIL if reasons else Status.INCONCLUSIVE if missing else Status.PASS
    return Verdict(status, tuple(reasons), tuple(missing))
