"""`failover-harness bench` with a stand-in for the machine (no build, no VM): the figures from
real runs' results (the captured fixtures, judged again), the requests each mode plans, the
stages that did not run (null, with why), the exit codes, the vng command lines, and bench.json
against its schema (with negative controls)."""
import contextlib
import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from harness import cli, proc
from harness.campaign import bench
from harness.errors import InputError
from harness.judge import report
from harness.judge.checks import Status
from harness.judge.results import error_results
from harness.kernel import series
from harness.request import RunRequest
from helpers import FIXTURES, git, init_repo


def judged(name: str, tmp: Path) -> dict:
    """A captured run judged anew, as results.json holds it (tuples as lists)."""
    run = shutil.copytree(FIXTURES / name, tmp / name)
    report.evaluate(run)
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def canned(tmp_path_factory) -> dict:
    """The crash (5 kills) and close-fds fixtures' results. Their timing predates `source_s` and
    `boot_to_first_fault_s`: those are given here, as a run records them now."""
    tmp = tmp_path_factory.mktemp("canned")
    crash, close = judged("run-crash-5-kills", tmp), judged("run-close-fds", tmp)
    for r, first_fault in ((crash, 51.0), (close, 63.5)):
        r["timing"].update(source_s=1.2, boot_to_first_fault_s=first_fault)
    return {"crash": crash, "close-fds": close}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(bench.SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, doc: dict) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]


# the seconds the stand-in's commands take: our bzImage 500 s against their build's 2000 s
COMMAND_SECONDS = {"olddefconfig": 2.0, "bzImage": 500.0, "--kconfig": 10.0, bench.VNG_LOCALVERSION: 2000.0}


class Machine:
    """A stand-in for the machine: each run answers with canned results (`answer`), the tree is a
    small git repository, each command is recorded and takes COMMAND_SECONDS."""

    def __init__(self, tmp_path: Path, canned: dict, answer=None, vng_missing=False, failing_command=None):
        self.tmp, self.canned, self.answer = tmp_path, canned, answer
        self.asked: list[RunRequest] = []
        self.commands: list[tuple[list[str], Path | None, dict | None]] = []
        self.vng_missing, self.failing_command = vng_missing, failing_command
        self.tree = init_repo(tmp_path / "linux", {"Makefile": "VERSION = 6\nPATCHLEVEL = 12\n", "ondemand.c": "int x;\n"})
        self.held = 0
        self.build_dir = tmp_path / "build"
        self.build_dir.mkdir()
        (self.build_dir / ".config").write_text("CONFIG_CACHEFILES=y\nCONFIG_EROFS_FS=y\n# CONFIG_NET is not set\n")
        self.cold_cache_seen: list[bool] = []

    def results_for(self, req: RunRequest) -> dict:
        r = copy.deepcopy(self.canned["close-fds" if req.scenario == "close-fds" else "crash"])
        if self.answer is not None:
            r = self.answer(req, r)
        if "kernel" in r:
            r["kernel"]["build_dir"] = str(self.build_dir)
        if req.series is not None and Status(r["verdict"]).judged:
            r["provenance"] = {**(r.get("provenance") or {}), "patches": [{"status": "applied"}]}
            r["timing"].update(build_s=41.5, build_reused=False)
        return r

    def run(self, req: RunRequest) -> bench.Ran:
        self.asked.append(req)
        self.cold_cache_seen.append(req.cache.is_dir())
        run_dir = req.output / f"run{len(self.asked)}"
        run_dir.mkdir(parents=True)
        return bench.Ran(run_dir, self.results_for(req), 100.0 + len(self.asked))

    @contextlib.contextmanager
    def checked_out(self, req: RunRequest):
        self.held += 1
        try:
            yield self.tree
        finally:
            self.held -= 1

    def command(self, argv, *, timeout_s, log, cwd=None, env=None):
        assert self.held, "a build outside the checked-out tree"
        self.commands.append((list(argv), cwd, env))
        log.write_text(" ".join(argv) + "\n")  # as proc.run writes the command's output there
        seconds = next(s for key, s in COMMAND_SECONDS.items() if key in argv)
        if "--kconfig" in argv:
            out = Path(argv[-1].removeprefix("O="))
            out.mkdir(parents=True)
            (out / ".config").write_text("CONFIG_VIRTIO=y\nCONFIG_NET=y\nCONFIG_9P_FS=y\nCONFIG_EXT4_FS=m\n")
        failed = self.failing_command is not None and self.failing_command in argv
        return proc.Completed(tuple(argv), 2 if failed else 0, "", seconds, False)

    def vng(self):
        if self.vng_missing:
            raise InputError("vng (virtme-ng) not found: run ci/setup.sh, or use the .venv it makes")
        return "/venv/bin/vng"


