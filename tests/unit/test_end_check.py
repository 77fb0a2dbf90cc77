"""The end of a run: the re-read from the cache files (harness/judge/reread.py) on runs captured
with it (tests/fixtures), each rule's negative control the captured run changed where a broken
kernel would change it; and kmemleak's report as the end check reads it (guest_scripts/endcheck.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import endcheck
from guest_scripts.contract import REREAD_MARK, EndOfRun, reread_rounds
from harness.judge import reread, trace
from harness.judge.report import evaluate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUNS = ("run-crash-5-kills", "run-close-fds")


def captured(name: str) -> tuple[EndOfRun, dict[str, dict[str, str]], list[str]]:
    run = FIXTURES / name
    end = EndOfRun.from_json(json.loads((run / "guest" / "end.json").read_text()))
    manifest = json.loads((run / "manifest.json").read_text())
    return end, manifest, (run / "guest" / "trace.txt").read_text().splitlines()


def judge(end: EndOfRun, manifest: dict[str, dict[str, str]], lines: list[str]) -> reread.Reread:
    return reread.judge(end, manifest, trace.parse("\n".join(lines)))


@pytest.mark.parametrize("name", RUNS)
def test_the_captured_runs_read_everything_back_from_the_cache_files(name):
    end, manifest, lines = captured(name)
    got = judge(end, manifest, lines)
    assert got.ran and got.failures() == []
    assert got.files == sum(len(files) for files in manifest.values())
    assert got.opened == len(manifest)  # one object per image, opened by the re-read itself
    assert got.reads_needed == ()


def marks(lines: list[str]) -> tuple[int, int]:
    begin = next(i for i, line in enumerate(lines) if f"{REREAD_MARK}=1" in line)
    return begin, next(i for i, line in enumerate(lines) if i > begin and f"{REREAD_MARK}=0" in line)


def opened_in_window(lines: list[str]) -> tuple[int, str]:
    """(line index, the line) of the re-read's first OPEN delivery."""
    begin, end = marks(lines)
    for i in range(begin, end):
        (e,) = trace.parse(lines[i]) or [None]
        if e is not None and e.event == "deliver" and e.fields.get("opcode") == reread.OPEN and e.fields["ret"] > 0:
            return i, lines[i]
    raise AssertionError("no OPEN between the marks")


def test_a_file_that_reads_back_wrong_fails():
    end, manifest, lines = captured("run-close-fds")
    image = sorted(end.reread)[0]
    path = sorted(end.reread[image])[0]
    wrong = EndOfRun.from_json({**end.to_json(), "reread": {**end.reread, image: {**end.reread[image], path: "0" * 64}}})
    got = judge(wrong, manifest, lines)
    assert got.mismatches == (f"{image}/{path}: sha256 000000000000, expected {manifest[image][path][:12]}",)


def test_a_file_missing_from_the_reread_fails():
    end, manifest, lines = captured("run-close-fds")
    image = sorted(end.reread)[0]
    path = sorted(end.reread[image])[0]
    files = {p: s for p, s in end.reread[image].items() if p != path}
    got = judge(EndOfRun.from_json({**end.to_json(), "reread": {**end.reread, image: files}}), manifest, lines)
    assert got.mismatches == (f"{image}/{path}: not found",)


def test_a_read_the_cache_file_should_have_made_needless_fails():
    """A kernel that lost what the daemon wrote (or threw the cache file away on the reopen)
    sends a READ for the re-read's object: the delivery, inserted after the re-read's OPEN."""
    end, manifest, lines = captured("run-close-fds")
    i, line = opened_in_window(lines)
    (e,) = trace.parse(line)
    read = (line.replace("opcode=0", "opcode=2").replace(f"msg_id={e.fields['msg_id']} ", "msg_id=999999 ")
            .replace(f" a={e.fields['a']} ", " a=0 ").replace(f" b={e.fields['b']}", " b=4096"))
    got = judge(end, manifest, lines[:i + 1] + [read] + lines[i + 1:])
    assert got.reads_needed == (f"msg_id 999999 object_id {e.fields['object_id']} off 0x0 len 0x1000",)
    assert "READ(s) the cache files should have made needless" in got.failures()[0]


def test_a_read_for_an_object_the_reread_did_not_open_is_not_its():
    """A READ of a killed reader's object that the kernel delivers late is not the re-read's."""
    end, manifest, lines = captured("run-close-fds")
    i, line = opened_in_window(lines)
    (e,) = trace.parse(line)
    stray = line.replace("opcode=0", "opcode=2").replace(f"object_id={e.fields['object_id']} ", "object_id=99999 ")
    assert judge(end, manifest, lines[:i + 1] + [stray] + lines[i + 1:]).reads_needed == ()


