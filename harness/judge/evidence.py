"""From the logs of a run to facts: what was killed, what it held, what came back, what was read.

Pure functions over parsed JSON lines, so the rules are tested on logs captured from real runs.
Inputs (all in the run's `guest/` directory): `keeper.jsonl` (incarnations started and reaped),
`daemon.jsonl` (every message each incarnation received and answered), `reader-*.jsonl` (every
file read, every error, every stall) and the host's `faults.jsonl` (every signal it sent).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from guest_scripts.contract import END_OF_RUN_FILE, INCARNATION, LEGACY_INCARNATION, EndOfRun, Event, Fault

SIGKILL = 9
LogEvent = dict[str, Any]  # one JSON line of a guest or host log: its values are mixed by nature


def read_jsonl(path: Path) -> list[LogEvent]:
    """Events of one log; a line cut short by a kill or an unfinished write is skipped."""
    events = []
    for line in _read(path).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


def with_incarnation(event: LogEvent) -> LogEvent:
    """A daemon event of a run saved before every log named the incarnation `incarnation`."""
    if LEGACY_INCARNATION in event and INCARNATION not in event:
        event = {(INCARNATION if k == LEGACY_INCARNATION else k): v for k, v in event.items()}
    return event


class OpenedCookies:
    """Which cookies the daemon has opened, read from its log in order: an OPEN for one of them
    is a reopen (each reader round mounts fresh fsids, so nothing else asks for a cookie twice).
    `asked` records an OPEN (by its RECV or its probe); a DONE answered with a size opens it."""

    def __init__(self) -> None:
        self.opened: set[str] = set()
        self.pending: dict[tuple[object, object], str] = {}  # (incarnation, msg_id) of an OPEN -> cookie

    def asked(self, e: LogEvent) -> bool:
        """Record the OPEN `e` asks for; whether it reopens a cookie."""
        cookie = str(e.get("cookie", ""))
        self.pending[(e.get(INCARNATION), e.get("msg_id"))] = cookie
        return cookie in self.opened

    def answered(self, e: LogEvent) -> None:
        """A DONE of an OPEN: with a size, its cookie is open from now on."""
        key = (e.get(INCARNATION), e.get("msg_id"))
        if key in self.pending and e.get("size", -1) >= 0:
            self.opened.add(self.pending.pop(key))


@dataclass(frozen=True)
class Death:
    """A daemon incarnation that died by SIGKILL, and what the next one made of it."""

    incarnation: int
    pid: int
    cause: str  # "kill" (the host's SIGKILL), "crash_point" (it killed itself at `point`)
    point: str | None
    held: tuple[int, ...]  # msg_ids read but not answered when it died
    redelivered: tuple[int, ...]  # of those, the ones a later incarnation received again
    restored: bool  # the next incarnation wrote `restore` successfully
    served_after: bool  # and a later incarnation then answered a request
    recovery_s: float | None  # from the death to that first answer

    @property
    def in_flight(self) -> bool:
        return bool(self.held)


@dataclass(frozen=True)
class Kill:
    index: int
    pid: int
    death: Death | None  # None: the pid matched no incarnation that died by SIGKILL


@dataclass(frozen=True)
class DaemonFacts:
    incarnations: int
    deaths: tuple[Death, ...]
    kills: tuple[Kill, ...]
    answered: dict[str, int]  # opcode -> requests answered
    empty_reads: int  # poll() said readable, read() found nothing
    restores_ok: int
    restores_failed: int
    fd_closes: int  # anon fds the daemon closed unasked (close-fds)
    errors: tuple[LogEvent, ...]

    @property
    def kills_in_flight(self) -> int:
        return sum(1 for k in self.kills if k.death and k.death.in_flight)

    @property
    def redelivered(self) -> int:
        return sum(len(d.redelivered) for d in self.deaths)

    def crash_points(self) -> dict[str, list[Death]]:
        points: dict[str, list[Death]] = {}
        for d in self.deaths:
            if d.point:
                points.setdefault(d.point, []).append(d)
        return points


def _identity(recv: LogEvent) -> tuple[object, ...]:
    """What a re-delivered request keeps: its opcode and range or key. The object id may change
    (a READ on a closed object is delivered after a reopen), and a msg_id alone may be reused."""
    return (recv.get("op"), recv.get("off"), recv.get("len"), recv.get("cookie"))


def _death(inc: int, pid: int, died_t: float, cause: str, by_inc: dict[int, list[LogEvent]]) -> Death:
    """What incarnation `inc` held when it died, and what the ones after it made of that. The
    next incarnation must restore; in a chain of crashes the re-delivery and the first answer
    may come from a later one."""
    events = by_inc.get(inc, [])
    finished = {e["msg_id"] for e in events if e.get("event") in (Event.DONE, Event.ERROR, Event.DROPPED) and "msg_id" in e}
    held = {e["msg_id"]: _identity(e) for e in events if e.get("event") == Event.RECV and e["msg_id"] not in finished}
    point = next((e.get("point") for e in events if e.get("event") == Event.CRASH_POINT), None)
    later = [e for i in sorted(by_inc) if i > inc for e in by_inc[i]]
    seen_later = {(e["msg_id"], _identity(e)) for e in later if e.get("event") == Event.RECV}
    restore = next((e for e in by_inc.get(inc + 1, []) if e.get("event") == Event.RESTORE), None)
    restored = bool(restore and restore.get("ok"))
    answer = next((e for e in later if e.get("event") == Event.DONE and e["t"] >= died_t), None)
    return Death(inc, pid, "crash_point" if point else cause, point, tuple(held),
                 tuple(m for m, ident in held.items() if (m, ident) in seen_later),
                 restored, restored and answer is not None,
                 round(answer["t"] - died_t, 4) if answer else None)


def daemon_facts(keeper: list[LogEvent], daemon: list[LogEvent], host_kills: list[LogEvent]) -> DaemonFacts:
    by_inc: dict[int, list[LogEvent]] = {}
    for e in daemon:
        if INCARNATION in e:
            by_inc.setdefault(e[INCARNATION], []).append(e)
    killed_pids = {k.get("pid") for k in host_kills}
    deaths = {}
    for e in keeper:
        if e.get("event") == Event.DIED and e.get("signal") == SIGKILL:
            cause = "kill" if e.get("pid") in killed_pids else "signal"
            deaths[e["pid"]] = _death(e[INCARNATION], e["pid"], e["t"], cause, by_inc)
    kills = tuple(Kill(i, hk.get("pid", -1), deaths.get(hk.get("pid"))) for i, hk in enumerate(host_kills))
    answered = Counter(e.get("op", "?") for e in daemon if e.get("event") == Event.DONE)
    restores = [e for e in daemon if e.get("event") == Event.RESTORE]
    return DaemonFacts(
        incarnations=sum(1 for e in keeper if e.get("event") == Event.STARTED),
        deaths=tuple(sorted(deaths.values(), key=lambda d: d.incarnation)),
        kills=kills,
        answered=dict(answered),
        empty_reads=sum(1 for e in daemon if e.get("event") == Event.EMPTY_READ),
        restores_ok=sum(1 for e in restores if e.get("ok")),
        restores_failed=sum(1 for e in restores if not e.get("ok")),
        fd_closes=sum(1 for e in daemon if e.get("event") == Event.CLOSE_FD),
        errors=tuple(e for e in daemon if e.get("event") == Event.ERROR),
    )


@dataclass(frozen=True)
class ReaderFacts:
    readers_started: int
    readers_finished: int
    files_read: int
    files_verified: int
    bytes_read: int
    mismatches: tuple[LogEvent, ...]
    read_errors: tuple[LogEvent, ...]
    stalls: tuple[LogEvent, ...]
    max_latency_s: float
    never_verified: tuple[str, ...]  # image/path never read back correctly in the whole run
    mounts: int
    latency_histogram: dict[str, int]  # bucket upper bound (s, or "inf") -> reads, all readers
    failed_umounts: tuple[LogEvent, ...] = ()  # a reader's plain umount refused

    @property
    def p99_latency_s(self) -> float | None:
        """The bucket bound under which 99% of reads finished (an upper bound, not a sample)."""
        total = sum(self.latency_histogram.values())
        seen = 0
        for upper, n in sorted(self.latency_histogram.items(), key=lambda kv: float(kv[0])):
            seen += n
            if seen >= 0.99 * total:
                return float(upper)
        return None

    @property
    def max_stall_s(self) -> float:
        """The longest a read was seen waiting: finished reads, and stuck calls (any the reader
        makes) from the watchdog."""
        return max([self.max_latency_s, *(float(s.get("waited_s", 0)) for s in self.stalls)])


def reader_facts(readers: Iterable[list[LogEvent]], manifest: dict[str, dict[str, str]]) -> ReaderFacts:
    started = finished = files = verified = nbytes = mounts = 0
    worst = 0.0
    mismatches: list[LogEvent] = []
    errors: list[LogEvent] = []
    stalls: list[LogEvent] = []
    failed_umounts: list[LogEvent] = []
    good: set[tuple[str, str]] = set()
    histogram: Counter[str] = Counter()
    for events in readers:
        for e in events:
            kind = e.get("event")
            if kind == Event.STARTED:
                started += 1
            elif kind == Event.FINISHED:
                finished += 1
                histogram.update(e.get("latency_histogram", {}))
            elif kind == Event.MOUNTED:
                mounts += 1
            elif kind == Event.READ_ERROR:
                errors.append(e)
            elif kind == Event.STALL:
                stalls.append(e)
            elif kind == Event.UMOUNT_FAILED:
                failed_umounts.append(e)
            elif kind == Event.FILE:
                files += 1
                nbytes += int(e.get("bytes", 0))
                worst = max(worst, float(e.get("max_latency_s", 0.0)))
                expected = manifest.get(e.get("image", ""), {}).get(e.get("path", ""))
                if expected is not None and e.get("sha256") == expected:
                    verified += 1
                    good.add((e["image"], e["path"]))
                else:
                    mismatches.append({**e, "expected": expected})
    missing = tuple(f"{img}/{rel}" for img, files_ in sorted(manifest.items())
                    for rel in sorted(files_) if (img, rel) not in good)
    return ReaderFacts(started, finished, files, verified, nbytes, tuple(mismatches), tuple(errors),
                       tuple(stalls), round(worst, 4), missing, mounts, dict(histogram), tuple(failed_umounts))


@dataclass(frozen=True)
class RunLogs:
    """Everything a run left in its directory, parsed."""

    keeper: list[LogEvent]
    daemon: list[LogEvent]
    readers: list[list[LogEvent]]
    host_kills: list[LogEvent]
    faults: list[LogEvent] = field(default_factory=list)  # faults.jsonl whole (state kills and their misses too)
    manifest: dict[str, dict[str, str]] = field(default_factory=dict)
    trace: str = ""  # tracefs `trace` at the end of the run
    trace_lost: bool = False  # the ring buffer overran: trace counts are lower bounds
    end_of_run: EndOfRun | None = None  # None: a run that never got to its end check
    kprobe_missed: dict[str, int] = field(default_factory=dict)  # probe -> hits it missed (kprobe_profile), if any

    @classmethod
    def load(cls, run_dir: Path) -> "RunLogs":
        guest = run_dir / "guest"
        manifest_file = run_dir / "manifest.json"
        return cls(
            keeper=read_jsonl(guest / "keeper.jsonl"),
            daemon=[with_incarnation(e) for e in read_jsonl(guest / "daemon.jsonl")],
            readers=[read_jsonl(p) for p in sorted(guest.glob("reader-*.jsonl"))],
            host_kills=[e for e in read_jsonl(run_dir / "faults.jsonl") if e.get("kind") == Fault.KILL],
            faults=read_jsonl(run_dir / "faults.jsonl"),
            manifest=json.loads(manifest_file.read_text()) if manifest_file.exists() else {},
            trace=_read(guest / "trace.txt"),
            trace_lost=any(int(n) > 0 for n in re.findall(r"^overrun: (\d+)", _read(guest / "trace-stats.txt"), re.M)),
            end_of_run=_end_of_run(guest / END_OF_RUN_FILE),
            kprobe_missed=_kprobe_missed(_read(guest / "kprobe-profile.txt")),
        )


def _kprobe_missed(profile: str) -> dict[str, int]:
    """tracefs kprobe_profile: `<event> <hits> <misses>` a line; the probes that missed hits."""
    return {f[0]: int(f[2]) for line in profile.splitlines()
            if len(f := line.split()) == 3 and f[2].isdigit() and int(f[2]) > 0}


def _end_of_run(path: Path) -> EndOfRun | None:
    try:
        data = json.loads(_read(path))
    except ValueError:
        return None
    return EndOfRun.from_json(data) if isinstance(data, dict) else None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