def options(tmp_path: Path, **kw) -> bench.BenchOptions:
    base = RunRequest(output=tmp_path / "out", cache=tmp_path / "cache", jobs=2)
    return bench.BenchOptions(base, tmp_path / "out", command_line=("failover-harness", "bench"), **kw)


def the_work_dir(result: dict) -> Path:
    return Path(result["dir"])


# -- figures from real runs ------------------------------------------------------------------------

def test_crash_figures_are_the_runs_own(canned):
    r = canned["crash"]
    f = bench.crash_figures(r)
    assert (f["kills"], f["kills_in_flight"], f["in_flight_share"]) == (5, 5, 1.0)
    assert f["kills_per_minute"] == r["kills_per_minute"] == round(5 / r["timing"]["fault_loop_s"] * 60, 1) == 4.5
    assert (f["build_s"], f["build_reused"], f["boot_s"], f["boot_to_first_fault_s"], f["source_s"]) == \
        (0.0, True, 42.8, 51.0, 1.2)
    # recovery per death: the kernel's ledger, death to the next answered request
    ledger = r["ledger"]["per_death"]["next_answer_s"]
    assert f["recovery_from"] == "kernel ledger"
    assert (f["recovery_n"], f["recovery_p50_s"], f["recovery_p90_s"], f["recovery_max_s"]) == \
        (ledger["n"], ledger["p50"], ledger["p90"], ledger["max"]) == (5, 11.65, 16.967, 16.967)


def test_recovery_without_a_ledger_is_the_daemon_logs(canned):
    r = copy.deepcopy(canned["crash"])
    r["ledger"]["per_death"]["next_answer_s"] = {"n": 0, "p50": None, "p90": None, "max": None}
    f = bench.crash_figures(r)
    logged = sorted(d["recovery_s"] for d in r["deaths"])
    assert f["recovery_from"] == "daemon log" and f["recovery_n"] == 5
    assert (f["recovery_p50_s"], f["recovery_max_s"]) == (round(logged[2], 3), round(logged[-1], 3))
    r["deaths"] = []
    assert bench.crash_figures(r)["recovery_from"] is None and bench.crash_figures(r)["recovery_p50_s"] is None


def test_closes_per_minute_of_fault_loop(canned):
    r = canned["close-fds"]
    f = bench.close_fds_figures(r)
    assert (f["fd_closes"], f["reopens"], f["fault_loop_s"]) == (40, 39, 50.5)
    assert f["closes_per_minute"] == round(40 / 50.5 * 60, 1) == 47.5


def test_an_untestable_run_has_the_timing_it_got_and_nothing_judged():
    r = error_results(Status.UNTESTABLE, "boot failed: no shell\nconsole tail", request={}, reproduce="x",
                      kernel={}, timing={"build_s": 512.0, "build_reused": False})
    f = bench.crash_figures(r)
    assert (f["build_s"], f["build_reused"]) == (512.0, False)
    assert f["kills"] is f["kills_per_minute"] is f["recovery_p50_s"] is f["boot_s"] is None


# -- the whole, with the stand-in -------------------------------------------------------------------------

