"""The host follows the guest's logs as they grow: only new lines, never half a line."""
import json
from pathlib import Path

from harness.guest.logs import LogTail


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_a_log_that_does_not_exist_yet_has_no_events_until_it_does(tmp_path: Path) -> None:
    tail = LogTail(tmp_path / "daemon.jsonl")
    assert tail.poll() == []
    append(tmp_path / "daemon.jsonl", json.dumps({"event": "serving"}) + "\n")
    assert tail.poll() == [{"event": "serving"}]


def test_only_what_was_appended_since_the_last_poll(tmp_path: Path) -> None:
    log = tmp_path / "keeper.jsonl"
    append(log, '{"event":"bound"}\n{"event":"started","incarnation":1}\n')
    tail = LogTail(log)
    assert [e["event"] for e in tail.poll()] == ["bound", "started"]
    assert tail.poll() == []
    append(log, '{"event":"died","incarnation":1}\n')
    assert tail.poll() == [{"event": "died", "incarnation": 1}]


def test_an_unfinished_last_line_waits_for_its_end(tmp_path: Path) -> None:
    log = tmp_path / "reader-0.jsonl"
    append(log, '{"event":"mounted"}\n{"event":"fi')
    tail = LogTail(log)
    assert tail.poll() == [{"event": "mounted"}]
    assert tail.poll() == []
    append(log, 'le","bytes":4096}\n')
    assert tail.poll() == [{"event": "file", "bytes": 4096}]


def test_a_line_cut_short_by_a_kill_is_skipped_and_the_next_one_read(tmp_path: Path) -> None:
    log = tmp_path / "daemon.jsonl"
    append(log, '{"event":"recv","msg_i')  # the incarnation died in the middle of its write
    tail = LogTail(log)
    assert tail.poll() == []
    append(log, '{"event":"serving","incarnation":2}\n')
    assert tail.poll() == []  # one line, not JSON: as the judge's reader skips it
    append(log, '{"event":"done","incarnation":2}\n')
    assert tail.poll() == [{"event": "done", "incarnation": 2}]
