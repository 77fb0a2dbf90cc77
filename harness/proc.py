"""The one seam that starts processes: timeouts, process groups, reaping, logs.

Every child runs in a process group of its own so that a timeout, a Ctrl-C or a harness
exception kills the whole tree (make's compilers, QEMU under vng), and every child is reaped.
"""
from __future__ import annotations

import codecs
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

import pexpect

from .errors import InputError

_live: set[int] = set()  # process-group ids started here and not yet reaped

# A child's stdin is handed over as a file descriptor, so text and binary files serve alike.
Stdin = IO[str] | IO[bytes]


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InputError(f"{name} not found (Debian package {package}; ci/setup.sh installs it)")
    return path


def _group_alive(pgid: int) -> bool:
    """Any member of the process group that is not a zombie (a zombie needs reaping, not killing)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def kill_group(pgid: int, grace_s: float = 2.0) -> None:
    """SIGTERM the group, then SIGKILL what is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def kill_all() -> None:
    """Last resort on the way out (Ctrl-C, exception): nothing started here outlives us."""
    for pgid in list(_live):
        kill_group(pgid, grace_s=1.0)
        _live.discard(pgid)


def run(argv: Sequence[str], *, timeout_s: float, log: Path | None = None, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, stdin: Stdin | None = None,
        on_line: Callable[[str], None] | None = None) -> Completed:
    """Run to completion or timeout; output goes to `log` (if given) and is returned.

    `on_line`, if given, is called with every line of output as it comes (without its newline),
    for a progress display; the output is then decoded with errors replaced."""
    if on_line is not None:
        return _run_streaming(argv, timeout_s, log, cwd, env, stdin, on_line)
    started = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    out = open(log, "w") if log else None
    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env=full_env, stdout=out or subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=stdin or subprocess.DEVNULL,
                                 start_new_session=True, text=True)
    except FileNotFoundError as e:
        if out:
            out.close()
        raise InputError(f"{argv[0]}: not found") from e
    _live.add(child.pid)
    timed_out = False
    try:
        captured, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(child.pid)
        captured, _ = child.communicate()
    finally:
        if _group_alive(child.pid):  # what the child left running in its group goes too
            kill_group(child.pid, grace_s=0.5)
        _live.discard(child.pid)
        if out:
            out.close()
    text = log.read_text(errors="replace") if log else (captured or "")
    return Completed(tuple(argv), child.returncode, text, time.monotonic() - started, timed_out)


def _run_streaming(argv: Sequence[str], timeout_s: float, log: Path | None, cwd: Path | None,
                   env: Mapping[str, str] | None, stdin: Stdin | None, on_line: Callable[[str], None]) -> Completed:
    """`run` reading the output as it comes: the same process group, timeout and reaping.

    The main thread reads the pipe with select() against the deadline (no reader thread that a
    grandchild holding the pipe open could leave blocked), then waits for the child."""
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        child = subprocess.Popen(list(argv), cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=stdin or subprocess.DEVNULL,
                                 start_new_session=True)
    except FileNotFoundError as e:
        raise InputError(f"{argv[0]}: not found") from e
    _live.add(child.pid)
    assert child.stdout is not None
    fd = child.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = open(log, "w") if log else None
    chunks: list[str] = []
    pending = ""

    def feed(data: bytes, final: bool = False) -> None:
        nonlocal pending
        text = decoder.decode(data, final)
        if out:
            out.write(text)
        chunks.append(text)
        lines = (pending + text).split("\n")
        pending = lines.pop()
        if final and pending:
            lines.append(pending)
            pending = ""
        for line in lines:
            on_line(line)

    def drain(until: float) -> bool:
        """Read until end of output (True) or `until` (False)."""
        while (remaining := until - time.monotonic()) > 0:
            if select.select([fd], [], [], min(remaining, 1.0))[0]:
                data = os.read(fd, 65536)
                if not data:
                    return True
                feed(data)
        return False

    timed_out = False
    try:
        if drain(deadline):
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        else:
            timed_out = True
        if timed_out:
            kill_group(child.pid)
            drain(time.monotonic() + 5.0)  # what was written before the kill, without waiting on strays
            child.wait()
        feed(b"", final=True)
    finally:
        if _group_alive(child.pid):  # what the child left running in its group goes too
            kill_group(child.pid, grace_s=0.5)
        _live.discard(child.pid)
        child.stdout.close()
        if out:
            out.close()
    text = log.read_text(errors="replace") if log else "".join(chunks)
    return Completed(tuple(argv), child.returncode, text, time.monotonic() - started, timed_out)


class Interactive:
    """A child on a pseudo-terminal (the guest's console), driven with pexpect.

    Its transcript goes to `transcript`; the child is the leader of its own session (pexpect
    does setsid), so close() takes the whole tree down, QEMU included.
    """

    def __init__(self, argv: Sequence[str], transcript: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self._log = open(transcript, "w", errors="replace")
        self.child: pexpect.spawn[str] = pexpect.spawn(
            argv[0], list(argv[1:]), env={**os.environ, **(env or {})}, cwd=str(cwd) if cwd else None,
            encoding="utf-8", codec_errors="replace", timeout=None, dimensions=(24, 500), echo=False)
        self.child.logfile_read = self._log
        # spawn forks before it returns when given a command, as here; pid is None only without one
        assert self.child.pid is not None
        self._pid = self.child.pid
        _live.add(self._pid)

    @property
    def pid(self) -> int:
        return self._pid

    def alive(self) -> bool:
        return self.child.isalive()

    def close(self) -> None:
        try:
            if self.child.isalive():
                kill_group(self._pid)
            self.child.close(force=True)
        finally:
            _live.discard(self._pid)
            self._log.close()
