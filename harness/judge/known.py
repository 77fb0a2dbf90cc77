"""Known issues: findings (by fingerprint) and failed checks (by slug) that a CI keeps in its
repository with the reason they are known, so that a submission that meets them again on the
base and on the series shows them as known, not as news.

The file is JSON (read by the standard library on every Python the harness runs on, 3.10 too,
which has no tomllib):

    {"known_issues": [
      {"fingerprint": "0123456789ab", "reason": "WARNING in ..., reported at <url>",
       "expires": "2026-06-30"},
      {"check": "stall", "reason": "TCG on 2 cores stalls reads past the bound"}
    ]}

Each entry names exactly one fingerprint or one check slug (harness/judge/checks.py), a reason,
and optionally the last day it holds (`expires`, YYYY-MM-DD): after that day it matches nothing,
and a failure it would have matched is reported as an expired known issue, news again, so that
an entry nobody revisits cannot hide a bug for ever.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import InputError
from .checks import BY_SLUG, Check

FINGERPRINT = re.compile(r"[0-9a-f]{12}")  # console.scan's: 12 hex digits of a sha1
ENTRY_KEYS = frozenset({"fingerprint", "check", "reason", "expires"})


class Kind(str, Enum):
    """What an entry names: a kernel finding's fingerprint or a check's slug."""
    FINGERPRINT = "fingerprint"
    CHECK = "check"


class Label(str, Enum):
    """How a failure is shown: news, known (an entry holds), or news again (its entry expired)."""
    NEW = "new"
    KNOWN = "known"
    EXPIRED = "expired"


@dataclass(frozen=True)
class KnownIssue:
    kind: Kind
    key: str  # the fingerprint or the check slug
    reason: str
    expires: date | None = None  # the last day the entry holds

    def holds_on(self, today: date) -> bool:
        return self.expires is None or today <= self.expires


@dataclass(frozen=True)
class KnownIssues:
    """The entries, judged on `today` (an argument, so that the judgement is a pure function)."""
    entries: tuple[KnownIssue, ...] = ()
    today: date = field(default_factory=date.today)

    def label(self, kind: Kind, key: str) -> tuple[Label, KnownIssue | None]:
        """Known (with the entry that holds), expired (with the entry that no longer does), or new."""
        matching = [e for e in self.entries if e.kind is kind and e.key == key]
        if holding := [e for e in matching if e.holds_on(self.today)]:
            return Label.KNOWN, holding[0]
        return (Label.EXPIRED, matching[0]) if matching else (Label.NEW, None)

    def covers(self, failures: set[tuple[Kind, str]]) -> bool:
        """Whether every one of these failures is known (and there is one at least)."""
        return bool(failures) and all(self.label(kind, key)[0] is Label.KNOWN for kind, key in failures)


def note(label: Label, issue: KnownIssue | None) -> str:
    """What the known issues say of a failure: nothing for news."""
    if issue is None:
        return ""
    if label is Label.KNOWN:
        return f"known: {issue.reason}"
    return f"known issue expired on {issue.expires}, news again: {issue.reason}"


def _entry(i: int, raw: Any) -> KnownIssue:
    where = f"entry {i}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
    if unknown := sorted(set(raw) - ENTRY_KEYS):
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(ENTRY_KEYS))})")
    named = [k for k in Kind if k.value in raw]
    if len(named) != 1:
        raise ValueError(f"{where}: needs exactly one of \"fingerprint\" or \"check\"")
    kind = named[0]
    key = raw[kind.value]
    if kind is Kind.FINGERPRINT and not (isinstance(key, str) and FINGERPRINT.fullmatch(key)):
        raise ValueError(f"{where}: fingerprint {key!r} is not 12 hex digits")
    if kind is Kind.CHECK and key not in BY_SLUG:
        raise ValueError(f"{where}: {key!r} is not a check slug")
    if kind is Kind.CHECK and key == Check.SPLAT.slug:  # which finding it is matters: sides.SideSummary
        raise ValueError(f"{where}: name a kernel finding by its fingerprint, not by the check {key!r}")
    reason = raw.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"{where}: needs a \"reason\"")
    expires = raw.get("expires")
    if expires is not None:
        try:
            expires = date.fromisoformat(expires) if isinstance(expires, str) else None
        except ValueError:
            expires = None
        if expires is None:
            raise ValueError(f"{where}: \"expires\" {raw['expires']!r} is not a date (YYYY-MM-DD)")
    return KnownIssue(kind, key, " ".join(reason.split()), expires)


def parse(text: str, today: date) -> KnownIssues:
    """ValueError, with the entry at fault, for what is not a known-issues file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("known_issues"), list):
        raise ValueError("expected an object with a \"known_issues\" list")
    return KnownIssues(tuple(_entry(i, raw) for i, raw in enumerate(data["known_issues"], 1)), today)


def load(path: Path | None, today: date) -> KnownIssues:
    """The file's entries; InputError in one line for a file that is missing or wrong."""
    if path is None:
        return KnownIssues(today=today)
    try:
        return parse(path.read_text(), today)
    except OSError as e:
        raise InputError(f"--known-issues {path}: {e.strerror}") from None
    except ValueError as e:
        raise InputError(f"--known-issues {path}: {e}") from None