def test_every_stage_runs_and_bench_json_validates(tmp_path, canned, validator, capsys):
    m = Machine(tmp_path, canned)
    result = bench.bench(options(tmp_path, cold=True, vng_ratio=True), m, env={})
    assert errors(validator, result) == []
    stages = result["stages"]
    assert [n for n in bench.STAGES if stages[n]["ran"]] == list(bench.STAGES) and result["exit_code"] == 0
    assert all(s["skipped"] is None and s["problem"] is None for s in stages.values())
    work = the_work_dir(result)
    for where in (tmp_path / "out", work):  # the latest at --output; every bench's in its own directory
        assert json.loads((where / "bench.json").read_text()) == result
        assert (where / "bench.md").read_text() == bench.markdown(result)

    # the runs: crash with the scenario's kills, close-fds with its closes, the edit as a series,
    # one bisection step (the unchanged one ran nothing), the cold one with a cache of its own
    crash, close, edit, step, cold = m.asked
    assert (crash.scenario, crash.kills, crash.series, crash.flavor) == ("crash", None, None, "plain")
    assert (close.scenario, close.kills, close.fd_closes) == ("close-fds", None, None)
    assert edit == replace(crash, series=work / "edit" / "one-line-edit.mbox")
    assert step == replace(crash, tree=m.tree, output=work / "bisect" / "steps")
    assert cold.cache == work / "cold-cache" and m.cold_cache_seen[-1] and not cold.cache.exists()  # removed after
    assert (cold.kills, cold.accel) == (bench.COLD_KILLS, "tcg")  # the accelerator the runs found: no probe again
    assert all(r.output.is_relative_to(work) for r in m.asked)

    f = stages["crash"]["figures"]
    assert (f["kills_per_minute"], f["in_flight_share"], f["recovery_p50_s"]) == (4.5, 1.0, 11.65)
    assert stages["crash"]["run_dir"] == str(work / "runs" / "run1") and stages["crash"]["seconds"] == 101.0
    assert stages["close-fds"]["figures"]["closes_per_minute"] == 47.5
    e = stages["edit"]["figures"]
    assert (e["edit_to_verdict_s"], e["build_s"], e["build_reused"], e["patch_status"]) == (103.0, 41.5, False, "applied")
    b = stages["bisect"]["figures"]
    head = git(m.tree, "rev-parse", "HEAD")
    assert (b["step_result"], b["step_build_s"], b["unchanged_from"], b["unchanged_result"]) == ("good", 0.0, head, "good")
    assert b["step_s"] >= 0 and b["unchanged_step_s"] >= 0
    logged = [json.loads(line) for line in (work / "bisect" / "steps.jsonl").read_text().splitlines()]
    assert [(s["phase"], s["reused_from"], len(s["runs"])) for s in logged] == [("check-good", None, 1),
                                                                                ("bisect", head, 0)]
    c = stages["cold"]["figures"]
    assert (c["build_s"], c["source_s"], c["ccache"]) == (0.0, 1.2, bench.ccache_note({}, shutil.which("ccache") is not None))
    v = stages["vng-ratio"]["figures"]
    assert (v["ours_build_s"], v["theirs_build_s"], v["ratio"]) == (500.0, 2000.0, 0.25)
    assert (v["ours_config_s"], v["theirs_config_s"], v["ours_symbols"], v["theirs_symbols"]) == (2.0, 10.0, 2, 4)
    assert result["machine"]["accel"] == "tcg" and result["machine"]["jobs"] == 2 and result["mode"] == "full"

    table = bench.markdown(result)
    for text in ("| crash, warm | verdict, wall time | PASS, 101.0 s |", "| | kills per minute | 4.5 (5 kills in 67.2 s",
                 "| | kills in flight | 5 of 5 (100%) |", "recovery per death (kernel ledger) | p50 11.7 s",
                 "| | closes per minute | 47.5 (40 closes in 50.5 s", "| | edit to verdict | 103.0 s (patch applied) |",
                 f"taken from {head[:12]}, not built", "| | ours / theirs | 0.25 |"):
        assert text in table.replace("|  |", "| |"), text


