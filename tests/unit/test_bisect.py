"""Bisection's parts: what a step's runs make of a commit and how many it runs, how sure a
"good" is, which steps take an earlier verdict without a build (on a real repository, with a
stand-in for the runs), and the command's refusals (exit 2) before any build."""
from dataclasses import replace

import pytest

from harness import cli
from harness.campaign import bisect
from harness.errors import EXIT_USAGE, InputError, UntestableError
from harness.kernel import git as kgit, objects
from harness.request import RunRequest
from helpers import commit_on, git, harness

P, F, I, U, E = "PASS", "FAIL", "INCONCLUSIVE", "UNTESTABLE", "ERROR"


def play(outcomes, max_runs, rate=None):
    """The runs a step makes when they come out as `outcomes`, in order, and its result."""
    done = []
    while bisect.another_run(done, max_runs, rate):
        done.append(outcomes[len(done)])
    return done, bisect.step_result(done, max_runs)


@pytest.mark.parametrize("outcome, result", [(P, "good"), (F, "bad"), (I, "skip"), (U, "skip"), (E, "skip")])
@pytest.mark.parametrize("rate", [None, 0.2, 1.0])
def test_one_run_a_commit_by_default_as_ever(outcome, result, rate):
    """--repeat 1: one run, whatever it was; FAIL is bad, PASS good, anything else a skip."""
    assert play([outcome] * 3, 1, rate) == ([outcome], result)
    assert bisect.step_result([outcome]) == result
    assert bisect.STEP_EXIT[result] == {"good": 0, "bad": 1, "skip": 125}[result]


@pytest.mark.parametrize("outcomes, max_runs, rate, runs, result, state", [
    ([F] * 5, 5, None, 2, "bad", "bad"),  # FAIL then FAIL: bad after 2 runs, whatever the rest would be
    ([F, F, P], 5, 0.5, 2, "bad", "bad"),
    ([P, F, F, P, P], 5, None, 3, "bad", "bad"),  # a pass first: then the failures
    ([F] * 24, 24, None, 4, "bad", "bad"),  # max(2, 24/6): 4 failures make it certain
    ([F] + [P] * 4, 5, None, 5, "skip", "flaky"),  # FAIL then passes: flaky, a skip, never bad
    ([F] + [P] * 4, 5, 1.0, 5, "skip", "flaky"),  # (a failure is repeated, whatever the rate)
    ([F, P, F] + [P] * 9, 12, None, 3, "bad", "bad"),  # 2 failures are bad at any n up to 12
    ([F, P, F] + [P] * 15, 18, None, 18, "skip", "flaky"),  # up to 18, 3 are: bad at 3 runs, not yet certain
    ([P] * 20, 20, None, 20, "good", "good"),  # the rate on bad commits not known yet: every run
    ([P] * 20, 20, 0.5, 5, "good", "good"),  # 1 - 0.5^5 = 0.97 ≥ 0.95 (0.94 after 4)
    ([P] * 20, 20, 1.0, 1, "good", "good"),
    ([P] * 20, 20, 0.1, 20, "good", "good"),  # 29 passes would be needed: capped
    ([E] * 5, 5, None, 1, "skip", "untestable"),  # nothing judged: a build failure repeats itself
    ([P, U, E, P, P, P], 5, 0.5, 5, "good", "good"),  # infrastructure is never a failure...
    ([F, U, E, U, E], 5, None, 5, "skip", "flaky"),  # ...nor a second one
    ([P, I, F, F], 5, None, 2, "skip", "inconclusive"),  # it can no longer be good
    ([F, I, F], 5, None, 3, "bad", "bad"),
])
def test_more_runs_adapt_to_what_they_show(outcomes, max_runs, rate, runs, result, state):
    done, got = play(outcomes, max_runs, rate)
    assert (len(done), got) == (runs, result) and done == outcomes[:runs]
    assert bisect.step_state(done, max_runs) == state


def runs(*verdicts):
    return [{"verdict": v} for v in verdicts]


def test_confidence_from_the_failure_rate_on_bad_commits():
    steps = [{"result": "bad", "runs": runs("FAIL")}, {"result": "bad", "runs": runs("PASS", "PASS", "FAIL")},
             {"result": "good", "runs": runs("PASS", "PASS", "PASS")}]
    c = bisect.confidence(steps, repeat=3)
    assert c["failure_rate_on_bad"] == 0.5 and c["runs_on_bad"] == 4
    assert c["good_is_good"] == pytest.approx(1 - 0.5 ** 3, abs=1e-4)
    assert bisect.confidence([{"result": "good", "runs": runs("PASS")}], 1)["good_is_good"] is None


