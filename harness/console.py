"""The kernel console of a boot, scanned for the reports a kernel makes when it is in trouble."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# (kind, pattern): the first pattern that matches a message names it. Order matters: a KASAN
# report also starts with "BUG:", and it should be called what it is. Every pattern is anchored
# at the start of the message: the kernel starts its reports there, while a program writing to
# /dev/kmsg starts with its own name ("virtme-ng-init: WARNING: failed to run ..." is not ours).
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(p)) for kind, p in (
        ("kasan", r"^BUG: KASAN: "),
        ("kfence", r"^BUG: KFENCE: "),
        ("lockdep", r"^WARNING: (possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage)"),
        ("soft-lockup", r"^watchdog: BUG: soft lockup"),
        ("hung-task", r"^INFO: task .+ blocked for more than \d+ seconds"),
        ("rcu-stall", r"^rcu: INFO: rcu_\w+ (self-)?detected stalls?"),
        ("bug", r"^BUG: "),
        ("oops", r"^(Oops: |general protection fault|kernel BUG at )"),
        ("warning", r"^WARNING: "),
        ("panic", r"^Kernel panic - not syncing"),
    )
)
# "[   12.345678] " and, with CONFIG_PRINTK_CALLER, "[    T123] " after it
_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s*(?:\[\s*[TC]\d+\]\s*)?")


@dataclass(frozen=True)
class Finding:
    kind: str
    line_no: int  # 1-based, in console.log
    text: str  # the line, without its timestamp


def scan(text: str) -> list[Finding]:
    findings = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = _PREFIX.sub("", raw.strip())
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
