"""Bisection's pure parts: what a step's runs make of a commit, how sure a "good" is, and the
command's refusals (exit 2) before any build."""
import pytest

from harness.campaign import bisect
from harness.errors import EXIT_USAGE, InputError
from harness.request import RunRequest
from helpers import git, harness


@pytest.mark.parametrize("verdicts, result", [
    (["PASS"], "good"), (["PASS", "PASS", "PASS"], "good"),
    (["PASS", "FAIL"], "bad"), (["FAIL"], "bad"), (["UNTESTABLE", "FAIL"], "bad"),
    (["PASS", "INCONCLUSIVE"], "skip"), (["UNTESTABLE"], "skip"), ([], "skip"),
])
def test_any_failure_is_bad_and_never_an_untestable_one(verdicts, result):
    assert bisect.step_result(verdicts) == result
    assert bisect.STEP_EXIT[result] == {"good": 0, "bad": 1, "skip": 125}[result]


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