def test_first_bad_commit_from_git_bisect_run_output():
    out = "running ...\nabc123def is the first bad commit\ncommit abc123def\n"
    assert bisect._first_bad(out) == "abc123def"
    assert bisect._first_bad("There are only 'skip'ped commits left to test.\n") is None


def test_step_command_carries_the_scenario_options(tmp_path):
    req = RunRequest(kills=8, tree=tmp_path, flavor="debug", daemon_threads=2)
    argv = bisect.step_argv(req, 3, tmp_path / "steps.jsonl")
    assert argv[1:4] == ["-m", "harness.cli", "_bisect-step"]
    for pair in (["--kills", "8"], ["--flavor", "debug"], ["--daemon-threads", "2"], ["--repeat", "3"],
                 ["--tree", str(tmp_path)]):
        assert any(argv[i:i + 2] == pair for i in range(len(argv))), pair


@pytest.mark.parametrize("args, message", [
    (["--good", "a", "--bad", "b", "--repeat", "0"], "--repeat must be 1..100"),
    (["--good", "a", "--bad", "b", "--tree", "/nonexistent"], "no such directory"),
    (["--good", "a"], "the following arguments are required: --bad"),
])
def test_bad_bisect_input_exits_2(tmp_path, args, message):
    proc = harness("bisect", *args, "--output", str(tmp_path), "--cache", str(tmp_path / "cache"), timeout=60)
    assert proc.returncode == EXIT_USAGE and message in proc.stderr and "Traceback" not in proc.stderr


def test_bisect_on_a_tree_that_is_not_a_repository_exits_2(tmp_path):
    tree = tmp_path / "linux"
    (tree / "arch").mkdir(parents=True)
    (tree / "Kconfig").write_text("")
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\n")
    proc = harness("bisect", "--tree", str(tree), "--good", "a", "--bad", "b", "--output", str(tmp_path),
                   "--cache", str(tmp_path / "cache"), timeout=60)
    assert proc.returncode == EXIT_USAGE and "need a git repository" in proc.stderr


