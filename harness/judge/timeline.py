"""A run's timeline as a picture: faults, recoveries, requests in flight, reader throughput and
read latency over time, with the findings marked (`timeline.png` in the run directory).

The data is extracted by pure functions over the parsed logs (tested on captured runs); only
`render` draws, with matplotlib's Agg backend (no display needed).

Clocks. Three clocks write the logs, and the picture is drawn in one, the guest's wall clock:
- the guest's `time.time()` stamps keeper.jsonl, daemon.jsonl and reader-*.jsonl: one clock for
  every guest event, so these need no alignment;
- the kernel's local clock (seconds since boot) stamps trace.txt and console.log's `[  12.3]`
  prefixes (tracefs' default `local` trace clock and printk's timestamps are both local_clock).
  It is mapped onto the guest's wall clock by pairing each `cachefiles_ondemand_cread` (the
  daemon's READ_COMPLETE reaching the kernel) with the daemon's `done` for the same msg_id,
  which the daemon logs right after that ioctl returns: the true offset is just under the
  smallest such difference among the consistent pairs (see `kernel_offset`);
- the host's `time.time()` stamps faults.jsonl, after the guest's shell confirmed the `kill`:
  in captured runs that record comes 0.8 to 1.5 s after the keeper saw the daemon die (the
  console round trip under TCG, plus any offset between host and guest clocks). So a kill is
  drawn where it landed, at the death the keeper logged for the killed pid (exact, guest
  clock); only a kill that killed nothing falls back to the host's time minus the smallest
  host-minus-death difference of the kills that did (approximate, and labelled so).
The x axis is in seconds since the fault loop started: the readers' first mount, which the
host waits for before its first fault.
"""
from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guest_scripts.contract import INCARNATION, Event

from . import console, evidence, trace

SLOW_READ_S = 1.0  # the readers log every read slower than this (guest config `slow_read_s`)
PAIR_WINDOW_S = 0.05  # cread/done pairs within this of each other agree on the kernel offset

# A request the daemon holds: (incarnation, msg_id); a death is keyed (incarnation,). Either
# may be None, as .get() reads them from a log line that lacks the field.
RequestKey = tuple[int | None, ...]


@dataclass(frozen=True)
class Marker:
    t: float  # seconds on the x axis
    label: str = ""


@dataclass(frozen=True)
class Timeline:
    origin: float  # guest wall clock of x = 0
    end: float  # x of the last event
    kills: tuple[Marker, ...]  # our SIGKILLs, at the death each caused
    kills_missed: tuple[Marker, ...]  # SIGKILLs that killed no daemon, at the host's time (approximate)
    crash_points: tuple[Marker, ...]  # incarnations that killed themselves at a protocol point
    other_deaths: tuple[Marker, ...]  # SIGKILLed by neither (the OOM killer, a stray signal)
    fd_closes: tuple[Marker, ...]
    cache_deaths: tuple[Marker, ...]  # the keeper let the device go (Fault.CACHE_DEATH)
    restores: tuple[Marker, ...]
    restores_failed: tuple[Marker, ...]
    reopens: tuple[Marker, ...]  # from the kernel trace (mapped onto the guest clock)
    in_flight: tuple[tuple[float, float, int], ...]  # per bin: (start, mean held by the daemon, most at once)
    throughput: tuple[tuple[float, float], ...]  # (bin start, bytes/s of all readers)
    bin_s: float
    file_latency: tuple[tuple[float, float], ...]  # (x, slowest read of the file just verified)
    slow_reads: tuple[tuple[float, float], ...]  # (x, latency) of every read slower than SLOW_READ_S
    stalls: tuple[tuple[float, float], ...]  # (x, waited) of the watchdog's reports of a stuck call
    read_errors: tuple[Marker, ...]
    mismatches: tuple[Marker, ...]
    findings: tuple[Marker, ...]  # kernel console findings placed on the guest clock
    findings_untimed: tuple[str, ...]  # findings whose time could not be placed
    stall_bound_s: float | None = None
    kernel_offset: float | None = None  # guest wall clock minus kernel local clock
    title: str = ""
    readers: int = 0
    notes: tuple[str, ...] = field(default=())


