"""Facts in, verdict out.

FAIL when the kernel did something wrong: wrong data, a read error (but one a cache death the
scenario asked for explains, cachedeath.py), a stall, a kill not
recovered from, a request its ledger shows lost, delivered twice or delivered for a closed
object, a probe answered wrong, an answer of the daemon refused, a splat. INCONCLUSIVE when
nothing went wrong but a failover path the scenario exists for never ran (the run proves nothing
about it). PASS only when neither. No rule has an allowance: each is a fact that a correct
kernel never shows (README, "The kernel's ledger").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cachedeath import CacheDeathFacts
from .checks import Check, Reason, Status
from .console import Finding
from .copenwake import CopenWake
from .evidence import DaemonFacts, LogEvent, ReaderFacts
from .killable import Waiter
from .reopenumount import ReopenUmount
from .ledger import Ledger
from . import probes
from .probes import ProbeCounts
from .misbehaviour import MisbehaviourFacts
from .reread import Reread
from .statekills import StateHits
from guest_scripts.contract import AT_RESTORE, EndOfRun, Probe
from ..scenarios import CRASH_POINTS, Needs
from .trace import TraceFacts

SHOWN = 3  # violations named in a reason; results.json's ledger lists more

@dataclass(frozen=True)
class Thresholds:
    kills_requested: int
    stall_bound_s: float
    needs: Needs = field(default_factory=Needs)
    crash_points_planned: int = 0
    expected_daemon_errnos: frozenset[int] = frozenset()  # scenarios.Scenario's: the fault plan's own
    kmemleak: bool = False  # the flavour has it (debug): the end check must have scanned
    misbehaviours: tuple[str, ...] = ()  # the scenario's daemon's (misbehaviour.NAMES)
    state_kills: bool = False  # the scenario kills at kernel states


@dataclass(frozen=True)
class Verdict:
    status: Status
    reasons: tuple[Reason, ...]  # why FAIL
    missing: tuple[Reason, ...]  # which evidence never showed (INCONCLUSIVE, or beside a FAIL)


def failures(daemon: DaemonFacts, readers: ReaderFacts, ledger: Ledger, probed: dict[str, ProbeCounts],
             findings: list[Finding], th: Thresholds, aborted: str | None, end: EndOfRun | None = None,
             reread: Reread | None = None, misbehaved: MisbehaviourFacts | None = None,
             cache: CacheDeathFacts | None = None, waiters: tuple[Waiter, ...] = (),
             reopen_umounts: tuple[ReopenUmount, ...] = (), copen_wakes: tuple[CopenWake, ...] = ()) -> list[Reason]:
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
    if wrong_errors := cache.unexplained(readers.read_errors) if cache else readers.read_errors:
        e = wrong_errors[0]
        beside = f" ({len(cache.explained)} more a cache death explains)" if cache and cache.explained else ""
        reasons.append(Reason(Check.READ_ERROR, f"{len(wrong_errors)} read error(s){beside}, first {e.get('stage')} "
                              f"{e.get('fsid')}/{e.get('path')}: {e.get('error')} (errno {e.get('errno')})"))
    if readers.max_stall_s > th.stall_bound_s:
        stuck = readers.stalls[0] if readers.stalls else None  # the watchdog reports each call once, at the bound
        where = f": {stuck.get('what')}, waiting in {stuck.get('wchan')}" if stuck and "wchan" in stuck else ""
        reasons.append(Reason(Check.STALL, f"a call stalled {readers.max_stall_s:.1f}s (bound {th.stall_bound_s:.0f}s){where}"))
    if readers.never_verified:
        reasons.append(Reason(Check.CHECKSUM, f"{len(readers.never_verified)} file(s) never read back correctly, "
                                             f"first {readers.never_verified[0]}"))
    if reread is not None and (wrong := reread.failures()):
        reasons.append(Reason(Check.REREAD, "after drop_caches: " + "; ".join(wrong[:SHOWN])))

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

    # the kernel's ledger: what a dead daemon held comes back after the next restore, once; every
    # request is answered or ended by the kernel; no READ goes to a closed object
    for check, rule in ((Check.HELD_REQUESTS, "held"), (Check.DOUBLE_DELIVERY, "double"),
                        (Check.UNANSWERED, "unanswered"), (Check.READ_ON_CLOSED, "closed")):
        if broken := ledger.of_rule(rule):
            reasons.append(Reason(check, f"{len(broken)} in the kernel's ledger: " + "; ".join(str(v) for v in broken[:SHOWN])))

    # asked at the protocol point, an OPEN read and not answered: the device must be quiet (patch
    # 4); its copen, on a reopen, must wake a thread asleep in poll()
    # the adversarial daemon's: a late answer refused (EINVAL), no msg_id reused, no READ for an
    # object whose anon fd was closed around its copen, a write after an umount's CLOSE refused (ENOBUFS); the supervised daemon's: no OPEN for an
    # object whose anon fd it holds
    for check, kind in ((Check.EPOLLIN_PROBE, Probe.EPOLLIN), (Check.WAKEUP_PROBE, Probe.WAKEUP),
                        (Check.STALE_PROBE, Probe.STALE), (Check.STALE_PROBE, Probe.REUSE),
                        (Check.CLOSE_COPEN_PROBE, Probe.CLOSE_COPEN), (Check.LATE_WRITE_PROBE, Probe.LATE_WRITE),
                        (Check.SECOND_FD_PROBE, Probe.SECOND_FD)):
        if found := probed[kind].violations:
            reasons.append(Reason(check, f"{len(found)} probe(s): " + "; ".join(probes.describe(e) for e in found[:SHOWN])))

    # the kernel, for any daemon: a reopen's copen wakes every poll(2) sleeper on its device
    if unwoken := [c for c in copen_wakes if c.missed]:
        reasons.append(Reason(Check.COPEN_WAKE, f"{len(unwoken)} of {sum(c.decided for c in copen_wakes)} reopen copen(s) "
                              "with a poll(2) sleeper: " + "; ".join(c.describe() for c in unwoken[:SHOWN])))

    # a cache death: the device released as often as it was let go, and a new cache bound each time
    if cache is not None and (wrong := cache.failures()):
        reasons.append(Reason(Check.CACHE_DEATH, "; ".join(wrong)))

    # a task SIGKILLed while its READ waits on no daemon goes before the next daemon restores
    if not_killed := [w for w in waiters if w.decided and not w.killable]:
        reasons.append(Reason(Check.KILLABLE_PROBE, f"{len(not_killed)} of {sum(w.decided for w in waiters)} waiter(s): "
                              + "; ".join(w.describe() for w in not_killed[:SHOWN])))

    # an object dropped while the kernel reopens it: the drop ends the reopen's OPEN (its late
    # copen refused) and returns only once the reopen work is done; no reopen work after it
    if dropped_badly := [v for u in reopen_umounts for v in u.violations]:
        reasons.append(Reason(Check.REOPEN_UMOUNT_PROBE, f"{len(dropped_badly)} violation(s): "
                              + "; ".join(dropped_badly[:SHOWN])))

    # what the daemon did, the kernel must accept: a READ_COMPLETE, a copen, a read() of the device
    # refused (EEXIST: an OPEN re-delivered while its anon fd is still open), a request for an
    # object it never opened, a message that does not parse. The readers may never see it (the
    # page cache retries), so it is judged here; errors the scenario's faults cause are not
    # (a `redundant` answer nobody else gave is one of them; `lost` READs are the ledger's to judge)
    errors = list(daemon.errors) + list(misbehaved.unanswered_redundant if misbehaved else ())
    if unexpected := [e for e in errors if e.get("errno") not in th.expected_daemon_errnos]:
        reasons.append(Reason(Check.DAEMON_ERRORS, f"{len(unexpected)} daemon error(s), first {_daemon_error(unexpected[0])}"))

    # what the end of the run left: the readers are done, every mount must go without MNT_DETACH,
    # the cache be withdrawn when the device closes, every anon fd handed out be released
    left = [f"a reader's umount of {u.get('fsid')} failed: {u.get('error')} (errno {u.get('errno')})"
            for u in readers.failed_umounts]
    if end is not None:
        left += end.findings()
        if end.keeper_exited and ledger.available and ledger.anon_fds_unreleased > 0:
            left.append(f"{ledger.anon_fds_unreleased} of {ledger.anon_fds_handed} anon fds handed out by OPENs "
                        "were never released (no fd_release) though every daemon process had exited")
    if left:
        reasons.append(Reason(Check.END_OF_RUN, f"{len(left)} thing(s) left at the end: " + "; ".join(left[:SHOWN])))

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


def kills_in_flight(daemon: DaemonFacts, ledger: Ledger) -> int:
    """Kills that found the daemon holding a request: by the kernel's ledger where there is one
    (the daemon's log matches by msg_id, which a kernel may reuse), else by the daemon's log."""
    if not ledger.available:
        return daemon.kills_in_flight
    return sum(1 for k in daemon.kills if k.death and ledger.held_by(k.death.pid) > 0)


def missing_evidence(daemon: DaemonFacts, trace: TraceFacts, ledger: Ledger, probed: dict[str, ProbeCounts],
                     reads_after_reopen: int, th: Thresholds, end: EndOfRun | None = None,
                     reread: Reread | None = None, misbehaved: MisbehaviourFacts | None = None,
                     state_hits: dict[str, StateHits] | None = None, cache: CacheDeathFacts | None = None,
                     waiters: tuple[Waiter, ...] = (), reopen_umounts: tuple[ReopenUmount, ...] = (),
                     copen_wakes: tuple[CopenWake, ...] = ()) -> list[Reason]:
    needs = th.needs
    missing: list[Reason] = []
    if needs.end_checked and end is not None and reread is not None and not reread.ran:
        missing.append(Reason(Check.END_CHECKED, "the re-read left no marks in the kernel's trace"))
    elif needs.end_checked and reread is not None and reread.files and not reread.opened and ledger.available:
        missing.append(Reason(Check.END_CHECKED, "the re-read's OPENs are not in the kernel's trace: "
                                                 "the READs it needed cannot be counted"))
    if needs.end_checked and end is not None and th.kmemleak and end.leaks is None:
        missing.append(Reason(Check.END_CHECKED, "the debug flavour's end check found no kmemleak to scan"))
    if needs.in_flight_share and daemon.kills:
        in_flight = kills_in_flight(daemon, ledger)
        share = in_flight / len(daemon.kills)
        if share < needs.in_flight_share:
            missing.append(Reason(Check.IN_FLIGHT, f"only {in_flight}/{len(daemon.kills)} kills ({share:.0%}) hit "
                                                  f"a request in flight (need {needs.in_flight_share:.0%}): "
                                                  "the failover path was not exercised"))
    counts = (
        (Check.LEDGER, ledger.lifetimes, needs.deliveries,
         f"requests in the kernel's ledger ({ledger.incomplete or 'kprobe `deliver` events in the trace'})"),
        (Check.REDELIVERED, ledger.redelivered if ledger.available else daemon.redelivered, needs.redelivered,
         "held requests re-delivered after a restore"),
        (Check.FD_CLOSES, daemon.fd_closes, needs.fd_closes, "anon fds closed by the daemon"),
        (Check.REOPENS, len(trace.reopens), needs.reopens,
         "reopens in the kernel trace (anon fd released, then the same object opened again)"),
        (Check.READS_AFTER_REOPEN, reads_after_reopen, needs.reads_after_reopen, "READs delivered on a reopened object"),
        (Check.COPEN_SLEEPERS, sum(c.decided for c in copen_wakes), needs.copen_sleepers,
         "reopens' copens with another task's poll(2) entry on their device"),
    )
    for check, got, need, what in counts:
        if got < need:
            missing.append(Reason(check, f"{what}: {got}, need {need}"))
    if needs.reopen_probes and (short := [f"{k} {probed[k].decided}" for k in probes.ON_REOPENS
                                             if probed[k].decided < needs.reopen_probes]):
        missing.append(Reason(Check.REOPEN_PROBES, f"reopens on which a probe decided: {', '.join(short)}, "
                                                  f"need {needs.reopen_probes} each"))
    if needs.misbehaviours and th.misbehaviours:
        decided = {name: m.decided for name, m in misbehaved.by_name.items()} if misbehaved else {}
        if short := [f"{name} {decided.get(name, 0)}" for name in th.misbehaviours
                     if decided.get(name, 0) < needs.misbehaviours]:
            missing.append(Reason(Check.MISBEHAVIOURS, f"misbehaviours that reached the kernel: {', '.join(short)}, "
                                                      f"need {needs.misbehaviours} each"))
    if needs.state_kill_hits and th.state_kills and state_hits is not None:
        if short := [f"{state} {h.confirmed}/{h.tried}" for state, h in state_hits.items()
                     if h.confirmed < needs.state_kill_hits]:
            missing.append(Reason(Check.STATE_KILLS, f"kills confirmed in their kernel state: {', '.join(short)}, "
                                                    f"need {needs.state_kill_hits} each"))
    if needs.cache_deaths and cache is not None and (ran := sum(d.ran for d in cache.deaths)) < needs.cache_deaths:
        missing.append(Reason(Check.CACHE_DEATHS, f"cache deaths that failed requests and after which a fresh mount "
                                                  f"read a file right: {ran} of {len(cache.deaths)}, need {needs.cache_deaths}"))
    if needs.withdrawal_umounts and cache is not None and \
            (raced := sum(d.umounts_in_withdrawal for d in cache.deaths)) < needs.withdrawal_umounts:
        missing.append(Reason(Check.WITHDRAWAL_UMOUNTS, f"held umounts that raced a dead cache's withdrawal: {raced}, "
                                                       f"need {needs.withdrawal_umounts}"))
    if needs.killed_waiters and (waited := sum(w.decided for w in waiters)) < needs.killed_waiters:
        missing.append(Reason(Check.KILLED_WAITERS, f"waiters SIGKILLed while their READ waited on no daemon: "
                                                   f"{waited} of {len(waiters)}, need {needs.killed_waiters}"))
    if needs.reopen_umounts and (raced := sum(u.decided for u in reopen_umounts)) < needs.reopen_umounts:
        missing.append(Reason(Check.REOPEN_UMOUNTS, f"mounts unmounted while the kernel reopened their object (the "
                                                   f"work running or its OPEN held): {raced} of {len(reopen_umounts)}, "
                                                   f"need {needs.reopen_umounts}"))
    if needs.restore_umounts and (raced := sum(u.decided_in_restore for u in reopen_umounts)) < needs.restore_umounts:
        asked = sum(u.at in AT_RESTORE for u in reopen_umounts)
        missing.append(Reason(Check.RESTORE_UMOUNTS, f"mounts unmounted as a restore marked their reopen's OPEN "
                                                    f"again: {raced} of {asked}, need {needs.restore_umounts}"))
    if needs.crash_point_hits and th.crash_points_planned:
        hits = daemon.crash_points()
        if never := [p for p in CRASH_POINTS if len(hits.get(p, [])) < needs.crash_point_hits]:
            missing.append(Reason(Check.CRASH_POINTS, f"crash points never reached: {', '.join(never)}"))
    return missing


def decide(daemon: DaemonFacts, readers: ReaderFacts, trace: TraceFacts, ledger: Ledger, probed: dict[str, ProbeCounts],
           reads_after_reopen: int, findings: list[Finding], th: Thresholds, aborted: str | None = None,
           end: EndOfRun | None = None, reread: Reread | None = None,
           misbehaved: MisbehaviourFacts | None = None, state_hits: dict[str, StateHits] | None = None,
           cache: CacheDeathFacts | None = None, waiters: tuple[Waiter, ...] = (),
           reopen_umounts: tuple[ReopenUmount, ...] = (), copen_wakes: tuple[CopenWake, ...] = ()) -> Verdict:
    reasons = failures(daemon, readers, ledger, probed, findings, th, aborted, end, reread, misbehaved, cache, waiters,
                       reopen_umounts, copen_wakes)
    missing = missing_evidence(daemon, trace, ledger, probed, reads_after_reopen, th, end, reread, misbehaved,
                               state_hits, cache, waiters, reopen_umounts, copen_wakes)
    status = Status.FAIL if reasons else Status.INCONCLUSIVE if missing else Status.PASS
    return Verdict(status, tuple(reasons), tuple(missing))