@pytest.fixture
def history(tmp_path):
    """A kernel tree (as the harness recognises one) in a repository: v1, then HEAD on main; a
    side branch from v1 beside it."""
    repo = tmp_path / "linux"
    (repo / "arch").mkdir(parents=True)
    (repo / "Kconfig").write_text("")
    (repo / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\n")
    git(repo, "init", "--quiet", "--initial-branch", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    git(repo, "tag", "v1")
    for branch in ("main", "side"):
        git(repo, "checkout", "--quiet", "-B", branch, "v1")
        (repo / "Kconfig").write_text(f"# {branch}\n")
        git(repo, "commit", "--quiet", "-am", branch)
    git(repo, "checkout", "--quiet", "main")
    return repo


@pytest.mark.parametrize("good, bad, message", [
    ("v1", "v1", "--good v1 and --bad v1 are the same commit"),
    ("main~1", "v1", "--good main~1 and --bad v1 are the same commit"),  # two names of one commit
    ("main", "v1", "--good main is not an ancestor of --bad v1"),  # the ends swapped
    ("side", "main", "--good side is not an ancestor of --bad main"),  # another branch
    ("v1", "nowhere", "'nowhere' is not a commit"),
])
def test_ends_that_leave_nothing_to_bisect_are_refused(history, good, bad, message):
    with pytest.raises(InputError, match=message):
        bisect.ends(history, good, bad)


def test_ends_are_the_commits_they_name(history):
    assert bisect.ends(history, "v1", "main") == (git(history, "rev-parse", "v1"), git(history, "rev-parse", "main"))


@pytest.mark.parametrize("good, bad, message", [
    ("HEAD", "main", "are the same commit"), ("main", "v1", "is not an ancestor of --bad v1")])
def test_bisect_refuses_such_ends_in_one_line_before_any_build(history, tmp_path, good, bad, message):
    proc = harness("bisect", "--tree", str(history), "--good", good, "--bad", bad, "--output", str(tmp_path / "runs"),
                   "--cache", str(tmp_path / "cache"), timeout=60)
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("failover-harness: ") and message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert list((tmp_path / "runs").iterdir()) == []  # no bisection directory, no step run


def test_a_good_is_as_sure_as_its_fewest_passes_and_infrastructure_is_no_failure():
    steps = [{"result": "bad", "runs": runs("FAIL", "ERROR", "FAIL")},
             {"result": "good", "runs": runs("PASS", "PASS")}, {"result": "good", "runs": runs("PASS", "UNTESTABLE", "PASS", "PASS")},
             {"result": "good", "runs": [], "reused_from": "abc"}]
    c = bisect.confidence(steps, repeat=5)
    assert (c["failure_rate_on_bad"], c["runs_on_bad"], c["passes_on_least_good"]) == (1.0, 2, 2)
    assert c["good_is_good"] == 1.0


# -- what a commit would build for the scenarios, and the steps that take an earlier verdict ------

KERNEL = {
    "Makefile": "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 0\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n",
    "fs/cachefiles/ondemand.c": "int ondemand;\n",
    "fs/erofs/fscache.c": "int erofs;\n",
    "fs/netfs/fscache_cookie.c": "int cookie;\n",
    "fs/Makefile": "obj-$(CONFIG_CACHEFILES) += cachefiles/\n",
    "include/linux/netfs.h": "struct netfs;\n",
    "include/linux/fs.h": "struct file;\n",
    "mm/filemap.c": "int filemap;\n",
    "lib/xarray.c": "int xa;\n",
}


@pytest.fixture
def kernel(tmp_path):
    """A tree with the paths compared and some that are not, in one commit (no
    include/trace/events/erofs.h: a path the fingerprint has as absent)."""
    repo = tmp_path / "linux"
    for path, text in KERNEL.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git(repo, "init", "--quiet", "--initial-branch", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    return repo


def appended(path, line="/* more */\n"):
    return {path: lambda text: text + line}


def fingerprint(repo, commit, flavor="plain"):
    return objects.fingerprint(repo, commit, flavor)


def test_the_fingerprint_changes_with_the_compared_paths_only(kernel):
    base = git(kernel, "rev-parse", "HEAD")
    fp = fingerprint(kernel, base)
    assert fp == fingerprint(kernel, base) and len(fp) == 16  # a missing path is stable: "absent" both times
    elsewhere = commit_on(kernel, base, "mm, xarray, VFS", {**appended("mm/filemap.c"), **appended("lib/xarray.c"),
                                                           **appended("include/linux/fs.h")})
    name = commit_on(kernel, base, "the release's name", {"Makefile": lambda t: t.replace("Opossum", "Possum")})
    assert fingerprint(kernel, elsewhere) == fingerprint(kernel, name) == fp
    for path in ("fs/cachefiles/ondemand.c", "fs/erofs/fscache.c", "fs/netfs/fscache_cookie.c", "fs/Makefile",
                 "include/linux/netfs.h"):
        assert fingerprint(kernel, commit_on(kernel, base, path, appended(path))) != fp, path
    sublevel = commit_on(kernel, base, "6.12.1", {"Makefile": lambda t: t.replace("SUBLEVEL = 0", "SUBLEVEL = 1")})
    assert fingerprint(kernel, sublevel) != fp
    assert fingerprint(kernel, base, "debug") != fp  # another config


def test_a_path_that_appears_changes_the_fingerprint(kernel):
    base = git(kernel, "rev-parse", "HEAD")
    (kernel / "include/trace/events").mkdir(parents=True)
    (kernel / "include/trace/events/erofs.h").write_text("TRACE_EVENT(erofs_lookup);\n")
    git(kernel, "add", "-A")
    git(kernel, "commit", "--quiet", "-m", "erofs tracepoints")
    assert fingerprint(kernel, "HEAD") != fingerprint(kernel, base)


def test_object_ids_are_gits_and_a_missing_path_has_none(kernel):
    ids = kgit.object_ids(kernel, "HEAD", ["fs/cachefiles", "include/linux/netfs.h", "fs/fscache"])
    assert ids == {"fs/cachefiles": git(kernel, "rev-parse", "HEAD:fs/cachefiles"),
                   "include/linux/netfs.h": git(kernel, "rev-parse", "HEAD:include/linux/netfs.h")}
    assert objects.version_lines(KERNEL["Makefile"]) == {"VERSION": "6", "PATCHLEVEL": "12", "SUBLEVEL": "0",
                                                         "EXTRAVERSION": ""}
    assert kgit.file_at(kernel, "HEAD", "nowhere.c") is None


class Runs:
    """A stand-in for the runs of a step: each verdict in turn, counted; no build, no VM."""

    def __init__(self, tmp_path, *verdicts):
        self.dir, self.verdicts, self.asked = tmp_path, list(verdicts), []

    def __call__(self, req):
        self.asked.append(req)
        run_dir = self.dir / f"run{len(self.asked)}"
        verdict = self.verdicts[len(self.asked) - 1]
        reasons = [] if verdict in (P, F) else [f"{verdict.lower()}: why\nmore"]
        return run_dir, {"verdict": verdict, "reasons": reasons, "findings": [], "timing": {"build_s": 60.0}}


@pytest.fixture
def bisection(kernel, tmp_path):
    """The kernel's base, a commit that changes only mm/ and one that changes fs/cachefiles, a
    request for its tree and a steps log."""
    base = git(kernel, "rev-parse", "HEAD")
    mm = commit_on(kernel, base, "mm: a change", appended("mm/filemap.c"))
    cachefiles = commit_on(kernel, mm, "cachefiles: a change", appended("fs/cachefiles/ondemand.c"))
    return kernel, (base, mm, cachefiles), RunRequest(tree=kernel, output=tmp_path / "out"), tmp_path / "steps.jsonl"


def step_at(repo, commit, *args, **kw):
    git(repo, "checkout", "--quiet", commit)
    return bisect.run_step(*args, **kw)


def test_a_step_that_builds_what_an_earlier_one_built_takes_its_verdict(bisection, tmp_path, capsys):
    repo, (base, mm, cachefiles), req, log = bisection
    ran = Runs(tmp_path, F, F, P)
    assert step_at(repo, base, req, 1, "check-bad", log, runner=ran).result == "bad"
    step = step_at(repo, mm, req, 1, "bisect", log, runner=ran)
    assert (step.result, step.reused_from, step.runs, len(ran.asked)) == ("bad", base, (), 1)
    assert bisect.STEP_EXIT[step.result] == 1
    out = capsys.readouterr().out
    assert f"bisect {mm[:12]} bad (unchanged from {base[:12]}: bad, not built) mm: a change" in out
    assert "mm/, lib/xarray.c" in out and "not to matter" in out
    assert step_at(repo, cachefiles, req, 1, "bisect", log, runner=ran).reused_from is None and len(ran.asked) == 2
    assert ran.asked[-1].output == log.parent / "steps"
    logged = bisect.load_steps(log)
    assert [(s["commit"], s["result"], s["reused_from"], len(s["runs"])) for s in logged] == [
        (base, "bad", None, 1), (mm, "bad", base, 0), (cachefiles, "bad", None, 1)]
    assert logged[0]["fingerprint"] == logged[1]["fingerprint"] != logged[2]["fingerprint"]
    assert logged[0]["fingerprint"] == objects.fingerprint(repo, base, "plain")


def test_the_ends_are_always_run_and_unchanged_steps_too_when_told(bisection, tmp_path):
    repo, (base, mm, _), req, log = bisection
    ran = Runs(tmp_path, P, P, P)
    step_at(repo, base, req, 1, "check-good", log, runner=ran)
    assert step_at(repo, mm, req, 1, "check-bad", log, runner=ran).reused_from is None  # (not a bisect step)
    assert step_at(repo, mm, req, 1, "bisect", log, skip_unchanged=False, runner=ran).reused_from is None
    assert len(ran.asked) == 3


def test_only_a_decided_verdict_that_all_agree_on_is_taken(bisection, tmp_path):
    repo, (base, mm, _), req, log = bisection
    ran = Runs(tmp_path, U, F, P, P)
    step_at(repo, base, req, 1, "bisect", log, runner=ran)  # a skip is not a verdict to take
    assert step_at(repo, mm, req, 1, "bisect", log, runner=ran).reused_from is None
    step_at(repo, base, req, 1, "check-good", log, runner=ran)  # the same objects, good: the cause is elsewhere
    assert step_at(repo, mm, req, 1, "bisect", log, runner=ran).reused_from is None and len(ran.asked) == 4


def test_a_step_repeats_up_to_its_most_with_the_rate_of_the_bad_steps_before_it(bisection, tmp_path):
    repo, (base, mm, cachefiles), req, log = bisection
    ran = Runs(tmp_path, F, P, F, *[P] * 10)
    bad = step_at(repo, base, req, 10, "check-bad", log, runner=ran)  # the rate: 2 of 3
    assert ([r.verdict for r in bad.runs], bad.result) == ([F, P, F], "bad")
    good = step_at(repo, cachefiles, req, 10, "check-good", log, runner=ran)
    assert (len(good.runs), good.result, good.state) == (3, "good", "good")  # 1 - (1/3)^3 = 0.96
    c = bisect.confidence(bisect.load_steps(log), 10)
    assert c["passes_on_least_good"] == 3 and c["good_is_good"] == pytest.approx(1 - (1 / 3) ** 3, abs=1e-4)


def test_a_flaky_step_is_a_skip_said_with_its_rate(bisection, tmp_path, capsys):
    repo, (base, *_), req, log = bisection
    step = step_at(repo, base, req, 3, "bisect", log, runner=Runs(tmp_path, F, P, P))
    assert (step.result, step.state) == ("skip", "flaky") and bisect.STEP_EXIT[step.result] == 125
    assert "FAIL, PASS, PASS; flaky: 1 of 3 runs failed (33%)" in capsys.readouterr().out


def test_the_summary_shows_an_unchanged_step_apart(bisection, tmp_path):
    repo, (base, mm, cachefiles), req, log = bisection
    ran = Runs(tmp_path, F, P, F)
    for commit in (base, mm, cachefiles):
        step_at(repo, commit, req, 1, "bisect", log, runner=ran)
    steps = bisect.load_steps(log)
    text = bisect.summary({"first_bad": {"commit": base, "subject": "base"}, "source": "tree", "good": cachefiles,
                           "bad": base, "repeat": 1, "steps": steps, "total_s": 30.0, "replay": "replay.txt",
                           "confidence": bisect.confidence(steps, 1)})
    assert "3 steps (1 unchanged, not built)" in text
    assert f"bisect     {mm[:12]} bad =(unchanged from {base[:12]}: bad, not built) mm: a change" in text
    assert f"bisect     {base[:12]} bad  (0s, build 60s; FAIL) base" in text
    assert "= unchanged: fs/cachefiles/, fs/erofs/, fs/netfs/" in text and "--no-skip-unchanged builds every step" in text


def test_the_step_command_carries_no_skip_unchanged(tmp_path, monkeypatch):
    req = RunRequest(tree=tmp_path)
    assert bisect.NO_SKIP_UNCHANGED not in bisect.step_argv(req, 1, tmp_path / "steps.jsonl")
    argv = bisect.step_argv(req, 1, tmp_path / "steps.jsonl", skip_unchanged=False)
    assert cli.parser().parse_args(argv[3:]).no_skip_unchanged
    told = []
    monkeypatch.setattr(bisect, "run_step", lambda *a, **kw: told.append(kw) or bisect.Step(
        "bisect", "c", "s", "good", (), 0.0))
    assert cli.main(argv[3:]) == 0 and told == [{"skip_unchanged": False}]
    assert cli.parser().parse_args(["bisect", "--good", "a", "--bad", "b", "--no-skip-unchanged"]).no_skip_unchanged


@pytest.mark.parametrize("verdicts, expected, error, message", [
    ([F, P, P], "bad", InputError, "--bad abc is flaky (0s, build -s; FAIL, PASS, PASS; flaky: 1 of 3 runs failed"),
    ([F, P, P], "good", InputError, "--good abc is flaky"),
    ([U], "good", UntestableError, "good end abc is untestable (why)"),
    ([P], "bad", InputError, "--bad abc passes the scenario (r)"),
    ([F, F], "good", InputError, "--good abc fails the scenario (r)"),
])
def test_ends_that_are_not_what_they_must_be_are_refused(verdicts, expected, error, message, tmp_path):
    step_runs = tuple(bisect.StepRun("r", v, ("why",), (), None, 0.0) for v in verdicts)
    step = bisect.Step(f"check-{expected}", "abc", "s", bisect.step_result(verdicts, 3), step_runs, 0.0,
                       str(bisect.step_state(verdicts, 3)))
    refusal = bisect.end_refusal(step, expected, tmp_path)
    assert isinstance(refusal, error) and message in str(refusal)
    assert bisect.end_refusal(replace(step, result=expected, state=expected), expected, tmp_path) is None
