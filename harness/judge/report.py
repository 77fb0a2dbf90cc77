"""A run directory in, results.json and summary.txt out.

Everything here is computed from what the run left on disk (`run.json`, the logs, the trace,
console.log), so `failover-harness report DIR` re-judges a saved run with the current rules.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import __version__
from . import (cachedeath, console, copenwake, evidence, junit, kernelfacts, killable, ledger, markdown, misbehaviour, probes,
               reopenumount, reread, statekills, trace, verdict)
from .checks import Status, slugs
from .results import (RESULTS_SCHEMA_VERSION, AnyResults, CacheDeathsSection, CopenWakesSection, CrashPointRow, DeathSpread, EndSection,
                      LedgerSection, Results, Spread, error_results)
from guest_scripts.contract import EndOfRun, Event, KillGate
from ..scenarios import CRASH_POINTS, UNANSWERED_POINTS, Needs, expected_daemon_errnos

__all__ = ["RESULTS_SCHEMA_VERSION", "SCHEMA_FILE", "evaluate", "foreign_daemon", "summary", "write_error",
           "write_outputs"]
SCHEMA_FILE = Path(__file__).resolve().parent / "results.schema.json"
FACTS_FROM_KERNEL = "kernel"  # results.json evidence.daemon_facts_from: the daemon's facts are the kernel's


def foreign_daemon(meta: dict[str, Any]) -> str | None:
    """The name of the run's daemon when run.json says it is foreign (`"daemon": {"name": ...,
    "foreign": true}`): its log cannot be relied on. None for ours (the key absent, or not foreign)."""
    daemon = meta.get("daemon")
    if not isinstance(daemon, dict) or daemon.get("foreign") is not True:
        return None
    return str(daemon.get("name") or "?")


def _crash_point_table(daemon: evidence.DaemonFacts) -> dict[str, CrashPointRow]:
    hits = daemon.crash_points()
    table: dict[str, CrashPointRow] = {}
    for point in CRASH_POINTS:
        deaths = hits.get(point, [])
        table[point] = {
            "hits": len(deaths),
            "kernel_had_answer": point not in UNANSWERED_POINTS,
            "held_requests": sum(len(d.held) for d in deaths),
            "redelivered": sum(len(d.redelivered) for d in deaths),
            "restored": sum(d.restored for d in deaths),
            "served_after": sum(d.served_after for d in deaths),
            "recovery_max_s": max((d.recovery_s for d in deaths if d.recovery_s is not None), default=None),
        }
    return table


def spread(values: list[float]) -> Spread:
    """n, p50, p90 and max, by the nearest rank (results.json's spreads; the benchmark's too)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "max": round(ordered[-1], 3)}


def _distribution_of_deaths(lg: ledger.Ledger) -> DeathSpread:
    """What each daemon death cost, as the kernel saw it: the longest a request it held waited for
    its answer (first delivery to answer), and the time from the death to the next answer."""
    dead = [p for p in lg.processes if p.died_ts is not None]
    return {"longest_held_wait_s": spread([p.longest_wait_s for p in dead if p.longest_wait_s is not None]),
            "next_answer_s": spread([p.next_answer_s for p in dead if p.next_answer_s is not None])}


def _ledger_section(lg: ledger.Ledger, disagreements: list[str]) -> LedgerSection:
    return {
        "available": lg.available,
        "incomplete": lg.incomplete,
        "requests": lg.lifetimes,
        "by_op": lg.by_op,
        "queued_reads": lg.queued_reads,
        "abandoned_reads": lg.abandoned_reads,
        "held_at_death": lg.held,
        "redelivered": lg.redelivered,
        "ended_by_kernel": sum(p.ended_by_kernel for p in lg.processes),
        "taken_over": sum(p.taken_over for p in lg.processes),
        "held_without_restore": sum(p.no_restore for p in lg.processes),
        "most_overtaken": max((p.most_overtaken for p in lg.processes), default=0),
        "restores": len(lg.restores),
        "drops": lg.drops,
        "unknown_drop_ids": lg.unknown_drop_ids,
        "empty_reads": sum(p.empty_reads for p in lg.processes),
        "processes": len(lg.processes),
        "violations": {rule: len(lg.of_rule(rule)) for rule in ledger.RULES},
        "first_violations": [str(v) for v in lg.violations[:10]],
        "violations_by_blame": {blame: sum(1 for v in lg.violations if v.blame == blame) for blame in ledger.BLAMES},
        "daemon_log_disagrees": disagreements[:10],
        "per_death": _distribution_of_deaths(lg),
        "anon_fds_handed": lg.anon_fds_handed,
        "anon_fds_released": lg.anon_fds_released,
    }


def _end_section(end: EndOfRun | None, read_back: reread.Reread) -> EndSection | None:
    if end is None:
        return None
    return {"findings": end.findings(), "reread_files": read_back.files, "reread_opened": read_back.opened,
            "reread_reads_needed": len(read_back.reads_needed), "reread_failures": read_back.failures(),
            "leaks": None if end.leaks is None else len(end.leaks)}


def evaluate(run_dir: Path) -> Results:
    """Judge the run in `run_dir` and write its outputs. The daemon's incarnations, deaths and kills
    come from its and the keeper's logs; a run whose daemon run.json calls foreign (foreign_daemon:
    `--daemon` another than ours) takes them from the kernel's trace and ledger instead
    (kernelfacts.py: "a daemon's own log, where there is one, is only a cross-check")."""
    meta = json.loads((run_dir / "run.json").read_text())
    scenario = meta.get("scenario", {})
    logs = evidence.RunLogs.load(run_dir)
    foreign = foreign_daemon(meta)
    stopped_early = meta.get("timing", {}).get("faults_stopped_early")  # decided once a probe failed
    readers = evidence.reader_facts(logs.readers, logs.manifest)
    if stopped_early:
        # decided early, its readers were killed before they read every file once: a file not yet
        # read is no file read wrong (a mismatch still is)
        readers = replace(readers, never_verified=())
    trace_events = trace.parse(logs.trace)
    kernel_trace = trace.facts(trace_events, logs.trace_lost)
    # an incomplete trace (a ring buffer overrun, a kprobe that missed hits) makes no ledger: its
    # rules would read a lost event as a lost request; copenwake's own probes do not count
    # against it, nor against copenwake the misses it can do without (trace.COPEN_WAKE_PROBES)
    missed = sum(n for probe, n in logs.kprobe_missed.items() if probe not in trace.COPEN_WAKE_PROBES)
    lost = [what for what, n in (("the ring buffer overran", logs.trace_lost),
                                 (f"the kprobes missed {missed} hit(s)", missed)) if n]
    copen_wakes_complete = not logs.trace_lost and not any(
        n for probe, n in logs.kprobe_missed.items() if probe not in trace.NEVER_THE_COPENS_MISSES)
    unmounted = reopenumount.judge(logs.keeper, trace_events, complete=not lost)
    kernel_ledger = ledger.build(trace_events, "; ".join(lost) or None,
                                 frozenset(u.debug_id for u in unmounted if u.restored and u.debug_id is not None))
    daemon = (kernelfacts.daemon_facts_from_kernel(trace_events, kernel_ledger, logs.host_kills) if foreign is not None
              else evidence.daemon_facts(logs.keeper, logs.daemon, logs.host_kills))
    # no ledger (events lost): nothing is known of another daemon's incarnations, so no kill can be
    # matched to a death; the missing ledger makes the run INCONCLUSIVE, not each kill a FAIL
    unknowable_kills = foreign is not None and not kernel_ledger.available
    if unknowable_kills:
        daemon = replace(daemon, kills=())
    probed = probes.probe_counts(logs.daemon)
    # the ledger's cross-check: the daemon's own log of what it received, by process (another
    # daemon's where its adapter names one, none if it does not)
    own_log = logs.daemon if foreign is None else evidence.read_jsonl(run_dir / "guest" / str(meta["daemon"].get("log") or "-"))
    recv_by_pid = Counter(e.get("pid", -1) for e in own_log if e.get("event") == Event.RECV)
    # READs on reopened objects: our daemon's log tells them by object id; another daemon's run by
    # the kernel's ledger alone
    reads_after_reopen = (trace.reads_after_reopens(logs.daemon) if foreign is None
                          else kernel_ledger.reads_after_reopen)
    findings = console.scan_file(run_dir / "console.log")
    # a run whose faults stopped early once a probe had failed (decided) asked for the kills it made
    kills_requested = (0 if unknowable_kills else len(logs.host_kills) if stopped_early
                       else scenario.get("kills", 0))
    th = verdict.Thresholds(kills_requested=kills_requested,
                            stall_bound_s=meta["timeouts"]["stall_bound"],
                            needs=Needs(**scenario.get("needs", {})),
                            crash_points_planned=len(meta.get("crash_plan", {})),
                            expected_daemon_errnos=expected_daemon_errnos(scenario),
                            kmemleak=meta["request"].get("flavor") == "debug",
                            misbehaviours=misbehaviour.expected(scenario),
                            state_kills=bool(scenario.get("state_kills")))
    state_hits = statekills.hits(logs.faults, trace_events) if th.state_kills else {}
    misbehaved = misbehaviour.facts(logs.daemon)
    read_back = reread.judge(logs.end_of_run, logs.manifest, trace_events)
    # only the deaths the scenario asks for explain errors (no-failover's cache dies too: a FAIL)
    cache = (cachedeath.judge(kernel_ledger.cache_deaths, trace_events, logs.readers, logs.keeper)
             if scenario.get("cache_deaths") else None)
    waiters = killable.judge(logs.keeper, trace_events)
    copen_wakes = copenwake.judge(trace_events, complete=copen_wakes_complete)
    aborted = meta.get("aborted")
    # (a run decided early does not wait for its readers: the drain kills them)
    if (aborted is None and readers.readers_finished < readers.readers_started
            and not stopped_early):
        aborted = f"{readers.readers_started - readers.readers_finished} reader(s) never finished"
    v = verdict.decide(daemon, readers, kernel_trace, kernel_ledger, probed, reads_after_reopen, findings, th, aborted,
                       logs.end_of_run, read_back, misbehaved, state_hits, cache, waiters, unmounted, copen_wakes)
    in_flight = verdict.kills_in_flight(daemon, kernel_ledger)

    kills = len(daemon.kills)
    recoveries = [d.recovery_s for d in daemon.deaths if d.recovery_s is not None]
    loop_s = meta.get("timing", {}).get("fault_loop_s")
    results: Results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "verdict": v.status.value,
        "reasons": [r.text for r in v.reasons],
        "failed_checks": slugs(r.check for r in v.reasons),
        "reason_checks": [r.check.slug for r in v.reasons],
        "missing_evidence": [m.text for m in v.missing],
        "missing_checks": [m.check.slug for m in v.missing],
        "scenario": scenario.get("name"),
        "kills": kills,
        "kills_in_flight": in_flight,
        "in_flight_share": round(in_flight / kills, 3) if kills else 0.0,
        "kill_gates": dict(Counter(str(f["gate"]) for f in logs.faults if f.get("gate"))),
        "mismatches": len(readers.mismatches),
        "read_errors": len(readers.read_errors),
        "max_stall_s": readers.max_stall_s,
        "stall_bound_s": th.stall_bound_s,
        "evidence": {
            "deaths": len(daemon.deaths),
            "restores": daemon.restores_ok,
            "restores_failed": daemon.restores_failed,
            # from the kernel's ledger where there is one (the daemon's log matches by msg_id)
            "redelivered": kernel_ledger.redelivered if kernel_ledger.available else daemon.redelivered,
            "fd_closes": daemon.fd_closes,
            "reopens": len(kernel_trace.reopens),
            "reads_after_reopen": reads_after_reopen,
            "empty_reads": daemon.empty_reads,  # spurious wake-ups: what patch 4 narrowed
            "trace_events": kernel_trace.counts,
            "trace_lost_events": kernel_trace.lost,
            "incarnations": daemon.incarnations,
            "requests_answered": daemon.answered,
            "daemon_errors": len(daemon.errors),
        },
        "ledger": _ledger_section(kernel_ledger, ledger.disagreements(kernel_ledger, dict(recv_by_pid))
                                  if foreign is None or own_log else []),
        "end_of_run": _end_section(logs.end_of_run, read_back),
        "probes": {kind: {"ran": c.ran, "decided": c.decided, "held": c.held, "violations": len(c.violations)}
                   for kind, c in probed.items()},
        "misbehaviours": {name: {"ran": m.ran, "decided": m.decided} for name, m in misbehaved.by_name.items()
                          if name in th.misbehaviours},
        "state_kills": {state: {"tried": h.tried, "killed": h.killed, "confirmed": h.confirmed}
                        for state, h in state_hits.items()},
        "readers": {
            "bytes_read": readers.bytes_read,
            "files_verified": readers.files_verified,
            "files_never_verified": len(readers.never_verified),
            "mounts": readers.mounts,
            "max_latency_s": readers.max_latency_s,
            "p99_latency_s": readers.p99_latency_s,
            "longest_stall_s": readers.max_stall_s,
            "latency_histogram": readers.latency_histogram,
        },
        "recovery_s": {"mean": round(statistics.mean(recoveries), 3) if recoveries else None,
                       "max": max(recoveries) if recoveries else None},
        "kills_per_minute": round(kills / loop_s * 60, 1) if loop_s and kills else None,
        "findings": [asdict(f) for f in findings],
        "deaths": [asdict(d) for d in daemon.deaths],
        "first_mismatches": list(readers.mismatches[:5]),
        "first_read_errors": list(readers.read_errors[:5]),
        "stalls": list(readers.stalls[:5]),
        "kernel": meta.get("kernel", {}),
        "provenance": meta.get("provenance"),
        "accel": meta.get("accel"),
        "timing": meta.get("timing", {}),
        "request": meta["request"],
        "reproduce": meta["reproduce"],
        "harness_version": __version__,
    }
    if foreign is not None:
        results["evidence"]["daemon_facts_from"] = FACTS_FROM_KERNEL
        results["evidence"]["foreign_daemon"] = foreign
    if meta.get("crash_plan"):
        results["crash_points"] = _crash_point_table(daemon)
    if cache is not None:
        results["cache_deaths"] = {"asked": cache.asked, "released": cache.released,
                                   "errors_explained": len(cache.explained), "clock_offset_s": cache.clock_offset_s,
                                   "deaths": [{**asdict(d), "ran": d.ran} for d in cache.deaths]}
    if waiters:
        results["killed_waiters"] = [{**asdict(w), "decided": w.decided, "killable": w.killable} for w in waiters]
    if unmounted:
        results["reopen_umounts"] = [{**asdict(u), "violations": list(u.violations), "decided": u.decided}
                                     for u in unmounted]
    if copen_wakes:
        decided = [c for c in copen_wakes if c.decided]
        results["copen_wakes"] = {"copens": len(copen_wakes), "decided": len(decided),
                                  "sleepers": sum(len(c.sleepers) for c in decided),
                                  "missed": sum(len(c.missed) for c in decided),
                                  "first_misses": [c.describe() for c in decided if c.missed][:verdict.SHOWN]}
    if aborted:
        results["console_tail"] = console.tail(run_dir / "console.log")
    write_outputs(run_dir, results, summary(results))
    return results


def write_outputs(run_dir: Path, results: AnyResults, summary_text: str) -> None:
    """Everything judged, in every form: results.json for machines, summary.txt for a person,
    junit.xml for a CI dashboard, report.md for a job summary or a reply on a mailing list."""
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (run_dir / "summary.txt").write_text(summary_text)
    (run_dir / "junit.xml").write_text(junit.render(results))
    (run_dir / "report.md").write_text(markdown.render([results]))


def write_error(run_dir: Path, meta: dict[str, Any], status: Status, message: str) -> None:
    """No verdict on the kernel: the input was wrong (ERROR) or it could not be tested."""
    results = error_results(status, message, request=meta["request"], reproduce=meta["reproduce"],
                            kernel=meta.get("kernel", {}), provenance=meta.get("provenance"),
                            timing=meta.get("timing", {}))
    write_outputs(run_dir, results, f"{status}: {message}\n  reproduce: {meta['reproduce']}\n")


# how each gated kill met its target, as the summary says it
GATE_WORDS = {KillGate.HELD: "killed holding a request", KillGate.DELIVERY: "at the next delivery",
              KillGate.TIMEOUT: "idle at the gate's bound"}


def _gates(gates: dict[str, int]) -> str:
    """How the gated kills met their target (contract.KillGate), in the gates' order."""
    return ", ".join(f"{gates[g]} {GATE_WORDS[g]}" for g in GATE_WORDS if gates.get(g))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _series_lines(prov: dict[str, Any] | None) -> list[str]:
    if not prov or not prov.get("patches"):
        return []
    counts = Counter(p["status"] for p in prov["patches"])
    base = (prov.get("base") or {}).get("describe") or "?"
    return [f"  series: {counts['applied']} applied, {counts['already-present']} already present, on {base}"
            f" -> {(prov.get('head') or '?')[:12]}"]


def _taken_over(lg: LedgerSection) -> str:
    return f"{lg['taken_over']} answered by the next process before its restore, " if lg["taken_over"] else ""


def _blames(lg: LedgerSection) -> str:
    by = {blame: n for blame, n in lg.get("violations_by_blame", {}).items() if n}
    return f" ({', '.join(f'{blame} {n}' for blame, n in by.items())})" if by else ""


def _ledger_line(lg: LedgerSection) -> str:
    if not lg["available"]:
        return f"  kernel ledger: none ({lg['incomplete'] or 'no kprobe events in the trace'})"
    line = (f"  kernel ledger: {lg['requests']} requests delivered to {lg['processes']} daemon processes, "
            f"{lg['held_at_death']} held at a death, {lg['redelivered']} re-delivered after a restore, "
            f"{lg['ended_by_kernel']} ended by the kernel, {_taken_over(lg)}{lg['held_without_restore']} with no restore after "
            f"(one waited behind {lg['most_overtaken']} newer messages); "
            f"{sum(lg['violations'].values())} violations{_blames(lg)}")
    held, nxt = lg["per_death"]["longest_held_wait_s"], lg["per_death"]["next_answer_s"]
    if nxt["n"]:
        line += (f"\n  per death ({nxt['n']}): next answer p50 {nxt['p50']}s p90 {nxt['p90']}s max {nxt['max']}s; "
                 f"longest held request's wait p50 {held['p50']}s p90 {held['p90']}s max {held['max']}s")
    return line + "".join(f"\n    daemon log disagrees: {d}" for d in lg["daemon_log_disagrees"])


def _cache_deaths_line(c: CacheDeathsSection) -> str:
    deaths = c["deaths"]

    def each(key: str, fmt: str = "{}") -> str:
        return ", ".join(fmt.format(d[key]) for d in deaths)
    return (f"  cache deaths: {c['asked']} asked, {c['released']} released by the kernel, {len(deaths)} rebound "
            f"(after {each('rebound_s', '{:.2f}')} s); requests failed with them {each('flushed')}; "
            f"reader errors they explain {each('explained')}; withdrawals took {each('withdrawal_s')} s, "
            f"held umounts racing them {each('umounts_in_withdrawal')}, mounts {each('mounts_in_withdrawal')}; "
            f"{sum(d['ran'] for d in deaths)} ran their course (requests failed, then a fresh mount read right)")


def _waiters_line(waiters: list[dict[str, Any]]) -> str:
    decided = [w for w in waiters if w["decided"]]
    gone = [f"{w['restore_ts'] - w['exit_ts']:.2f}" for w in decided if w["killable"] and w["restore_ts"] is not None]
    return (f"  waiters SIGKILLed on no daemon: {len(waiters)}, their READ queued {len(decided)}, gone before the next "
            f"restore {sum(w['killable'] for w in decided)} (by {', '.join(gone) or '-'} s)")


def _reopen_umounts_line(unmounted: list[dict[str, Any]]) -> str:
    states = Counter(u["state"] for u in unmounted)
    took = [f"{u['drop_end'] - u['drop_start']:.3f}" for u in unmounted if u["decided"]]
    in_restore = sum(u["decided"] and u["restored"] for u in unmounted)
    return (f"  mounts unmounted as their object reopened: {len(unmounted)}; the drop met "
            + ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
            + f" ({in_restore} after a restore); drops that raced the reopen took {', '.join(took) or '-'} s; "
            f"{sum(len(u['violations']) for u in unmounted)} violations")


def _copen_wakes_line(w: CopenWakesSection) -> str:
    return (f"  reopens' copens: {w['copens']}, with a poll(2) sleeper on their device {w['decided']}; sleepers woken "
            f"{w['sleepers'] - w['missed']} of {w['sleepers']}")


def _end_line(end: EndSection | None) -> str:
    if end is None:
        return "  end of run: not checked (the run never got there)"
    leaks = "no kmemleak" if end["leaks"] is None else f"{end['leaks']} kmemleak leak(s)"
    return (f"  end of run: {end['reread_files']} files read back from the cache files after drop_caches "
            f"({end['reread_opened']} objects opened, {end['reread_reads_needed']} READs needed); "
            f"{len(end['findings'])} thing(s) left; {leaks}")


def summary(r: Results) -> str:
    t, ev, rd = r["timing"], r["evidence"], r["readers"]
    lines = [
        f"{r['verdict']}: scenario {r['scenario']}, kernel {r['kernel'].get('version', '?')} "
        f"({r['kernel'].get('source', '?')}), {r['accel']}",
        *_series_lines(r.get("provenance")),
        f"  faults: {r['kills']} kills ({r['kills_in_flight']} on a request in flight, {r['in_flight_share']:.0%}"
        + ("; " + _gates(r["kill_gates"]) if r.get("kill_gates") else "") + "), "
        f"{ev['fd_closes']} anon fds closed, {ev['deaths']} daemon deaths",
        f"  failover: {ev['restores']} restores, {ev['redelivered']} requests re-delivered, "
        f"{ev['reopens']} reopens with {ev['reads_after_reopen']} READs after them, "
        f"{ev['empty_reads']} empty wake-ups; recovery mean {_seconds(r['recovery_s']['mean'])}, "
        f"max {_seconds(r['recovery_s']['max'])}",
        *([f"  daemon facts: from the kernel's trace and ledger (foreign daemon {ev.get('foreign_daemon', '?')}): "
           "incarnations, deaths, kills, restores, answers; its own log is not read for them"]
          if ev.get("daemon_facts_from") == FACTS_FROM_KERNEL else []),
        _ledger_line(r["ledger"]),
        "  probes: " + "; ".join(f"{kind} ran {c['ran']}, decided {c['decided']}"
                                 f"{' (on reopens)' if kind in probes.ON_REOPENS else ''}, held {c['held']}, "
                                 f"{c['violations']} violations" for kind, c in r["probes"].items()
                                 if kind in probes.ON_REOPENS or c["ran"] or c["violations"]),
        *(["  misbehaviours: " + "; ".join(f"{name} {m['ran']}, reached the kernel {m['decided']}"
                                           for name, m in r["misbehaviours"].items())] if r["misbehaviours"] else []),
        *(["  kills at kernel states (tried/killed/confirmed by the trace): "
           + "; ".join(f"{state} {h['tried']}/{h['killed']}/{h['confirmed']}" for state, h in r["state_kills"].items())]
          if r["state_kills"] else []),
        *([_cache_deaths_line(r["cache_deaths"])] if "cache_deaths" in r else []),
        *([_waiters_line(r["killed_waiters"])] if "killed_waiters" in r else []),
        *([_reopen_umounts_line(r["reopen_umounts"])] if "reopen_umounts" in r else []),
        *([_copen_wakes_line(r["copen_wakes"])] if "copen_wakes" in r else []),
        _end_line(r["end_of_run"]),
        f"  reads: {rd['files_verified']} files verified ({rd['bytes_read'] / 1e6:.1f} MB), "
        f"{r['mismatches']} mismatches, {r['read_errors']} errors, max {_seconds(rd['max_latency_s'])}, "
        f"p99 <= {_seconds(rd['p99_latency_s'])}, longest stall {_seconds(r['max_stall_s'])} "
        f"(bound {r['stall_bound_s']:.0f}s)",
        f"  time: build {t.get('build_s', 0):.0f}s{' (reused)' if t.get('build_reused') else ''}, "
        f"boot {t.get('boot_s', 0):.1f}s, faults {t.get('fault_loop_s', 0):.0f}s"
        + (f" ({t['faults_stopped_early']})" if t.get("faults_stopped_early") else "")
        + (f" ({r['kills_per_minute']} kills/min)" if r["kills_per_minute"] else "")
        + f", total {t.get('total_s', 0):.0f}s",
        f"  kernel console findings: {len(r['findings'])}",
    ]
    lines += [f"    {f['title']} [{f['fingerprint']}] at console.log:{f['line_no']}" for f in r["findings"][:10]]
    for point, row in r.get("crash_points", {}).items():
        answered = "answered before death" if row["kernel_had_answer"] else "unanswered, must come back"
        lines.append(f"  crash point {point:20} hit {row['hits']}, held {row['held_requests']} ({answered}), "
                     f"re-delivered {row['redelivered']}, restored {row['restored']}, served after {row['served_after']}")
    lines += [f"  - {reason}" for reason in r["reasons"]]
    lines += [f"  - missing evidence: {m}" for m in r["missing_evidence"]]
    lines.append(f"  reproduce: {r['reproduce']}")
    return "\n".join(lines) + "\n"