def kernel_offset(events: list[trace.TraceEvent], daemon: list[dict[str, Any]]) -> float | None:
    """Guest wall clock minus the kernel's local clock, or None when the trace has no READ_COMPLETE
    that the daemon logged.

    Every (cread, done) pair with the same msg_id is a candidate; msg_ids repeat (a fresh cache
    starts again at 0), so most candidates are wrong, but the right ones agree with each other
    to a few milliseconds. The densest PAIR_WINDOW_S of differences holds them; within it the
    smallest difference is the closest to the truth, the daemon logging `done` after the
    kernel's `cread`."""
    done: dict[int, list[float]] = {}
    for e in daemon:
        if e.get("event") == Event.DONE and e.get("op") == "READ" and "msg_id" in e:
            done.setdefault(e["msg_id"], []).append(float(e["t"]))
    diffs = sorted(t - ev.ts for ev in events if ev.event == "cread" and "mid" in ev.fields
                   for t in done.get(ev.fields["mid"], ()))
    if not diffs:
        return None
    best_start, best_count = 0, 0
    for i, d in enumerate(diffs):
        count = bisect_left(diffs, d + PAIR_WINDOW_S, lo=i) - i
        if count > best_count:
            best_start, best_count = i, count
    return diffs[best_start]


def host_offset(host_kills: list[dict[str, Any]], keeper: list[dict[str, Any]]) -> float:
    """The host's record of a kill minus the death the keeper logged for that pid: the smallest
    over the kills that killed (0 when none did: the clocks are then taken as equal)."""
    died = {e.get("pid"): float(e["t"]) for e in keeper if e.get("event") == Event.DIED}
    diffs = [float(k["t"]) - died[k.get("pid")] for k in host_kills if k.get("pid") in died and "t" in k]
    return min(diffs) if diffs else 0.0


def origin(readers: list[list[dict[str, Any]]], keeper: list[dict[str, Any]], daemon: list[dict[str, Any]]) -> float:
    """The start of the fault loop: the readers' first mount, which the host waits for; without
    one, the first guest event."""
    mounts = [float(e["t"]) for events in readers for e in events if e.get("event") == Event.MOUNTED]
    if mounts:
        return min(mounts)
    stamps = [float(e["t"]) for log in (keeper, daemon, *readers) for e in log if "t" in e]
    return min(stamps) if stamps else 0.0


def in_flight(daemon: list[dict[str, Any]], keeper: list[dict[str, Any]], t0: float) -> tuple[tuple[float, int], ...]:
    """Requests the daemon had received and not yet answered, over time. A dead incarnation's
    held requests leave with it (the kernel holds them until a `restore` sends them again, when
    the next incarnation's `recv` counts them anew)."""
    changes: list[tuple[float, int, str, RequestKey]] = []  # (t, order, kind, key)
    for e in daemon:
        kind = e.get("event")
        if kind in (Event.RECV, Event.DONE, Event.ERROR) and "msg_id" in e:
            changes.append((float(e["t"]), 1 if kind == Event.RECV else 0, kind, (e.get(INCARNATION), e["msg_id"])))
    for e in keeper:
        if e.get("event") == Event.DIED:
            changes.append((float(e["t"]), 2, Event.DIED, (e.get(INCARNATION),)))
    changes.sort(key=lambda c: (c[0], c[1]))
    held: set[RequestKey] = set()
    steps: list[tuple[float, int]] = [(min((c[0] for c in changes), default=t0) - t0, 0)]
    for t, _, kind, key in changes:
        if kind == Event.RECV:
            held.add(key)
        elif kind == Event.DIED:
            held = {k for k in held if k[0] != key[0]}
        else:
            held.discard(key)
        if len(held) != steps[-1][1]:
            steps.append((t - t0, len(held)))
    return tuple(steps)


