"""The kernel console of a boot, scanned for the reports a kernel makes when it is in trouble."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# (kind, pattern): the first pattern that matches a line names it. Order matters: a KASAN
# report also contains "BUG:", and it should be called what it is.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(p)) for kind, p in (
        ("kasan", r"BUG: KASAN: "),
        ("kfence", r"BUG: KFENCE: "),
        ("lockdep", r"WARNING: (possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage)"),
        ("soft-lockup", r"watchdog: BUG: soft lockup"),
        ("hung-task", r"INFO: task .+ blocked for more than \d+ seconds"),
        ("rcu-stall", r"rcu: INFO: rcu_\w+ (self-)?detected stalls?"),
        ("bug", r"\bBUG: "),
        ("oops", r"\bOops: |general protection fault|kernel BUG at "),
        ("warning", r"\bWARNING: "),
        ("panic", r"Kernel panic - not syncing"),
    )
)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


@dataclass(frozen=True)
class Finding:
    kind: str
    line_no: int  # 1-based, in console.log
    text: str  # the line, without its timestamp


def scan(text: str) -> list[Finding]:
    findings = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = _TIMESTAMP.sub("", raw.strip())
        for kind, pattern in _PATTERNS:
            if pattern.search(line):
                findings.append(Finding(kind, n, line[:300]))
                break
    return findings


def scan_file(path: Path) -> list[Finding]:
    try:
        return scan(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
