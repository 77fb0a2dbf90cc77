"""From the logs of a run to facts: what was killed, what it held, what came back, what was read.

Pure functions over parsed JSON lines, so the rules are tested on logs captured from real runs.
Inputs (all in the run's `guest/` directory): `keeper.jsonl` (incarnations started and reaped),
`daemon.jsonl` (every message each incarnation received and answered), `reader-*.jsonl` (every
file read, every error, every stall) and the host's `kills.jsonl` (every SIGKILL it sent).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

SIGKILL = 9


def read_jsonl(path: Path) -> list[dict]:
    """Events of one log; a line cut short by a kill or an unfinished write is skipped."""
    events = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return events
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


@dataclass(frozen=True)
class Kill:
    index: int
    pid: int
    incarnation: int | None  # None: the pid matched no incarnation killed by SIGKILL
    held: tuple[int, ...]  # msg_ids read but not answered when it died
    redelivered: tuple[int, ...]  # of those, the ones the next incarnation received again
    restored: bool  # the next incarnation wrote `restore` successfully
    served_after: bool  # and then answered at least one request
    recovery_s: float | None  # from the death to the next incarnation's first answer

    @property
    def in_flight(self) -> bool:
        return bool(self.held)


@dataclass(frozen=True)
class DaemonFacts:
    incarnations: int
    kills: tuple[Kill, ...]
    answered: dict[str, int]  # opcode -> requests answered
    empty_reads: int  # poll() said readable, read() found nothing
    restores_ok: int
    restores_failed: int
    errors: tuple[dict, ...]

    @property
    def kills_in_flight(self) -> int:
        return sum(k.in_flight for k in self.kills)

    @property
    def redelivered(self) -> int:
        return sum(len(k.redelivered) for k in self.kills)


def _identity(recv: dict) -> tuple:
    """What a re-delivered request keeps: its opcode and range or key. The object id may change
    (a READ on a closed object is delivered after a reopen), and a msg_id alone may be reused."""
    return (recv.get("op"), recv.get("off"), recv.get("len"), recv.get("cookie"))


def daemon_facts(keeper: list[dict], daemon: list[dict], host_kills: list[dict]) -> DaemonFacts:
    pid_to_inc = {e["pid"]: e["incarnation"] for e in keeper if e.get("event") == "started"}
    killed = {e["incarnation"]: e["t"] for e in keeper
              if e.get("event") == "died" and e.get("signal") == SIGKILL}
    by_inc: dict[int, list[dict]] = {}
    for e in daemon:
        if "inc" in e:
            by_inc.setdefault(e["inc"], []).append(e)

    kills = []
    for i, hk in enumerate(host_kills):
        inc = pid_to_inc.get(hk.get("pid"))
        if inc is None or inc not in killed:
            kills.append(Kill(i, hk.get("pid", -1), None, (), (), False, False, None))
            continue
        events = by_inc.get(inc, [])
        finished = {e["msg_id"] for e in events if e.get("event") in ("done", "error") and "msg_id" in e}
        held = {e["msg_id"]: _identity(e) for e in events if e.get("event") == "recv" and e["msg_id"] not in finished}
        following = by_inc.get(inc + 1, [])
        seen_next = {(e["msg_id"], _identity(e)) for e in following if e.get("event") == "recv"}
        restore = next((e for e in following if e.get("event") == "restore"), None)
        restored = bool(restore and restore.get("ok"))
        answers = [e for e in following if e.get("event") == "done"
                   and (restore is None or e["t"] >= restore["t"])]
        recovery = round(answers[0]["t"] - killed[inc], 4) if answers else None
        kills.append(Kill(i, hk["pid"], inc, tuple(held), tuple(m for m, ident in held.items() if (m, ident) in seen_next),
                          restored, restored and bool(answers), recovery))

    answered = Counter(e.get("op", "?") for e in daemon if e.get("event") == "done")
    restores = [e for e in daemon if e.get("event") == "restore"]
    return DaemonFacts(
        incarnations=len(pid_to_inc),
        kills=tuple(kills),
        answered=dict(answered),
        empty_reads=sum(1 for e in daemon if e.get("event") == "empty_read"),
        restores_ok=sum(1 for e in restores if e.get("ok")),
        restores_failed=sum(1 for e in restores if not e.get("ok")),
        errors=tuple(e for e in daemon if e.get("event") == "error"),
    )


@dataclass(frozen=True)
class ReaderFacts:
    readers_started: int
    readers_finished: int
    files_read: int
    files_verified: int
    bytes_read: int
    mismatches: tuple[dict, ...]
    read_errors: tuple[dict, ...]
    stalls: tuple[dict, ...]
    max_latency_s: float
    never_verified: tuple[str, ...]  # image/path never read back correctly in the whole run
    mounts: int

    @property
    def max_stall_s(self) -> float:
        """The longest a read was seen waiting: finished reads, and stuck ones from the watchdog."""
        return max([self.max_latency_s, *(float(s.get("waited_s", 0)) for s in self.stalls)])


def reader_facts(readers: Iterable[list[dict]], manifest: dict[str, dict[str, str]]) -> ReaderFacts:
    started = finished = files = verified = nbytes = mounts = 0
    worst = 0.0
    mismatches: list[dict] = []
    errors: list[dict] = []
    stalls: list[dict] = []
    good: set[tuple[str, str]] = set()
    for events in readers:
        for e in events:
            kind = e.get("event")
            if kind == "started":
                started += 1
            elif kind == "finished":
                finished += 1
            elif kind == "mounted":
                mounts += 1
            elif kind == "read_error":
                errors.append(e)
            elif kind == "stall":
                stalls.append(e)
            elif kind == "file":
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
                       tuple(stalls), round(worst, 4), missing, mounts)


@dataclass(frozen=True)
class RunLogs:
    """Everything a run left in its directory, parsed."""

    keeper: list[dict]
    daemon: list[dict]
    readers: list[list[dict]]
    host_kills: list[dict]
    manifest: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "RunLogs":
        guest = run_dir / "guest"
        manifest_file = run_dir / "manifest.json"
        return cls(
            keeper=read_jsonl(guest / "keeper.jsonl"),
            daemon=read_jsonl(guest / "daemon.jsonl"),
            readers=[read_jsonl(p) for p in sorted(guest.glob("reader-*.jsonl"))],
            host_kills=read_jsonl(run_dir / "kills.jsonl"),
            manifest=json.loads(manifest_file.read_text()) if manifest_file.exists() else {},
        )