def test_the_vng_ratio_stage_runs_these_command_lines(tmp_path, canned):
    m = Machine(tmp_path, canned)
    result = bench.bench(options(tmp_path, short=True, vng_ratio=True), m, env={})
    d = the_work_dir(result) / "vng-ratio"
    ours, theirs, tree = d / "ours-build", d / "theirs-build", str(m.tree)
    assert [argv for argv, _, _ in m.commands] == [
        ["make", "-C", tree, f"O={ours}", "-j2", "olddefconfig"],
        ["make", "-C", tree, f"O={ours}", "-j2", "bzImage"],
        ["/venv/bin/vng", "--kconfig", "--verbose", f"O={theirs}"],
        ["make", "-C", tree, f"O={theirs}", "-j2", "LOCALVERSION=-virtme"]]
    assert [cwd for _, cwd, _ in m.commands] == [None, None, m.tree, None]  # vng --kconfig from the source tree
    assert m.commands[2][2]["PATH"].startswith(str(Path(__import__("sys").executable).parent))  # the venv's first
    assert not any("ccache" in " ".join(argv) for argv, _, _ in m.commands)  # both builds alike, from nothing
    assert not ours.exists() and not theirs.exists()  # the builds are removed, their logs kept
    assert sorted(p.name for p in d.iterdir()) == ["ours_build.log", "ours_config.log", "theirs_build.log",
                                                   "theirs_config.log"]


def test_a_build_of_the_vng_stage_that_fails_is_untestable(tmp_path, canned, validator):
    m = Machine(tmp_path, canned, failing_command="LOCALVERSION=-virtme")
    result = bench.bench(options(tmp_path, short=True, vng_ratio=True), m, env={})
    v = result["stages"]["vng-ratio"]
    assert result["exit_code"] == 125 and v["exit_code"] == 125 and "exit 2" in v["problem"]
    assert (v["figures"]["ours_build_s"], v["figures"]["theirs_build_s"], v["figures"]["ratio"]) == (500.0, None, None)
    assert errors(validator, result) == []


def test_a_missing_vng_is_bad_input_before_any_run(tmp_path, canned):
    m = Machine(tmp_path, canned, vng_missing=True)
    with pytest.raises(InputError, match="vng"):
        bench.bench(options(tmp_path, vng_ratio=True), m, env={})
    assert m.asked == []


def test_short_plans_three_kills_and_three_closes_and_nothing_else(tmp_path, canned, validator):
    m = Machine(tmp_path, canned)
    result = bench.bench(options(tmp_path, short=True), m, env={})
    assert [(r.scenario, r.kills, r.fd_closes, r.series) for r in m.asked] == [
        ("crash", bench.SHORT_KILLS, None, None), ("close-fds", None, bench.SHORT_CLOSES, None)]
    assert (bench.SHORT_KILLS, bench.SHORT_CLOSES) == (3, 3)
    assert result["mode"] == "short" and result["exit_code"] == 0 and m.commands == []
    assert errors(validator, result) == []
    for name in ("edit", "bisect", "cold", "vng-ratio"):
        s = result["stages"][name]
        assert not s["ran"] and s["skipped"] and set(s["figures"]) == set(bench.FIGURES[name])
        assert all(v is None for v in s["figures"].values()), name
        assert (s["seconds"], s["run_dir"], s["verdict"], s["exit_code"]) == (None, None, None, None)
    assert "--short" in result["stages"]["edit"]["skipped"] and "--cold" in result["stages"]["cold"]["skipped"]
    assert "| one-line edit to verdict | not run | --short (--edit runs it) |" in bench.markdown(result)