def test_a_reread_without_its_marks_is_missing_evidence(tmp_path):
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    trace_file = run / "guest" / "trace.txt"
    trace_file.write_text("\n".join(line for line in trace_file.read_text().splitlines() if REREAD_MARK not in line))
    r = evaluate(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["end-checked"]
    assert not reread.judge(EndOfRun.from_json(json.loads((run / "guest" / "end.json").read_text())), {},
                            trace.parse(trace_file.read_text())).ran


def test_the_debug_flavour_without_kmemleak_is_missing_evidence(tmp_path):
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["request"]["flavor"] = "debug"
    (run / "run.json").write_text(json.dumps(meta))
    r = evaluate(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["end-checked"]


def test_a_leak_is_an_end_of_run_failure(tmp_path):
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    end_file = run / "guest" / "end.json"
    end = json.loads(end_file.read_text())
    end_file.write_text(json.dumps({**end, "leaks": endcheck.leak_lines(KMEMLEAK_REPORT)}))
    r = evaluate(run)
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["end-of-run"]
    assert "kmemleak: size 512, kworker/u8:1[31]: cachefiles_alloc_object < fscache_cookie_state_machine" in r["reasons"][0]


# the shape of mm/kmemleak.c's print_unreferenced (6.12: `%pS` frames)
KMEMLEAK_REPORT = """\
unreferenced object 0xffff888005f4e000 (size 512):
  comm "kworker/u8:1", pid 31, jiffies 4294937664
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
    00 00 00 00 00 00 00 00 10 e0 f4 05 80 88 ff ff  ................
  backtrace (crc 5c6e3d1a):
    kmemleak_alloc+0x4b/0x80
    __kmalloc_cache_noprof+0x2b4/0x3a0
    cachefiles_alloc_object+0x3f/0x2c0
    fscache_cookie_state_machine+0x1a2/0x4b0
    process_one_work+0x5e2/0x1030
    worker_thread+0x5ba/0xe40
    kthread+0x2b3/0x390
unreferenced object 0xffff888006a1c2c0 (size 64):
  comm "python3", pid 402, jiffies 4294940012
  hex dump (first 32 bytes):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
  backtrace (crc 0):
    [<ffffffff8134a1b2>] kmemleak_alloc+0x4b/0x80
    [<ffffffff8134a1b2>] kmem_cache_alloc_noprof+0x1d2/0x300
    [<ffffffff8134a1b2>] cachefiles_ondemand_send_req+0x9a/0x5c0
"""


def test_kmemleak_report_one_line_per_object_without_the_allocator():
    assert endcheck.leak_lines(KMEMLEAK_REPORT) == [
        "size 512, kworker/u8:1[31]: cachefiles_alloc_object < fscache_cookie_state_machine < process_one_work"
        " < worker_thread < kthread",
        "size 64, python3[402]: cachefiles_ondemand_send_req",
    ]
    assert endcheck.leak_lines("") == []


def test_an_end_check_from_before_the_reread_reads_as_empty():
    old = EndOfRun.from_json({"failed_umounts": {}, "keeper_exited": True, "device_reopen_error": None, "d_state": []})
    assert old.reread == {} and old.reread_errors == [] and old.leaks is None


def test_a_reread_whose_opens_the_trace_lacks_is_missing_evidence(tmp_path):
    """Without the re-read's OPEN deliveries its READs cannot be told from a killed reader's: the
    rule would pass for want of facts."""
    run = shutil.copytree(FIXTURES / "run-close-fds", tmp_path / "run")
    trace_file = run / "guest" / "trace.txt"
    lines = trace_file.read_text().splitlines()
    begin, end = marks(lines)
    kept = [line for i, line in enumerate(lines) if not (begin < i < end and "deliver:" in line and "opcode=0" in line)]
    trace_file.write_text("\n".join(kept) + "\n")
    r = evaluate(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["end-checked"]
    assert "the re-read's OPENs are not in the kernel's trace" in r["missing_evidence"][0]


def test_the_re_read_takes_each_image_s_first_mount_read_through():
    """A cache death cuts mounts short: the re-read takes, per image, the earliest mount any
    reader read every file of, and skips an image none did."""
    logs = [json.loads(line) for path in sorted((FIXTURES / "run-cache-death" / "guest").glob("reader-*.jsonl"))
            for line in path.read_text().splitlines()]
    rounds = reread_rounds(logs)
    through = sorted((e["t"], e["image"], e["reader"], e["round"]) for e in logs if e["event"] == "read_through")
    first = {image: (reader, round_no) for _, image, reader, round_no in reversed(through)}
    assert rounds == first and set(rounds) == {"img0", "img1", "img2"}
    assert any(reader != 0 for reader, _ in rounds.values()) or any(round_no != 0 for _, round_no in rounds.values())
    cut = [e for e in logs if not (e["event"] == "read_through" and e["image"] == "img1")]
    assert "img1" not in reread_rounds(cut)
