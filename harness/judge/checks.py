"""What a run can be judged, named once: its status, and every check a verdict can fail on or
evidence a scenario can miss.

Everything that reports a verdict (results.json, JUnit, Markdown, mutate, bisect) reads these,
never the English of the reasons: a reason's words may change, its check does not. A check's
slug is its stable name in results.json (`failed_checks`, `missing_checks`) and in the mutants'
`Mutant-Expect:` trailers; its JUnit case name is kept as dashboards have known it, so that a
check's history stays continuous.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable

from ..errors import EXIT_FAIL, EXIT_PASS, EXIT_UNTESTABLE


class Status(str, Enum):
    """A run's verdict. PASS, FAIL and INCONCLUSIVE judge the kernel; ERROR (bad input) and
    UNTESTABLE (could not build or boot) say it could not be judged."""
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    ERROR = "ERROR"
    UNTESTABLE = "UNTESTABLE"

    def __str__(self) -> str:  # the value in f-strings and format(), on every Python version
        return self.value

    @property
    def judged(self) -> bool:
        """Whether the kernel was judged (the run completed enough to have evidence)."""
        return self in JUDGED

    @property
    def exit_code(self) -> int:
        """INCONCLUSIVE is neither good nor bad: what `git bisect run` skips, like UNTESTABLE."""
        return {Status.PASS: EXIT_PASS, Status.FAIL: EXIT_FAIL}.get(self, EXIT_UNTESTABLE)


JUDGED = frozenset({Status.PASS, Status.FAIL, Status.INCONCLUSIVE})


class Check(Enum):
    """A check a verdict fails on (`need` is None) or evidence a scenario needs (`need` names the
    field of scenarios.Needs that asks for it). Declaration order is report order."""
    _value_: str
    case: str
    need: str | None

    def __new__(cls, slug: str, case: str, need: str | None = None) -> Check:
        member = object.__new__(cls)
        member._value_ = slug
        member.case = case
        member.need = need
        return member

    # the data
    CHECKSUM = ("checksum", "data: checksums")
    READ_ERROR = ("read-error", "data: read errors")
    STALL = ("stall", "data: stalls")
    REREAD = ("reread", "data: read back from the cache files after drop_caches")
    # the failover
    KILLS = ("kills", "failover: every kill killed the daemon")
    RECOVERY = ("recovery", "failover: every death restored and served again")
    HELD_REQUESTS = ("held-requests", "failover: held requests re-delivered")
    # the kernel's ledger of requests (ledger.py) and the daemon's probes (probes.py)
    DOUBLE_DELIVERY = ("double-delivery", "ledger: no request delivered twice without a restore")
    UNANSWERED = ("unanswered", "ledger: every request answered or ended by the kernel")
    READ_ON_CLOSED = ("read-on-closed", "ledger: no READ delivered for a closed object")
    EPOLLIN_PROBE = ("epollin-probe", "probe: a reopening READ raises no EPOLLIN")
    WAKEUP_PROBE = ("wakeup-probe", "probe: a reopen's copen wakes the daemon")
    STALE_PROBE = ("stale-answer-probe", "probe: a late answer is refused and no msg_id is reused")
    CLOSE_COPEN_PROBE = ("close-copen-probe", "probe: an anon fd closed around its copen gets no READ")
    SECOND_FD_PROBE = ("second-fd-probe", "probe: no OPEN for an object whose anon fd is held open")
    LATE_WRITE_PROBE = ("late-write-probe", "probe: an anon fd written after its object's CLOSE is refused (ENOBUFS)")
    KILLABLE_PROBE = ("killable-probe", "probe: a task SIGKILLed while its READ waits on no daemon goes before the "
                      "next daemon restores")
    REOPEN_UMOUNT_PROBE = ("reopen-umount-probe", "probe: an object dropped under its reopen work ends its OPEN and "
                           "waits for the work")
    # the kernel's trace, for any daemon (copenwake.py)
    COPEN_WAKE = ("copen-wake", "trace: a reopen's copen wakes every poll(2) sleeper on its device")
    CACHE_DEATH = ("cache-death", "cache: every death released the device and a new cache was bound")
    DAEMON_ERRORS = ("daemon-errors", "daemon: every answer accepted by the kernel")
    RUN_COMPLETED = ("run-completed", "run: completed")
    END_OF_RUN = ("end-of-run", "run: the end leaves nothing behind")
    # the kernel: JUnit also gives each finding a case of its own
    SPLAT = ("splat", "kernel: console")
    # the evidence a scenario needs
    LEDGER = ("ledger", "evidence: the kernel's ledger of requests", "deliveries")
    IN_FLIGHT = ("in-flight", "evidence: kills on a request in flight", "in_flight_share")
    REDELIVERED = ("redelivered", "evidence: held requests re-delivered", "redelivered")
    FD_CLOSES = ("fd-closes", "evidence: anon fds closed", "fd_closes")
    REOPENS = ("reopens", "evidence: reopens in the kernel trace", "reopens")
    READS_AFTER_REOPEN = ("reads-after-reopen", "evidence: READs on reopened objects", "reads_after_reopen")
    CRASH_POINTS = ("crash-points", "evidence: every crash point reached", "crash_point_hits")
    COPEN_SLEEPERS = ("copen-sleepers", "evidence: reopens' copens with a poll(2) sleeper on their device",
                      "copen_sleepers")
    REOPEN_PROBES = ("reopen-probes", "evidence: the patch-4 probe asked on reopens", "reopen_probes")
    CACHE_DEATHS = ("cache-deaths", "evidence: cache deaths that failed requests, then fresh mounts read right",
                    "cache_deaths")
    WITHDRAWAL_UMOUNTS = ("withdrawal-umounts", "evidence: umounts racing a dead cache's withdrawal",
                          "withdrawal_umounts")
    KILLED_WAITERS = ("killed-waiters", "evidence: waiters SIGKILLed while their READ waited on no daemon",
                      "killed_waiters")
    REOPEN_UMOUNTS = ("reopen-umounts", "evidence: mounts unmounted while the kernel reopened their object",
                      "reopen_umounts")
    RESTORE_UMOUNTS = ("restore-umounts", "evidence: mounts unmounted as a restore marked their reopen's OPEN again",
                       "restore_umounts")
    STATE_KILLS = ("state-kills", "evidence: kills at every kernel state, confirmed by the trace", "state_kill_hits")
    MISBEHAVIOURS = ("misbehaviours", "evidence: every misbehaviour of the daemon reached the kernel", "misbehaviours")
    END_CHECKED = ("end-checked", "evidence: the end of the run checked (re-read, kmemleak)", "end_checked")

    @property
    def slug(self) -> str:
        return self._value_

    @property
    def is_evidence(self) -> bool:
        return self.need is not None


BY_SLUG = {c.slug: c for c in Check}
VERDICT_CHECKS = tuple(c for c in Check if not c.is_evidence)
EVIDENCE_CHECKS = tuple(c for c in Check if c.is_evidence)


@dataclass(frozen=True)
class Reason:
    """Why a run failed (or which evidence it lacks): the check, and the words for a person."""
    check: Check
    text: str


def by_slug(slug: str) -> Check:
    """The check a slug names; ValueError for a slug no check has."""
    if (check := BY_SLUG.get(slug)) is None:
        raise ValueError(f"{slug!r} is not a check (one of {', '.join(BY_SLUG)})")
    return check


def slugs(checks: Iterable[Check]) -> list[str]:
    """The checks' slugs, once each, in Check order."""
    present = set(checks)
    return [c.slug for c in Check if c in present]
