"""Facts in, verdict out: PASS only when every rule holds, else FAIL with every reason."""
from __future__ import annotations

from dataclasses import dataclass

from .console import Finding
from .evidence import DaemonFacts, ReaderFacts

PASS = "PASS"
FAIL = "FAIL"
UNTESTABLE = "UNTESTABLE"


@dataclass(frozen=True)
class Thresholds:
    kills_requested: int
    stall_bound_s: float
    min_in_flight_share: float = 0.8


@dataclass(frozen=True)
class Verdict:
    status: str
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.status == PASS


def decide(daemon: DaemonFacts, readers: ReaderFacts, findings: list[Finding], th: Thresholds,
           aborted: str | None = None) -> Verdict:
    reasons: list[str] = []
    if aborted:
        reasons.append(f"run aborted: {aborted}")

    # the data
    if readers.files_verified == 0:
        reasons.append("no file was read back correctly")
    if readers.mismatches:
        m = readers.mismatches[0]
        reasons.append(f"{len(readers.mismatches)} checksum mismatch(es), first {m.get('image')}/{m.get('path')}")
    if readers.read_errors:
        e = readers.read_errors[0]
        reasons.append(f"{len(readers.read_errors)} read error(s), first {e.get('stage')} "
                       f"{e.get('fsid')}/{e.get('path')}: {e.get('error')} (errno {e.get('errno')})")
    if readers.max_stall_s > th.stall_bound_s:
        reasons.append(f"a read stalled {readers.max_stall_s:.1f}s (bound {th.stall_bound_s:.0f}s)")
    if readers.never_verified:
        reasons.append(f"{len(readers.never_verified)} file(s) never read back correctly, first {readers.never_verified[0]}")

    # the failover
    kills = daemon.kills
    landed = [k for k in kills if k.incarnation is not None]
    if len(kills) < th.kills_requested:
        reasons.append(f"only {len(kills)} of {th.kills_requested} kills were made")
    if len(landed) < len(kills):
        reasons.append(f"{len(kills) - len(landed)} kill(s) did not kill a daemon incarnation")
    if not_restored := [k.index for k in landed if not k.restored]:
        reasons.append(f"{len(not_restored)} kill(s) not followed by a successful restore, first kill #{not_restored[0]}")
    if not_served := [k.index for k in landed if k.restored and not k.served_after]:
        reasons.append(f"{len(not_served)} kill(s) not followed by requests served again, first kill #{not_served[0]}")
    if kills:
        share = daemon.kills_in_flight / len(kills)
        if share < th.min_in_flight_share:
            reasons.append(f"only {daemon.kills_in_flight}/{len(kills)} kills ({share:.0%}) hit a request "
                           f"in flight (need {th.min_in_flight_share:.0%}): the failover path was not exercised")

    # the kernel
    if findings:
        kinds = sorted({f.kind for f in findings})
        reasons.append(f"kernel console: {len(findings)} finding(s) ({', '.join(kinds)}), first: {findings[0].text}")

    return Verdict(FAIL if reasons else PASS, tuple(reasons))
