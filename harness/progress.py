"""Progress on long work: one line that updates itself on a terminal, plain timestamped lines in
a CI log.

A run spends minutes in each stage (source (download, unpack, import, commit, checkout, series),
build, boot, faults, drain) and a person at a terminal wants to see it move; a CI log wants a
line now and then, not a line per compiled file nor carriage returns. The formatting is pure (`format_status`, `format_plain`); `Progress`
only decides when to write and how.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, TextIO

STAGES = ("source", "build", "boot", "ssh", "faults", "drain")  # ssh: with --transport ssh only
# kbuild's quiet output: "  CC      fs/erofs/super.o", "  CC [M]  ...": one object compiled
_COMPILED = re.compile(r"^\s+CC(?: \[M\])?\s+\S")
# counter -> what it is called after its number
UNITS = {"objects": "objects compiled", "kills": "kills", "closes": "fd closes", "served": "requests served",
         "bytes": "bytes", "files": "files"}


@dataclass(frozen=True)
class Status:
    stage: str
    stage_started: float  # monotonic seconds
    counters: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # counter -> the number expected, if known
    detail: str = ""
    step: str = ""  # what the stage is doing now ("unpack"): shown first, its counters after it


def is_compile_line(line: str) -> bool:
    return bool(_COMPILED.match(line))


def _count(name: str, value: int, total: int | None) -> str:
    unit = UNITS.get(name, name)
    if name == "bytes":
        shown = f"{value / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else "")
        return shown
    return f"{value}/{total} {unit}" if total else f"{value} {unit}"


def format_status(status: Status, now: float) -> str:
    """`build 2m05s: 1234 objects compiled`, `source 12s: unpack, 41234 files`: the stage, its
    time so far, its step, its counters."""
    elapsed = max(0, int(now - status.stage_started))
    clock = f"{elapsed // 60}m{elapsed % 60:02d}s" if elapsed >= 60 else f"{elapsed}s"
    parts = [status.step] if status.step else []
    parts += [_count(k, v, status.totals.get(k)) for k, v in status.counters.items()]
    if status.detail:
        parts.append(status.detail)
    return f"{status.stage} {clock}" + (": " + ", ".join(parts) if parts else "")


def format_plain(status: Status, now: float, wall: float) -> str:
    """A CI log's line: the wall-clock time first, so that lines can be matched with other logs."""
    return time.strftime("%H:%M:%S", time.localtime(wall)) + " " + format_status(status, now)


def silent() -> Progress:
    """A display that shows nothing (no stage is ever started on it): for callers without one."""
    return Progress(io.StringIO(), tty=False)


class Progress:
    """Writes the status to `stream`: rewritten in place on a terminal (at most every
    `tty_interval_s`), as a new line otherwise (on every stage change, and otherwise at most
    every `plain_interval_s`)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, plain_interval_s: float = 30.0,
                 tty_interval_s: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_interval_s = plain_interval_s
        self.tty_interval_s = tty_interval_s
        self.clock = clock
        self.wall = wall
        self.status: Status | None = None
        self._last_write = float("-inf")
        self._width = 0  # of the line on the terminal, to blank what a shorter one leaves
        self._unwritten = False  # counts changed since the last line written
        self._lock = threading.Lock()  # a counter may be fed from a reader of a child's output

    def stage(self, name: str, detail: str = "", totals: dict[str, int] | None = None) -> None:
        with self._lock:
            if self.tty and self.status is not None:
                self._draw(force=True)
                self.stream.write("\n")  # the finished stage keeps its last line
                self._width = 0
            else:
                self._finish_unwritten()
            self.status = Status(name, self.clock(), {}, dict(totals or {}), detail)
            self._draw(force=True)

    def step(self, name: str, totals: dict[str, int] | None = None) -> None:
        """A step of the stage (`download`, `unpack`): its counters start afresh; drawn at once, in
        a log after the finished step's last counts (on a terminal it is the same line)."""
        with self._lock:
            if self.status is None:
                return
            if not self.tty:
                self._finish_unwritten()
            self.status = replace(self.status, step=name, counters={}, totals=dict(totals or {}))
            self._draw(force=True)

    def count(self, name: str, n: int = 1) -> None:
        self._update(lambda s: replace(s, counters={**s.counters, name: s.counters.get(name, 0) + n}))

    def set(self, name: str, value: int) -> None:
        self._update(lambda s: replace(s, counters={**s.counters, name: value}))

    def detail(self, text: str) -> None:
        self._update(lambda s: replace(s, detail=text))

    def build_output(self, line: str) -> None:
        """A line of make's output: `proc.run(..., on_line=progress.build_output)`."""
        if is_compile_line(line):
            self.count("objects")

    def counting(self, name: str, counts: Callable[[str], bool]) -> Callable[[str], None]:
        """An `on_line` for `proc.run` that counts the lines `counts` says are one more."""
        def on_line(line: str) -> None:
            if counts(line):
                self.count(name)
        return on_line

    @contextlib.contextmanager
    def polling(self, name: str, read: Callable[[], int], interval_s: float = 0.5) -> Iterator[None]:
        """Counter `name` set from `read()` every `interval_s` while the block runs (a file that a
        child writes, growing), and once more at its end."""
        stop = threading.Event()

        def poll() -> None:
            try:
                self.set(name, read())
            except OSError:  # the file went away between a listing and a stat: the next poll sees
                pass

        def loop() -> None:
            while not stop.wait(interval_s):
                poll()

        poller = threading.Thread(target=loop, name=f"progress-{name}", daemon=True)
        poller.start()
        try:
            yield
        finally:
            stop.set()
            poller.join()
            poll()

    def done(self) -> None:
        """The last status, complete, and the terminal's line ended."""
        with self._lock:
            if self.status is not None:
                self._draw(force=True)
                if self.tty:
                    self.stream.write("\n")
                    self._width = 0
                self.status = None
            self.stream.flush()

    def _finish_unwritten(self) -> None:
        if self.status is not None and self._unwritten:
            self._draw(force=True)  # the finished stage's (or step's) last counts, in the log too

    def _update(self, change: Callable[[Status], Status]) -> None:
        with self._lock:
            if self.status is None:
                return
            self.status = change(self.status)
            self._unwritten = True
            self._draw(force=False)

    def _draw(self, force: bool) -> None:
        assert self.status is not None
        now = self.clock()
        interval = self.tty_interval_s if self.tty else self.plain_interval_s
        if not force and now - self._last_write < interval:
            return
        self._last_write = now
        self._unwritten = False
        if self.tty:
            line = format_status(self.status, now)
            self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
            self._width = len(line)
        else:
            self.stream.write(format_plain(self.status, now, self.wall()) + "\n")
        self.stream.flush()