def test_short_with_edit_and_bisect_runs_them_with_three_kills(tmp_path, canned):
    m = Machine(tmp_path, canned)
    result = bench.bench(options(tmp_path, short=True, edit=True, bisect=True), m, env={})
    assert [(r.scenario, r.kills, r.series is not None, r.tree) for r in m.asked] == [
        ("crash", 3, False, None), ("close-fds", None, False, None), ("crash", 3, True, None), ("crash", 3, False, m.tree)]
    assert result["stages"]["edit"]["ran"] and result["stages"]["bisect"]["ran"]
    assert not result["stages"]["cold"]["ran"]


def untestable(stage_scenario):
    def answer(req, r):
        if req.scenario != stage_scenario:
            return r
        return error_results(Status.UNTESTABLE, "boot failed: the guest's shell never answered\nconsole tail",
                             request=req.to_json(), reproduce=req.reproduce(), kernel={},
                             timing={"build_s": 0.0, "build_reused": True, "total_s": 190.0})
    return answer


def test_an_untestable_run_gives_125_and_bench_json_is_still_written(tmp_path, canned, validator):
    m = Machine(tmp_path, canned, answer=untestable("close-fds"))
    result = bench.bench(options(tmp_path, short=True, edit=True), m, env={})
    assert result["exit_code"] == 125
    s = result["stages"]["close-fds"]
    assert (s["ran"], s["verdict"], s["exit_code"]) == (True, "UNTESTABLE", 125)
    assert s["problem"] == "boot failed: the guest's shell never answered"
    assert s["figures"]["build_reused"] is True and s["figures"]["closes_per_minute"] is None
    assert result["stages"]["edit"]["ran"]  # the next stage still ran: a boot failure may not repeat
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written == result and errors(validator, written) == []
    assert "| | problem | boot failed: the guest's shell never answered |" in bench.markdown(result).replace("|  |", "| |")


def test_refused_input_stops_the_stages_after_it(tmp_path, canned, validator):
    def answer(req, r):
        return error_results(Status.ERROR, "mkfs.erofs not found (Debian package erofs-utils)", request=req.to_json(),
                             reproduce=req.reproduce(), kernel={})
    m = Machine(tmp_path, canned, answer=answer)
    result = bench.bench(options(tmp_path), m, env={})
    assert result["exit_code"] == 2 and len(m.asked) == 1
    assert result["stages"]["crash"]["exit_code"] == 2
    assert result["stages"]["close-fds"]["skipped"] == "not run: the crash stage's input was refused"
    assert result["stages"]["cold"]["skipped"].startswith("not asked")
    assert errors(validator, result) == []


def test_a_failing_kernel_is_exit_1_and_inconclusive_is_a_run(tmp_path, canned):
    def answer(req, r):
        r["verdict"] = "FAIL" if req.scenario == "crash" else "INCONCLUSIVE"
        return r
    result = bench.bench(options(tmp_path, short=True), Machine(tmp_path, canned, answer=answer), env={})
    assert result["exit_code"] == 1
    assert (result["stages"]["crash"]["exit_code"], result["stages"]["close-fds"]["exit_code"]) == (1, 0)


def test_a_stage_that_cannot_get_its_tree_says_why(tmp_path, canned, validator):
    m = Machine(tmp_path, canned)

    @contextlib.contextmanager
    def no_tree(req):
        raise InputError(f"{tmp_path}: --ref, --series and bisect need a git repository")
        yield
    m.checked_out = no_tree
    result = bench.bench(options(tmp_path, short=True, bisect=True), m, env={})
    s = result["stages"]["bisect"]
    assert (s["ran"], s["exit_code"]) == (True, 2) and "need a git repository" in s["problem"]
    assert result["exit_code"] == 2 and errors(validator, result) == []


