"""results.json as types: the two shapes results.schema.json documents.

`verdict` is a checks.Status value; it is typed `str` because that is what a results.json read
back from disk holds (Status is a str enum, so `results["verdict"] == Status.PASS` compares the
same either way). `failed_checks`, `reason_checks` and `missing_checks` hold checks.Check slugs.
"""
from __future__ import annotations

from typing import Any, NotRequired, TypedDict, TypeGuard, Union

from .. import __version__
from .checks import JUDGED, Status

# results.json's shape, described by results.schema.json beside this file: bump it (and the
# schema's `const`) whenever a field is removed, renamed or changes type or meaning.
# 2: the first documented shape; adds `provenance` (1 also named earlier, undocumented shapes).
# 3: adds `failed_checks`, `reason_checks` and `missing_checks`: the checks, by slug, that the
#    reasons and missing evidence belong to (readers no longer sort the reasons' words).
#    Still 3 with `daemon-errors`: a new check adds a value to the schema's slug enums and
#    changes no field's type or meaning, so no bump: a reader takes a slug it does not know as
#    one more check failed.
# 4: adds `ledger` (the kernel's own account of requests, harness/judge/ledger.py) and `probes`;
#    `kills_in_flight` is counted from the ledger; the check `empty-wakeups` (a count against an
#    allowance) is gone, `epollin-probe` asks the same question at the protocol point.
RESULTS_SCHEMA_VERSION = 4


class _Common(TypedDict):
    schema_version: int
    verdict: str
    reasons: list[str]
    failed_checks: list[str]  # slugs of checks.Check, once each, in Check order
    kernel: dict[str, Any]
    provenance: dict[str, Any] | None
    timing: dict[str, Any]
    request: dict[str, Any]
    reproduce: str
    harness_version: str


class ErrorResults(_Common):
    """ERROR or UNTESTABLE: no verdict on the kernel; `reasons` is the one message."""


class Evidence(TypedDict):
    deaths: int
    restores: int
    restores_failed: int
    redelivered: int
    fd_closes: int
    reopens: int
    reads_after_reopen: int
    empty_reads: int
    trace_events: dict[str, int]
    trace_lost_events: int
    incarnations: int
    requests_answered: dict[str, int]  # opcode -> requests answered
    daemon_errors: int
    daemon_facts_from: NotRequired[str]  # "kernel": the facts above came from the kernel (a foreign daemon); absent: its log
    foreign_daemon: NotRequired[str]  # with it: the daemon's name, from run.json


class Spread(TypedDict):
    n: int
    p50: float | None
    p90: float | None
    max: float | None


class DeathSpread(TypedDict):
    longest_held_wait_s: Spread  # per death: the longest a request it held waited for its answer
    next_answer_s: Spread  # per death: from it to the next answered request


class LedgerSection(TypedDict):
    available: bool  # the trace had the kprobe events
    incomplete: str | None  # why there is no ledger though there are events (the trace lost some)
    requests: int  # request lifetimes delivered
    by_op: dict[str, int]
    queued_reads: int
    abandoned_reads: int
    held_at_death: int
    redelivered: int
    ended_by_kernel: int
    taken_over: int  # answered by the next process before its restore (a supervisor kept the anon fd)
    held_without_restore: int
    most_overtaken: int  # the most messages delivered between a restore and a held request's re-delivery
    restores: int
    drops: int
    unknown_drop_ids: int
    empty_reads: int
    processes: int
    violations: dict[str, int]  # ledger.RULES -> count
    first_violations: list[str]  # each with its blame first: "[kernel] ..." or "[daemon] ..."
    violations_by_blame: dict[str, int]  # ledger.BLAMES -> count
    daemon_log_disagrees: list[str]
    anon_fds_handed: int
    anon_fds_released: int
    per_death: DeathSpread


class EndSection(TypedDict):
    findings: list[str]  # what the end left: failed umounts, the cache never withdrawn, D state, leaks
    reread_files: int  # files read back from the cache files after drop_caches
    reread_opened: int  # objects the re-read opened (OPENs between its trace marks)
    reread_reads_needed: int  # READs delivered for them: data the cache files did not hold
    reread_failures: list[str]
    leaks: int | None  # kmemleak's unreferenced objects; None without kmemleak (the plain flavour)


class ProbeStats(TypedDict):
    ran: int
    decided: int  # on a reopen, and not given up
    held: int
    violations: int


