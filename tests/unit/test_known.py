"""harness.judge.known: the known-issues file, its labels and its expiry."""
import json
import re
from datetime import date

import pytest

from harness.errors import InputError
from harness.judge import known
from harness.judge.known import Kind, Label
from helpers import ROOT

FILE = {"known_issues": [
    {"fingerprint": "0123456789ab", "reason": "WARNING in f, reported upstream"},
    {"check": "stall", "reason": "TCG on 2 cores", "expires": "2026-06-30"},
]}


def test_labels_and_expiry():
    issues = known.parse(json.dumps(FILE), date(2026, 6, 30))  # the expiry day itself still holds
    assert issues.label(Kind.FINGERPRINT, "0123456789ab")[0] is Label.KNOWN
    assert issues.label(Kind.CHECK, "stall") == (Label.KNOWN, issues.entries[1])
    assert issues.label(Kind.CHECK, "checksum") == (Label.NEW, None)
    assert issues.label(Kind.CHECK, "0123456789ab")[0] is Label.NEW  # a fingerprint entry names no check
    later = known.parse(json.dumps(FILE), date(2026, 7, 1))
    label, issue = later.label(Kind.CHECK, "stall")
    assert label is Label.EXPIRED and known.note(label, issue) == \
        "known issue expired on 2026-06-30, news again: TCG on 2 cores"
    assert later.covers({(Kind.FINGERPRINT, "0123456789ab")})
    assert not later.covers({(Kind.FINGERPRINT, "0123456789ab"), (Kind.CHECK, "stall")}) and not later.covers(set())


def test_no_file_knows_nothing():
    assert known.load(None, date(2026, 1, 1)).label(Kind.CHECK, "stall") == (Label.NEW, None)


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ("[]", 'expected an object with a "known_issues" list'),
    ('{"known_issues": [1]}', "entry 1: expected an object"),
    ('{"known_issues": [{"reason": "r"}]}', 'entry 1: needs exactly one of "fingerprint" or "check"'),
    ('{"known_issues": [{"check": "stall", "fingerprint": "0123456789ab", "reason": "r"}]}', "exactly one"),
    ('{"known_issues": [{"check": "stalls", "reason": "r"}]}', "entry 1: 'stalls' is not a check slug"),
    ('{"known_issues": [{"fingerprint": "0123", "reason": "r"}]}', "is not 12 hex digits"),
    ('{"known_issues": [{"check": "splat", "reason": "r"}]}', "name a kernel finding by its fingerprint"),
    ('{"known_issues": [{"check": "stall"}]}', 'entry 1: needs a "reason"'),
    ('{"known_issues": [{"check": "stall", "reason": "r", "expires": "soon"}]}', "'soon' is not a date"),
    ('{"known_issues": [{"check": "stall", "reason": "r", "expiry": "2026-01-01"}]}', "unknown key 'expiry'"),
])
def test_what_is_not_a_known_issues_file_is_refused_with_the_entry_at_fault(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        known.parse(text, date(2026, 1, 1))


def test_a_bad_file_is_one_line_of_input_error(tmp_path):
    path = tmp_path / "known.json"
    path.write_text('{"known_issues": [{"check": "stall"}]}')
    with pytest.raises(InputError) as e:
        known.load(path, date(2026, 1, 1))
    assert str(e.value) == f'--known-issues {path}: entry 1: needs a "reason"'
    with pytest.raises(InputError, match="No such file or directory"):
        known.load(tmp_path / "nowhere.json", date(2026, 1, 1))


def test_the_shipped_file_is_valid():
    assert known.load(ROOT / "ci" / "known-issues.json", date.today()).entries == ()