def test_the_schema_refuses_what_is_not_bench_json(tmp_path, canned, validator):
    """The negative controls: a skipped stage with a figure, a stage without its figures, no machine."""
    good = bench.bench(options(tmp_path, short=True), Machine(tmp_path, canned), env={})
    assert errors(validator, good) == []
    bad = copy.deepcopy(good)
    bad["stages"]["cold"]["figures"]["build_s"] = 500.0
    assert errors(validator, bad)
    bad = copy.deepcopy(good)
    del bad["stages"]["crash"]["figures"]["kills_per_minute"]
    assert errors(validator, bad)
    bad = copy.deepcopy(good)
    bad["stages"]["crash"]["ran"] = False
    bad["stages"]["crash"]["skipped"] = "why not"
    assert errors(validator, bad)  # a skipped stage has no run directory, no seconds, no figures
    bad = copy.deepcopy(good)
    del bad["machine"]
    assert errors(validator, bad)
    bad = copy.deepcopy(good)
    bad["stages"]["crash"]["figures"]["recovery_from"] = "a guess"
    assert errors(validator, bad)


# -- the parts -----------------------------------------------------------------------------------------------

def test_the_edit_is_one_comment_line_after_the_spdx_line(tmp_path):
    """Applied by `git am` as a run's --series is, on a file that begins as ondemand.c does."""
    text = f"{bench.SPDX_LINE}\n{bench.SECOND_LINE}\n#include <linux/uio.h>\n#include \"internal.h\"\n\nint x;\n"
    repo = tmp_path / "linux"
    (repo / "fs" / "cachefiles").mkdir(parents=True)
    (repo / bench.EDITED_FILE).write_text(text)
    git(repo, "init", "--quiet")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    mbox = tmp_path / "edit.mbox"
    mbox.write_text(bench.edit_mbox("20260101-000000-bench"))
    (patch,) = series.load(mbox)
    assert patch.files == (bench.EDITED_FILE,) and "bench 20260101-000000-bench" in patch.subject
    git(repo, "am", "--quiet", "--committer-date-is-author-date", str(mbox))
    lines = (repo / bench.EDITED_FILE).read_text().splitlines()
    assert lines[0] == bench.SPDX_LINE and lines[2:] == text.splitlines()[1:]
    assert lines[1].startswith("/* failover-harness bench 20260101-000000-bench") and lines[1].endswith("*/")
    assert git(repo, "diff", "--numstat", "HEAD~1", "HEAD") == f"1\t0\t{bench.EDITED_FILE}"
    assert bench.edit_mbox("a") != bench.edit_mbox("b")  # each bench's is a new commit: never a reused build


def test_the_machine_from_proc(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8148044 kB\nMemFree:  1 kB\n")
    from datetime import datetime, timezone
    m = bench.machine("kvm", 2, cpuinfo, meminfo, datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc))
    assert {k: m[k] for k in ("cpu_model", "cpus", "memory_mib", "accel", "jobs", "date")} == {
        "cpu_model": "AMD EPYC 7B13", "cpus": 2, "memory_mib": 7957, "accel": "kvm", "jobs": 2,
        "date": "2026-12-03T10:00:00+00:00"}
    assert m["kernel"] and m["python"].startswith("3.")
    real = bench.machine(None, 1)  # this machine's, whatever it is
    assert real["cpus"] >= 1 and real["memory_mib"]


def test_ccache_is_said_to_serve_only_when_its_directory_is_named():
    assert bench.ccache_note({}, True).startswith("none (CCACHE_DIR not set")
    assert "from the environment" in bench.ccache_note({"CCACHE_DIR": "/srv/ccache"}, True)
    assert bench.ccache_note({"CCACHE_DIR": "/srv/ccache"}, False).startswith("none (CCACHE_DIR set")


def test_bad_bench_input_is_exit_2(tmp_path):
    (tmp_path / "file").write_text("")
    assert cli.main(["bench", "--short", "--output", str(tmp_path / "file" / "bench")]) == 2
    assert cli.main(["bench", "--kills", "3"]) == 2  # the bench's faults are its own
    assert cli.main(["bench", "--tree", str(tmp_path), "--package", "x"]) == 2
