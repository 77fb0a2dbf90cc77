"""The progress display: pure formatting, and when it writes on a terminal and in a CI log."""
import io

import pytest

from harness import proc, progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("line, compiled", [
    ("  CC      fs/erofs/super.o", True),
    ("  CC [M]  drivers/misc/lkdtm/core.o", True),
    ("  CC      arch/x86/kernel/asm-offsets.s", True),
    ("  LD      vmlinux.o", False),
    ("  CCAR    x", False),
    ("gcc -c foo.c", False),
    ("CC fs/x.o", False),
])
def test_compiled_objects_are_counted_from_kbuild_lines(line, compiled):
    assert progress.is_compile_line(line) is compiled


def test_the_status_line():
    s = progress.Status("build", 0.0, {"objects": 1234}, {}, "")
    assert progress.format_status(s, 125.4) == "build 2m05s: 1234 objects compiled"
    s = progress.Status("faults", 0.0, {"kills": 12, "served": 340}, {"kills": 50}, "incarnation 13")
    assert progress.format_status(s, 9.9) == "faults 9s: 12/50 kills, 340 requests served, incarnation 13"
    assert progress.format_status(progress.Status("boot", 5.0), 5.0) == "boot 0s"
    s = progress.Status("download", 0.0, {"bytes": 75_000_000}, {"bytes": 150_000_000})
    assert progress.format_status(s, 3) == "download 3s: 75.0 MB of 150.0 MB"


def test_in_a_log_plain_lines_not_on_every_update():
    out, clock = io.StringIO(), Clock()
    p = progress.Progress(out, tty=False, plain_interval_s=30, clock=clock, wall=lambda: 0.0)
    p.stage("build")
    for _ in range(500):
        p.build_output("  CC      fs/x.o")
        clock.now += 0.01  # 5 s in all: under the interval
    assert out.getvalue().count("\n") == 1
    clock.now = 1035.0
    p.build_output("  CC      fs/y.o")
    p.stage("boot")  # a new stage is written at once
    p.done()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [l[9:] for l in lines] == ["build 0s", "build 35s: 501 objects compiled", "boot 0s", "boot 0s"]
    assert all(l[2] == ":" and l[5] == ":" and l[8] == " " for l in lines)  # HH:MM:SS first


def test_on_a_terminal_one_line_rewritten():
    out, clock = io.StringIO(), Clock()
    p = progress.Progress(out, tty=True, tty_interval_s=0.2, clock=clock)
    p.stage("faults", totals={"kills": 50})
    for _ in range(3):
        clock.now += 1
        p.count("kills")
    p.count("served", 7)  # within 0.2 s of the last write: not drawn now
    clock.now += 1
    p.detail("draining")
    p.stage("drain")
    p.done()
    text = out.getvalue()
    first, second, end = text.split("\n")
    assert end == ""
    assert first.startswith("\rfaults 0s") and first.split("\r")[-1] == "faults 4s: 3/50 kills, 7 requests served, draining"
    assert second.startswith("\rdrain 0s") and second.count("\r") == 2
    # a shorter line blanks what the longer one left
    assert first.split("\r")[2].startswith("faults 1s: 1/50 kills")


def test_make_output_streams_into_the_counter(tmp_path):
    out = io.StringIO()
    p = progress.Progress(out, tty=False, plain_interval_s=3600)
    p.stage("build")
    script = "printf '  CC      a.o\\n  CC      b.o\\n  LD      vmlinux\\n  CC [M]  c.o'"
    r = proc.run(["sh", "-c", script], timeout_s=30, log=tmp_path / "build.log", on_line=p.build_output)
    assert r.ok and p.status.counters == {"objects": 3}
    assert (tmp_path / "build.log").read_text().endswith("  CC [M]  c.o")


def test_in_a_log_a_finished_stage_leaves_its_last_counts():
    out, clock = io.StringIO(), Clock()
    p = progress.Progress(out, tty=False, plain_interval_s=30, clock=clock, wall=lambda: 0.0)
    p.stage("faults", totals={"kills": 10})
    clock.now += 12
    for _ in range(10):
        p.count("kills")
    p.set("served", 600)
    p.stage("drain")
    assert [l[9:] for l in out.getvalue().splitlines()] == [
        "faults 0s", "faults 12s: 10/10 kills, 600 requests served", "drain 0s"]