def occupancy(steps: tuple[tuple[float, int], ...], end: float, bin_s: float) -> tuple[tuple[float, float, int], ...]:
    """The step function `steps` per bin of `bin_s`: (bin start, time-weighted mean, most at once).
    A daemon with one thread flips between 0 and 1 many times a second; the mean per bin is the
    share of time it had a request in hand, and a gap after a death stands out as a drop to 0."""
    if not steps:
        return ()
    first = int(steps[0][0] // bin_s)
    nbins = int(end // bin_s) - first + 1
    area = [0.0] * nbins
    peak = [0] * nbins
    bounds = [x for x, _ in steps[1:]] + [max(end, steps[-1][0])]
    for (a, n), b in zip(steps, bounds):
        for k in range(int(a // bin_s) - first, min(int(b // bin_s) - first, nbins - 1) + 1):
            lo, hi = max(a, (k + first) * bin_s), min(b, (k + first + 1) * bin_s)
            if hi > lo or (hi == lo == a):
                area[k] += n * max(0.0, hi - lo)
                peak[k] = max(peak[k], n)
    return tuple(((k + first) * bin_s, area[k] / bin_s, peak[k]) for k in range(nbins))


def throughput(readers: list[list[dict[str, Any]]], t0: float, bin_s: float) -> tuple[tuple[float, float], ...]:
    """Bytes/s of all readers, in bins of `bin_s`. A file's bytes are spread evenly over the time
    since that reader's previous event (a mount or the previous file), when it was being read,
    rather than heaped on the moment its checksum was logged."""
    spans: list[tuple[float, float, int]] = []
    for events in readers:
        previous: float | None = None
        for e in events:
            if "t" not in e:
                continue
            t = float(e["t"]) - t0
            if e.get("event") == Event.FILE and previous is not None:
                spans.append((previous, t, int(e.get("bytes", 0))))
            previous = t
    if not spans:
        return ()
    start = min(s[0] for s in spans)
    first = int(start // bin_s)
    nbins = int(max(s[1] for s in spans) // bin_s) - first + 1
    totals = [0.0] * nbins
    for a, b, nbytes in spans:
        if b <= a:
            totals[int(b // bin_s) - first] += nbytes
            continue
        rate = nbytes / (b - a)
        for k in range(int(a // bin_s) - first, int(b // bin_s) - first + 1):
            lo, hi = max(a, (k + first) * bin_s), min(b, (k + first + 1) * bin_s)
            if hi > lo:
                totals[k] += rate * (hi - lo)
    return tuple(((k + first) * bin_s, totals[k] / bin_s) for k in range(nbins))


def bin_width(span_s: float) -> float:
    """About a hundred bins whatever the run's length: 1 s for a short run, more for a long one."""
    for width in (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0):
        if span_s / width <= 150:
            return width
    return 120.0


_CONSOLE_TS = re.compile(r"^\[\s*(\d+\.\d+)\]")


def finding_times(findings: list[console.Finding], console_text: str, offset: float | None,
                  t0: float) -> tuple[tuple[Marker, ...], tuple[str, ...]]:
    """Each finding at its console timestamp on the guest clock, when the kernel offset is known;
    otherwise (or with no timestamp on its line) listed as untimed."""
    lines = console_text.splitlines()
    timed: list[Marker] = []
    untimed: list[str] = []
    for f in findings:
        label = f"{f.title} [{f.fingerprint}]"
        m = _CONSOLE_TS.match(lines[f.line_no - 1]) if 0 < f.line_no <= len(lines) else None
        if m and offset is not None:
            timed.append(Marker(float(m.group(1)) + offset - t0, label))
        else:
            untimed.append(label)
    return tuple(timed), tuple(untimed)


def _title(run_dir: Path, meta: dict[str, Any]) -> str:
    try:
        verdict = json.loads((run_dir / "results.json").read_text()).get("verdict", "")
    except (OSError, ValueError):
        verdict = ""
    kernel = meta.get("kernel", {})
    scenario = meta.get("scenario", {}).get("name") or meta.get("request", {}).get("scenario", "?")
    parts = [f"{verdict + ': ' if verdict else ''}{scenario}", f"kernel {kernel.get('version', '?')}",
             f"{kernel.get('flavor') or meta.get('request', {}).get('flavor', 'plain')}", str(meta.get("accel") or "?"),
             f"seed {meta.get('request', {}).get('seed', '?')}"]
    return ", ".join(parts) + f" ({run_dir.name})"


def extract(run_dir: Path) -> Timeline:
    """Everything the picture shows, from the run directory, in seconds on one clock."""
    meta = json.loads((run_dir / "run.json").read_text())
    logs = evidence.RunLogs.load(run_dir)
    t0 = origin(logs.readers, logs.keeper, logs.daemon)
    events = trace.parse(logs.trace)
    koff = kernel_offset(events, logs.daemon)
    hoff = host_offset(logs.host_kills, logs.keeper)

    died = {e.get("pid"): float(e["t"]) for e in logs.keeper
            if e.get("event") == Event.DIED and e.get("signal") == evidence.SIGKILL}
    killed = {k.get("pid") for k in logs.host_kills}
    points = {e.get("pid"): e for e in logs.daemon if e.get("event") == Event.CRASH_POINT}
    kills = tuple(Marker(died[k["pid"]] - t0) for k in logs.host_kills if k.get("pid") in died)
    missed = tuple(Marker(float(k["t"]) - hoff - t0) for k in logs.host_kills if k.get("pid") not in died)
    crash = tuple(Marker(float(e["t"]) - t0, str(e.get("point", ""))) for e in points.values())
    other = tuple(Marker(t - t0) for pid, t in died.items() if pid not in killed and pid not in points)

    def at(kind: str, **match: object) -> tuple[Marker, ...]:
        return tuple(Marker(float(e["t"]) - t0) for e in logs.daemon
                     if e.get("event") == kind and all(e.get(k) == v for k, v in match.items()))

    reopens = () if koff is None else tuple(Marker(r.ts + koff - t0) for r in trace.facts(events).reopens)
    readers = evidence.reader_facts(logs.readers, logs.manifest)
    reader_events = [e for events_ in logs.readers for e in events_]
    stamps = [float(e["t"]) - t0 for log in (logs.keeper, logs.daemon, *logs.readers) for e in log if "t" in e]
    end = max(stamps, default=0.0)
    width = bin_width(end - min(stamps, default=0.0))
    try:
        console_text = (run_dir / "console.log").read_text(errors="replace")
    except FileNotFoundError:
        console_text = ""
    findings = console.scan(console_text)
    timed, untimed = finding_times(findings, console_text, koff, t0)
    notes = []
    if koff is None and logs.trace.strip():
        notes.append("kernel trace not aligned (no READ_COMPLETE the daemon logged): reopens not shown")
    if missed:
        notes.append(f"missed kills placed by the host's clock ({hoff:+.2f} s), approximate")
    return Timeline(
        origin=t0, end=end, kills=kills, kills_missed=missed, crash_points=crash, other_deaths=other,
        fd_closes=at(Event.CLOSE_FD),
        cache_deaths=tuple(Marker(float(e["t"]) - t0) for e in logs.keeper if e.get("event") == Event.CACHE_DEATH),
        restores=at(Event.RESTORE, ok=True), restores_failed=at(Event.RESTORE, ok=False),
        reopens=reopens, in_flight=occupancy(in_flight(logs.daemon, logs.keeper, t0), end, width),
        throughput=throughput(logs.readers, t0, width), bin_s=width,
        file_latency=tuple((float(e["t"]) - t0, float(e.get("max_latency_s", 0.0)))
                           for e in reader_events if e.get("event") == Event.FILE),
        slow_reads=tuple((float(e["t"]) - t0, float(e["latency_s"]))
                         for e in reader_events if e.get("event") == Event.SLOW_READ and "latency_s" in e),
        stalls=tuple((float(e["t"]) - t0, float(e.get("waited_s", 0.0)))
                     for e in reader_events if e.get("event") == Event.STALL),
        read_errors=tuple(Marker(float(e["t"]) - t0, f"{e.get('error')}") for e in readers.read_errors),
        mismatches=tuple(Marker(float(e["t"]) - t0, f"{e.get('image')}/{e.get('path')}") for e in readers.mismatches),
        findings=timed, findings_untimed=untimed,
        stall_bound_s=meta.get("timeouts", {}).get("stall_bound"), kernel_offset=koff,
        title=_title(run_dir, meta), readers=len(logs.readers), notes=tuple(notes),
    )


# -- drawing ------------------------------------------------------------------------------------

# (Timeline attribute, label, marker, colour): the rows of the top panel, top to bottom
_ROWS = (
    ("kills", "SIGKILL from the host (at the death)", "v", "tab:red"),
    ("kills_missed", "SIGKILL that killed nothing (host clock, approx.)", "x", "darkred"),
    ("crash_points", "daemon died at a crash point", "X", "tab:purple"),
    ("other_deaths", "daemon SIGKILLed by something else", "x", "black"),
    ("fd_closes", "anon fd closed by the daemon", "|", "tab:orange"),
    ("cache_deaths", "cache killed: the device let go (keeper)", "*", "magenta"),
    ("restores", "restore written by the next incarnation", "^", "tab:green"),
    ("restores_failed", "restore failed", "^", "black"),
    ("reopens", "object reopened (kernel trace)", "o", "tab:blue"),
    ("read_errors", "read error (reader)", "s", "red"),
    ("mismatches", "checksum mismatch (reader)", "D", "red"),
)


def render(tl: Timeline, out: Path) -> Path:
    """Draw `tl` into the PNG `out`: four panels on one time axis."""
    # imported here, not at the top: only drawing needs it, and it takes a second to import,
    # which every `report.evaluate` of the unit tests would otherwise pay
    import matplotlib
    matplotlib.use("Agg")  # no display: CI runners and ssh sessions have none
    import matplotlib.pyplot as plt

    rows = [(attr, label, marker, colour) for attr, label, marker, colour in _ROWS if getattr(tl, attr)]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(14, 11),
                             gridspec_kw={"height_ratios": [max(0.8, 0.3 * len(rows) + 0.3), 1, 1, 1.3]})
    ev_ax, fl_ax, tp_ax, lat_ax = axes
    fig.suptitle(tl.title, fontsize=11)

    # faults and recoveries: one row per kind of event, named on the y axis and in the legend
    for i, (attr, label, marker, colour) in enumerate(rows):
        y = len(rows) - 1 - i  # the first row on top, as in the legend
        xs = [m.t for m in getattr(tl, attr)]
        size = 140 if marker == "|" else 36
        ev_ax.scatter(xs, [y] * len(xs), marker=marker, s=size, color=colour, label=f"{label} ({len(xs)})",
                      linewidths=1.5 if marker in "|x" else 0.5)
    ev_ax.set_yticks(range(len(rows)), [label.split(" (")[0] for _, label, _, _ in reversed(rows)], fontsize=8)
    ev_ax.set_ylim(-0.7, max(len(rows), 1) - 0.3)
    ev_ax.set_title("faults and recoveries (one row per kind of event)", fontsize=9, loc="left")
    if not rows:
        ev_ax.text(0.5, 0.5, "no faults, restores or reopens logged", transform=ev_ax.transAxes, ha="center")
    ev_ax.grid(axis="x", alpha=0.3)

    # requests in flight at the daemon
    if tl.in_flight:
        xs = [x for x, _, _ in tl.in_flight]
        fl_ax.fill_between(xs, [m for _, m, _ in tl.in_flight], step="post", alpha=0.35, color="tab:blue")
        fl_ax.step(xs, [m for _, m, _ in tl.in_flight], where="post", color="tab:blue", linewidth=1,
                   label=f"received by the daemon, not yet answered: mean over each {tl.bin_s:g} s bin")
        fl_ax.step(xs, [p for _, _, p in tl.in_flight], where="post", color="navy", linewidth=0.8, linestyle=":",
                   label="most at once in the bin")
    fl_ax.set_ylabel("requests\nin flight")
    fl_ax.set_ylim(bottom=0)
    fl_ax.grid(alpha=0.3)

    # reader throughput
    if tl.throughput:
        xs = [x for x, _ in tl.throughput]
        fl = [v / 1e6 for _, v in tl.throughput]
        tp_ax.fill_between(xs, fl, step="post", alpha=0.35, color="tab:green")
        tp_ax.step(xs, fl, where="post", color="tab:green", linewidth=1,
                   label=f"all {tl.readers} readers, {tl.bin_s:g} s bins")
    tp_ax.set_ylabel("reader throughput\n(MB/s)")
    tp_ax.set_ylim(bottom=0)
    tp_ax.grid(alpha=0.3)

    # read latency
    if tl.file_latency:
        lat_ax.scatter([x for x, _ in tl.file_latency], [max(v, 1e-4) for _, v in tl.file_latency], s=8,
                       color="tab:gray", alpha=0.6, label="slowest read of each file verified")
    if tl.slow_reads:
        lat_ax.scatter([x for x, _ in tl.slow_reads], [v for _, v in tl.slow_reads], s=22, marker="^",
                       color="tab:orange", label=f"a read slower than {SLOW_READ_S:g} s")
    if tl.stalls:
        lat_ax.scatter([x for x, _ in tl.stalls], [max(v, 1e-4) for _, v in tl.stalls], s=60, marker="X",
                       color="red", label="watchdog: a read stuck this long")
    if tl.stall_bound_s:
        lat_ax.axhline(tl.stall_bound_s, color="red", linestyle="--", linewidth=1,
                       label=f"stall bound ({tl.stall_bound_s:g} s)")
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("read latency (s)")
    lat_ax.grid(alpha=0.3, which="both")
    lat_ax.set_xlabel("seconds since the fault loop started (the readers' first mount, guest clock)")

    # kernel findings: a line through every panel, named in the top one's legend
    for i, f in enumerate(tl.findings):
        for ax in axes:
            ax.axvline(f.t, color="crimson", linewidth=1.2, alpha=0.8,
                       label=f"kernel: {f.label}" if ax is ev_ax and i < 5 else None)
    if tl.findings_untimed:
        for ax in axes:
            ax.axvline(tl.end, color="crimson", linewidth=1.2, linestyle=":",
                       label=(f"kernel, time unknown: {'; '.join(tl.findings_untimed[:3])}" if ax is ev_ax else None))

    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False, borderaxespad=0)
    if tl.notes:
        fig.text(0.01, 0.005, "; ".join(tl.notes), fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.015, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write(run_dir: Path) -> Path:
    """`timeline.png` in the run directory."""
    return render(extract(run_dir), run_dir / "timeline.png")
