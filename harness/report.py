"""A run directory in, results.json and summary.txt out.

Everything here is computed from what the run left on disk (`run.json`, the logs, console.log),
so `failover-harness report DIR` re-judges a saved run with the current rules.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from . import __version__, console, evidence, verdict

RESULTS_SCHEMA_VERSION = 1


def evaluate(run_dir: Path) -> dict:
    meta = json.loads((run_dir / "run.json").read_text())
    logs = evidence.RunLogs.load(run_dir)
    daemon = evidence.daemon_facts(logs.keeper, logs.daemon, logs.host_kills)
    readers = evidence.reader_facts(logs.readers, logs.manifest)
    findings = console.scan_file(run_dir / "console.log")
    th = verdict.Thresholds(kills_requested=meta["request"]["kills"],
                            stall_bound_s=meta["timeouts"]["stall_bound"])
    aborted = meta.get("aborted")
    if aborted is None and readers.readers_finished < readers.readers_started:
        aborted = f"{readers.readers_started - readers.readers_finished} reader(s) never finished"
    v = verdict.decide(daemon, readers, findings, th, aborted)

    kills = len(daemon.kills)
    recoveries = [k.recovery_s for k in daemon.kills if k.recovery_s is not None]
    loop_s = meta.get("timing", {}).get("kill_loop_s")
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "verdict": v.status,
        "reasons": list(v.reasons),
        "kills": kills,
        "kills_in_flight": daemon.kills_in_flight,
        "in_flight_share": round(daemon.kills_in_flight / kills, 3) if kills else 0.0,
        "redelivered": daemon.redelivered,
        "restores": daemon.restores_ok,
        "restores_failed": daemon.restores_failed,
        "incarnations": daemon.incarnations,
        "requests_answered": daemon.answered,
        "empty_reads": daemon.empty_reads,
        "daemon_errors": len(daemon.errors),
        "mismatches": len(readers.mismatches),
        "read_errors": len(readers.read_errors),
        "max_stall_s": readers.max_stall_s,
        "stall_bound_s": th.stall_bound_s,
        "files_verified": readers.files_verified,
        "files_never_verified": len(readers.never_verified),
        "bytes_read": readers.bytes_read,
        "mounts": readers.mounts,
        "recovery_s": {"mean": round(statistics.mean(recoveries), 3) if recoveries else None,
                       "max": max(recoveries) if recoveries else None},
        "kills_per_minute": round(kills / loop_s * 60, 1) if loop_s else None,
        "findings": [asdict(f) for f in findings],
        "kill_log": [asdict(k) for k in daemon.kills],
        "first_mismatches": list(readers.mismatches[:5]),
        "first_read_errors": list(readers.read_errors[:5]),
        "stalls": list(readers.stalls[:5]),
        "kernel": meta.get("kernel", {}),
        "accel": meta.get("accel"),
        "timing": meta.get("timing", {}),
        "request": meta["request"],
        "reproduce": meta["reproduce"],
        "harness_version": __version__,
    }
    if aborted:
        results["console_tail"] = console.tail(run_dir / "console.log")
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (run_dir / "summary.txt").write_text(summary(results))
    return results


def write_error(run_dir: Path, meta: dict, status: str, message: str) -> None:
    """No verdict on the kernel: the input was wrong (ERROR) or it could not be tested."""
    results = {"schema_version": RESULTS_SCHEMA_VERSION, "verdict": status, "reasons": [message],
               "kernel": meta.get("kernel", {}), "timing": meta.get("timing", {}),
               "request": meta["request"], "reproduce": meta["reproduce"], "harness_version": __version__}
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (run_dir / "summary.txt").write_text(f"{status}: {message}\n  reproduce: {meta['reproduce']}\n")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def summary(r: dict) -> str:
    t = r["timing"]
    lines = [
        f"{r['verdict']}: cachefiles on-demand failover, {r['request']['mode']} mode, "
        f"kernel {r['kernel'].get('version', '?')} ({r['kernel'].get('source', '?')}), {r['accel']}",
        f"  kills {r['kills']}, on a request in flight {r['kills_in_flight']} ({r['in_flight_share']:.0%}), "
        f"re-delivered after restore {r['redelivered']}, restores {r['restores']}",
        f"  reads: {r['files_verified']} files verified ({r['bytes_read'] / 1e6:.1f} MB), "
        f"{r['mismatches']} mismatches, {r['read_errors']} errors, "
        f"max stall {r['max_stall_s']:.2f}s (bound {r['stall_bound_s']:.0f}s)",
        f"  daemon: {r['incarnations']} incarnations, answered {r['requests_answered']}, "
        f"empty wake-ups {r['empty_reads']}, recovery after a kill: mean {_seconds(r['recovery_s']['mean'])}, "
        f"max {_seconds(r['recovery_s']['max'])}",
        f"  time: build {t.get('build_s', 0):.0f}s{' (reused)' if t.get('build_reused') else ''}, "
        f"boot {t.get('boot_s', 0):.1f}s, kill loop {t.get('kill_loop_s', 0):.0f}s "
        f"({r['kills_per_minute']} kills/min), total {t.get('total_s', 0):.0f}s",
        f"  findings on the console: {len(r['findings'])}",
    ]
    lines += [f"  - {reason}" for reason in r["reasons"]]
    lines.append(f"  reproduce: {r['reproduce']}")
    return "\n".join(lines) + "\n"