class MisbehaviourStats(TypedDict):
    ran: int  # times the daemon misbehaved so
    decided: int  # of those, times the kernel had to get it right (misbehaviour.py)


class StateKillStats(TypedDict):
    tried: int  # the host armed statekill.py for this state
    killed: int  # it killed a daemon process at it
    confirmed: int  # the trace shows the process died in it (statekills.py)


class ReaderStats(TypedDict):
    bytes_read: int
    files_verified: int
    files_never_verified: int
    mounts: int
    max_latency_s: float | None
    p99_latency_s: float | None
    longest_stall_s: float
    latency_histogram: dict[str, int]


class Recovery(TypedDict):
    mean: float | None
    max: float | None


class CrashPointRow(TypedDict):
    hits: int
    kernel_had_answer: bool
    held_requests: int
    redelivered: int
    restored: int
    served_after: int
    recovery_max_s: float | None


class CacheDeathsSection(TypedDict):
    asked: int
    released: int
    errors_explained: int
    clock_offset_s: float | None
    deaths: list[dict[str, Any]]  # cachedeath.DeathAccount, and whether it ran its course


class CopenWakesSection(TypedDict):
    copens: int  # copens of reopened objects in the trace
    decided: int  # of those, with another task's poll(2) entry on their device's queue
    sleepers: int  # such entries, over the decided copens
    missed: int  # entries the copen's task did not wake
    first_misses: list[str]


class _JudgedOptional(TypedDict, total=False):
    crash_points: dict[str, CrashPointRow]  # when the run had a crash plan
    cache_deaths: CacheDeathsSection  # when the scenario has cache deaths
    killed_waiters: list[dict[str, Any]]  # Fault.KILL_WAITER: killable.Waiter, and whether it went in time
    reopen_umounts: list[dict[str, Any]]  # Fault.UMOUNT_REOPEN: reopenumount.ReopenUmount, and whether it decided
    copen_wakes: CopenWakesSection  # reopens' copens and the poll(2) sleepers they woke; when there were any
    console_tail: str  # when the run was aborted


class Results(_Common, _JudgedOptional):
    """PASS, FAIL or INCONCLUSIVE: judged from the run's evidence."""
    reason_checks: list[str]  # the check of each reason, in the order of `reasons`
    missing_evidence: list[str]
    missing_checks: list[str]  # the evidence check of each missing-evidence line, in its order
    scenario: str | None
    kills: int
    kills_in_flight: int
    in_flight_share: float
    # the host's kills by how statekill.py carried them out (contract.KillGate); {}: sent by the
    # host's shell at the timer's moment
    kill_gates: dict[str, int]
    mismatches: int
    read_errors: int
    max_stall_s: float
    stall_bound_s: float
    evidence: Evidence
    ledger: LedgerSection
    end_of_run: EndSection | None  # None: the run never got to its end check
    probes: dict[str, ProbeStats]  # contract.Probe kind -> its counts
    misbehaviours: dict[str, MisbehaviourStats]  # the scenario's daemon's (misbehaviour.NAMES); {} for most
    state_kills: dict[str, StateKillStats]  # contract.KernelState -> its kills; {} without them
    readers: ReaderStats
    recovery_s: Recovery
    kills_per_minute: float | None
    findings: list[dict[str, Any]]
    deaths: list[dict[str, Any]]
    first_mismatches: list[dict[str, Any]]
    first_read_errors: list[dict[str, Any]]
    stalls: list[dict[str, Any]]
    accel: str | None


AnyResults = Union[Results, ErrorResults]


def is_judged(results: AnyResults) -> TypeGuard[Results]:
    """Whether these are a judged run's results (and not the error shape)."""
    return results["verdict"] in JUDGED


def scenario_of(results: AnyResults) -> str | None:
    """The scenario judged, or for the error shape the one requested."""
    scenario = results["scenario"] if is_judged(results) else None
    return scenario or results["request"].get("scenario")


def error_results(status: Status, message: str, *, request: dict[str, Any], reproduce: str,
                  kernel: dict[str, Any], provenance: dict[str, Any] | None = None,
                  timing: dict[str, Any] | None = None) -> ErrorResults:
    """The error shape: a run that ended before a verdict on the kernel."""
    return {"schema_version": RESULTS_SCHEMA_VERSION, "verdict": Status(status).value, "reasons": [message],
            "failed_checks": [], "kernel": kernel, "provenance": provenance, "timing": timing or {},
            "request": request, "reproduce": reproduce, "harness_version": __version__}
