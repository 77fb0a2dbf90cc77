"""harness.campaign.submit: a series on both sides with the same seeds, repeats where they
matter, the base's results reused, known issues, and what it writes (report.md, junit.xml,
reply.eml, checks.json), with a stand-in for the child `failover-harness run` that writes the
results.json each side and seed is given (the real runs take minutes and a VM)."""
import copy
import email
import email.policy
import json
import random
import shlex
import shutil
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

import jsonschema
import pytest

from harness import cli
from harness.campaign import ci, matrix, submit
from harness.campaign.basecache import BaseRunCache, BaseRunKey
from harness.judge import patchwork, report
from harness.judge.results import error_results
from harness.judge.checks import Status
from helpers import FIXTURES, git, init_repo

BASE_COMMIT = "b" * 40
SCENARIOS = list(matrix.DEFAULT_SCENARIOS)
FINDING = {"kind": "warning", "line_no": 7, "text": "WARNING: CPU: 0 PID: 1 at fs/cachefiles/ondemand.c:1",
           "title": "WARNING in cachefiles_ondemand_daemon_read", "frames": ["cachefiles_ondemand_daemon_read"],
           "fingerprint": "0123456789ab"}
COVER = ("From cover Mon Sep 17 00:00:00 2001\nFrom: Patch Author <author@example.org>\n"
         "To: netfs@lists.linux.dev\nCc: Maintainer <maint@example.org>\n"
         "Subject: [PATCH v2 0/1] cachefiles: a fix\nMessage-Id: <cover.v2@example.org>\n"
         "References: <cover.v1@example.org>\n\nThe cover letter.\n\n")
PATCH = ("From patch Mon Sep 17 00:00:00 2001\nFrom: Patch Author <author@example.org>\n"
         "Subject: [PATCH v2 1/1] cachefiles: x\nMessage-Id: <patch1.v2@example.org>\n"
         "In-Reply-To: <cover.v2@example.org>\n\n---\ndiff --git a/fs/x.c b/fs/x.c\n--- a/fs/x.c\n"
         "+++ b/fs/x.c\n@@ -1 +1 @@\n-a\n+b\n")


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict:
    """A captured PASS and a captured FAIL, judged once for the module."""
    tmp = tmp_path_factory.mktemp("templates")
    return {v: report.evaluate(shutil.copytree(FIXTURES / name, tmp / name))
            for v, name in (("PASS", "run-crash-5-kills"), ("FAIL", "run-no-failover"))}


def arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


class TwoSidedHarness:
    """Plays `failover-harness run` for both sides: `outcome(scenario, side, seed)` says what the
    run gives: PASS, FAIL (the template's checks), FAIL:check,..., FAIL+finding, INCONCLUSIVE,
    UNTESTABLE or ERROR (exit 2, as for a series that does not apply)."""

    def __init__(self, templates: dict, outcome) -> None:
        self.templates, self.outcome, self.calls = templates, outcome, []

    def __call__(self, argv: list[str], log: Path) -> tuple[int, str]:
        self.calls.append(argv)
        scenario, seed, ref = arg(argv, "--scenario"), int(arg(argv, "--seed")), arg(argv, "--ref")
        side = "series" if "--series" in argv else "base"
        what = self.outcome(scenario, side, seed)
        commit = ref if ref and len(ref) == 40 else BASE_COMMIT
        provenance = {"source": "tree:/src/linux", "base": {"commit": commit, "describe": "v6.12"},
                      "head": "c" * 40 if side == "series" else commit,
                      "patches": [{"subject": "cachefiles: x", "status": "applied"}] if side == "series" else []}
        kills = arg(argv, "--kills")
        request = {"scenario": scenario, "seed": seed, "flavor": "plain", "kills": int(kills) if kills else None}
        if what in ("UNTESTABLE", "ERROR"):
            results = error_results(Status(what), f"{what.lower()}: the build failed", request=request,
                                    reproduce="failover-harness run", kernel={"flavor": "plain"},
                                    provenance=provenance)
        else:
            what, plus, extra = what.partition("+")
            verdict, _, checks = what.partition(":")
            results = copy.deepcopy(self.templates["PASS" if verdict == "INCONCLUSIVE" else verdict])
            results["verdict"] = verdict
            if verdict == "INCONCLUSIVE":
                results["missing_evidence"] = ["kills on a request in flight: 10% < 50%"]
                results["missing_checks"] = ["in-flight"]
            if checks:
                results["failed_checks"] = checks.split(",")
                results["reasons"] = [f"{c} failed" for c in results["failed_checks"]]
                results["reason_checks"] = list(results["failed_checks"])
            if extra == "finding":
                results["findings"] = [FINDING]
                results["failed_checks"] = [*results["failed_checks"], "splat"]
                results["reasons"] = [*results["reasons"], "kernel console: 1 finding(s)"]
                results["reason_checks"] = [*results["reason_checks"], "splat"]
            results.update(scenario=scenario, request={**results["request"], **request}, provenance=provenance)
        run_dir = Path(arg(argv, "--output")) / "20260101-000000-run"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(results))
        return {"ERROR": 2}.get(what, Status(results["verdict"]).exit_code), ""

    def runs(self, side: str, scenario: str | None = None) -> list[list[str]]:
        return [a for a in self.calls if ("--series" in a) == (side == "series")
                and (scenario is None or arg(a, "--scenario") == scenario)]


def submit_args(tmp_path: Path, *extra: str, mbox_text: str = COVER + PATCH) -> object:
    mbox = tmp_path / "v2.mbx"
    mbox.write_text(mbox_text)
    return cli.parser().parse_args(["submit", "--mbox", str(mbox), "--base", "v6.12", "--tree", "/src/linux",
                                    "--output", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), *extra])


def outputs(tmp_path: Path) -> tuple[str, email.message.EmailMessage, list[dict]]:
    out = tmp_path / "runs"
    eml = email.message_from_bytes((out / "reply.eml").read_bytes(), policy=email.policy.default)
    return (out / "report.md").read_text(), eml, json.loads((out / "checks.json").read_text())


def every(verdict: str, **special):
    """Every run gives `verdict`, but (scenario, side) pairs in `special` (as "scenario/side")."""
    return lambda scenario, side, seed: special.get(f"{scenario}/{side}", verdict)


def test_every_scenario_runs_once_a_side_with_the_same_seed_when_both_pass(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS"))
    args = submit_args(tmp_path, "--seed", "7", "--tested-by", "Tess Ter <tess@example.org>")
    assert submit.run_submit(args, runner=fake) == 0
    base, series = fake.runs("base"), fake.runs("series")
    assert [arg(a, "--scenario") for a in base] == [arg(a, "--scenario") for a in series] == SCENARIOS
    assert {arg(a, "--seed") for a in fake.calls} == {"7"}
    assert all(arg(a, "--series") == str((tmp_path / "v2.mbx").resolve()) for a in series)
    assert all(arg(a, "--tree") == "/src/linux" for a in fake.calls)
    # the first run's provenance fixes the base for every later run (a ref such as HEAD moves)
    assert arg(base[0], "--ref") == "v6.12" and all(arg(a, "--ref") == BASE_COMMIT for a in fake.calls[1:])
    md, eml, checks = outputs(tmp_path)
    assert md.startswith("### failover-harness on v2.mbx: ✅ pass\n")
    assert "| crash | good 0/1 | good 0/1 | ✅ pass |" in md
    assert f"```sh\n{submit.submit_command(args)}\n```" in md
    assert "Tested-by: Tess Ter <tess@example.org>" in eml.get_content()
    assert [c["state"] for c in checks] == ["success"] * len(SCENARIOS)
    root = ET.fromstring((tmp_path / "runs" / "junit.xml").read_text())
    assert [s.get("name") for s in root.findall("testsuite")][:2] == ["crash, base, seed 7", "crash, series, seed 7"]


def test_a_regression_is_repeated_on_both_sides_and_named(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/series": "FAIL:checksum,read-error"}))
    assert submit.run_submit(submit_args(tmp_path, "--tested-by", "Tess Ter <tess@example.org>"), runner=fake) == 1
    assert [arg(a, "--seed") for a in fake.runs("base", "crash")] == ["1", "2", "3", "4", "5"]
    assert [arg(a, "--seed") for a in fake.runs("series", "crash")] == ["1", "2", "3", "4", "5"]
    assert len(fake.runs("series", "close-fds")) == 1  # a scenario that agrees is not repeated
    md, eml, checks = outputs(tmp_path)
    assert md.startswith("### failover-harness on v2.mbx: ❌ regression")
    assert "| crash | good 0/5 | bad 5/5 | ❌ regression | the series fails 5 of 5 runs (100%), the base none" in md
    assert "failed: checksum, read-error" in md
    text = eml.get_content()
    assert "regression" in text and "Tested-by" not in text
    crash = next(c for c in checks if c["context"] == "failover-harness-plain-crash")
    assert crash["state"] == "fail" and crash["description"].startswith("regression: base good 0/5, series bad 5/5")


def test_fixed(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/base": "FAIL"}))
    assert submit.run_submit(submit_args(tmp_path), runner=fake) == 0
    md, _, checks = outputs(tmp_path)
    assert "| crash | bad 5/5 | good 0/5 | ✅ fixed |" in md
    assert checks[0]["state"] == "success"


def rate_of(rate: float, seed_of_stand_in: int):
    """A series that fails at `rate`, decided by a seeded generator per run seed: the same every time."""
    def outcome(scenario, side, seed):
        if side == "series" and scenario == "crash" and random.Random(seed_of_stand_in * 1000 + seed).random() < rate:
            return "FAIL"
        return "PASS"
    return outcome


def test_a_flaky_series_is_reported_with_its_measured_rate_never_as_a_pass(tmp_path, templates):
    stand_in = rate_of(0.2, 0)
    fails = [stand_in("crash", "series", s) for s in range(1, 6)]
    assert fails == ["FAIL", "PASS", "PASS", "PASS", "PASS"]  # the stand-in's draw: the first run fails, 1 of 5
    fake = TwoSidedHarness(templates, stand_in)
    assert submit.run_submit(submit_args(tmp_path, "--tested-by", "Tess Ter <tess@example.org>"), runner=fake) == 125
    md, eml, checks = outputs(tmp_path)
    assert "| crash | good 0/5 | flaky 1/5 | ⚠️ flaky | flaky, not a clean pass: the series fails 1 of 5 runs (20%)" in md
    assert "the base is good with confidence 0.6723" in md  # 1 - 0.8^5: against a 20% failure rate
    assert "Tested-by" not in eml.get_content()
    assert checks[0]["state"] == "warning" and checks[0]["description"].startswith("flaky: base good 0/5, series flaky 1/5")


@pytest.mark.parametrize("what, code", [("UNTESTABLE", 125), ("ERROR", 2)])
def test_an_infrastructure_failure_is_untestable_never_a_regression(what, code, tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/series": what}))
    assert submit.run_submit(submit_args(tmp_path), runner=fake) == code
    assert len(fake.runs("series", "crash")) == len(fake.runs("base", "crash")) == 1  # a failed build repeats itself
    md, eml, checks = outputs(tmp_path)
    assert "| crash | good 0/1 | untestable | ⚠️ untestable | the series could not be tested" in md
    assert "regression" not in md and checks[0]["state"] == "warning"


def test_inconclusive_is_neither_a_pass_nor_a_failure_and_gets_no_tested_by(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/base": "INCONCLUSIVE"}))
    assert submit.run_submit(submit_args(tmp_path, "--tested-by", "Tess Ter <tess@example.org>"), runner=fake) == 125
    md, eml, checks = outputs(tmp_path)
    assert "| crash | inconclusive 0/5 | good 0/5 | ⚠️ inconclusive |" in md
    assert "Tested-by" not in eml.get_content() and checks[0]["state"] == "warning"


def known_issues(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "known-issues.json"
    path.write_text(json.dumps({"known_issues": list(entries)}))
    return path


def test_a_pre_existing_finding_that_is_known_is_shown_as_known(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/base": "FAIL:stall+finding",
                                                       "crash/series": "FAIL:stall+finding"}))
    known = known_issues(tmp_path, {"fingerprint": FINDING["fingerprint"], "reason": "reported upstream"},
                         {"check": "stall", "reason": "TCG is slow", "expires": "2026-12-31"})
    args = submit_args(tmp_path, "--known-issues", str(known))
    assert submit.run_submit(args, runner=fake, today=date(2026, 6, 1)) == 0
    assert len(fake.runs("series", "crash")) == 2  # both sides certainly bad after 2: nothing more to learn
    md, eml, checks = outputs(tmp_path)
    assert "| crash | bad 2/2 | bad 2/2 | ✅ pre-existing (known) |" in md
    assert f"(`{FINDING['fingerprint']}`), crash (base, 2x), crash (series, 2x); known: reported upstream" in md
    assert "known: reported upstream" in eml.get_content()
    assert checks[0]["state"] == "success" and "(known issues only)" in checks[0]["description"]
    # the same file a year on: the entry with an expiry no longer holds, and says so
    shutil.rmtree(tmp_path / "runs")
    assert submit.run_submit(args, runner=fake, today=date(2027, 6, 1)) == 125
    md, _, checks = outputs(tmp_path)
    assert "| crash | bad 2/2 | bad 2/2 | ⚠️ pre-existing |" in md
    assert "- `stall`: known issue expired on 2026-12-31, news again: TCG is slow" in md
    assert checks[0]["state"] == "warning"


def test_the_base_failing_differently_is_not_pre_existing(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/base": "FAIL:stall", "crash/series": "FAIL:stall+finding"}))
    assert submit.run_submit(submit_args(tmp_path), runner=fake) == 1
    md, _, _ = outputs(tmp_path)
    assert "| crash | bad 2/2 | bad 2/2 | ❌ still-failing-differently |" in md


@pytest.fixture
def tree(tmp_path) -> Path:
    """A git repository to resolve --base in (nothing is built from it here)."""
    return init_repo(tmp_path / "linux", {"Makefile": "VERSION = 6\n"})


def test_the_base_is_not_run_again_for_the_same_commit_seed_scenario_and_flavour(tmp_path, templates, tree):
    commit = git(tree, "rev-parse", "HEAD")
    argv = ["submit", "--mbox", str(tmp_path / "v2.mbx"), "--base", "HEAD", "--tree", str(tree),
            "--cache", str(tmp_path / "cache")]
    (tmp_path / "v2.mbx").write_text(COVER + PATCH)
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/series": "FAIL"}))
    assert submit.run_submit(cli.parser().parse_args([*argv, "--output", str(tmp_path / "one")]), runner=fake) == 1
    assert all(arg(a, "--ref") == commit for a in fake.calls)  # resolved before the first run
    assert len(fake.runs("base")) == len(SCENARIOS) + 4
    # v3 of the series on the same base: every base run comes from the cache
    fake.calls.clear()
    assert submit.run_submit(cli.parser().parse_args([*argv, "--output", str(tmp_path / "two")]), runner=fake) == 1
    assert fake.runs("base") == [] and len(fake.runs("series")) == len(SCENARIOS) + 4
    md = (tmp_path / "two" / "report.md").read_text()
    assert f"{len(SCENARIOS) + 4} base run(s) were reused" in md and "| crash, base, seed 2, cached |" in md
    assert (tmp_path / "two" / "01-linux_plain_crash" / "base-seed1" / "cached-results.json").is_file()
    # another seed is another base run
    fake.calls.clear()
    submit.run_submit(cli.parser().parse_args([*argv, "--seed", "2", "--output", str(tmp_path / "three")]), runner=fake)
    assert [arg(a, "--seed") for a in fake.runs("base", "close-fds")] == ["2"]


def test_the_cache_key_names_everything_the_base_run_depends_on(tmp_path, templates):
    key = BaseRunKey(BASE_COMMIT, "crash", 1, "plain", "console")
    others = [BaseRunKey("a" * 40, "crash", 1, "plain", "console"), BaseRunKey(BASE_COMMIT, "close-fds", 1, "plain", "console"),
              BaseRunKey(BASE_COMMIT, "crash", 2, "plain", "console"), BaseRunKey(BASE_COMMIT, "crash", 1, "debug", "console"),
              BaseRunKey(BASE_COMMIT, "crash", 1, "plain", "ssh"),
              BaseRunKey(BASE_COMMIT, "crash", 1, "plain", "console", harness_version="0.0.1"),
              BaseRunKey(BASE_COMMIT, "crash", 1, "plain", "console", kills=10)]
    assert len({k.digest for k in [key, *others]}) == len(others) + 1
    assert set(key.to_json()) == {"base_commit", "scenario", "seed", "flavor", "transport", "kills", "harness_version"}
    cache = BaseRunCache(tmp_path)
    results = copy.deepcopy(templates["PASS"])
    results["provenance"]["base"]["commit"] = BASE_COMMIT
    results["request"].update(seed=1, kills=None)
    assert cache.put(key, results) and cache.get(key) == json.loads(json.dumps(results))
    assert all(cache.get(k) is None for k in others)
    # a run with other kills than its key's is not kept under it
    assert not cache.put(others[-1], results) and cache.get(others[-1]) is None
    # only a judged run of that very base, without a patch, is kept
    series = copy.deepcopy(results)
    series["provenance"]["patches"] = [{"subject": "x", "status": "applied"}]
    other = BaseRunKey(BASE_COMMIT, "crash", 3, "plain", "console")
    assert not cache.put(other, series) and cache.get(other) is None
    untestable = error_results(Status.UNTESTABLE, "boot failed", request={"seed": 3}, reproduce="", kernel={},
                               provenance=results["provenance"])
    assert not cache.put(other, untestable)
    # an entry whose key is not the one asked for (a hand-edited file, a collision) is a miss
    entry = json.loads(cache.path(key).read_text())
    cache.path(other).write_text(json.dumps(entry))
    assert cache.get(other) is None


def test_checks_json_follows_its_schema(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/series": "FAIL", "close-fds/base": "UNTESTABLE"}))
    submit.run_submit(submit_args(tmp_path, "--target-url", "https://ci.example.org/job/1"), runner=fake)
    schema = json.loads(patchwork.SCHEMA_FILE.read_text())
    checks = json.loads((tmp_path / "runs" / "checks.json").read_text())
    jsonschema.validate(checks, schema)
    assert [c["state"] for c in checks[:2]] == ["fail", "warning"]
    assert all(c["target_url"] == "https://ci.example.org/job/1" for c in checks)
    for bad in ({"state": "pending"}, {"context": "failover harness crash"}, {"target_url": "ci.example.org"},
                {"colour": "red"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate([{**checks[0], **bad}], schema)


def test_reply_threads_under_the_cover_letter_in_72_columns(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS", **{"crash/series": "FAIL:checksum+finding"}))
    submit.run_submit(submit_args(tmp_path, "--tested-by", "Tess Ter <tess@example.org>"), runner=fake)
    raw = (tmp_path / "runs" / "reply.eml").read_bytes()
    eml = email.message_from_bytes(raw, policy=email.policy.default)
    assert eml["Subject"] == "Re: [PATCH v2 0/1] cachefiles: a fix"
    assert eml["In-Reply-To"] == "<cover.v2@example.org>"
    assert eml["References"] == "<cover.v1@example.org> <cover.v2@example.org>"
    assert eml["To"] == "Patch Author <author@example.org>"
    assert eml["Cc"] == "netfs@lists.linux.dev, Maintainer <maint@example.org>"
    assert eml["From"] == "Tess Ter <tess@example.org>" and eml["Message-ID"].endswith("@failover-harness.invalid>")
    assert eml.get_content_type() == "text/plain" and not eml.is_multipart()
    text = eml.get_content()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 72
    assert max(len(line) for line in raw.decode().split("\n\n", 1)[1].splitlines()) <= 72
    # the table of both sides, the finding with its title and fingerprint, one command
    assert any(line.split() == ["crash", "good", "0/5", "bad", "5/5", "regression"] for line in lines)
    assert f"- {FINDING['title']} [{FINDING['fingerprint']}]" in lines
    assert "(b4 am -o - cover.v2@example.org > v2.mbx)" in " ".join(lines)
    command = text[text.index("  failover-harness submit"):].split("\n\n", 1)[0]
    # as a shell reads it: backslash-newline joins the lines
    assert shlex.split(command.replace("\\\n", "")) == shlex.split(submit.submit_command(submit_args(tmp_path), "v2.mbx"))
    assert "Tested-by" not in text


def test_a_series_without_a_cover_letter_is_answered_under_its_first_patch(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS"))
    submit.run_submit(submit_args(tmp_path, mbox_text=PATCH), runner=fake)
    _, eml, _ = outputs(tmp_path)
    assert eml["Subject"] == "Re: [PATCH v2 1/1] cachefiles: x" and eml["In-Reply-To"] == "<patch1.v2@example.org>"
    assert "Tested-by" not in eml.get_content()  # none was asked for


def test_the_transport_reaches_every_run_and_the_command(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS"))
    args = submit_args(tmp_path, "--transport", "ssh", "--repeat", "3")
    submit.run_submit(args, runner=fake)
    assert all(arg(a, "--transport") == "ssh" for a in fake.calls)
    assert submit.submit_command(args).endswith("--seed 1 --transport ssh --repeat 3")


def test_only_the_chosen_scenarios_run_and_the_kills_reach_the_scenarios_that_kill(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS"))
    args = submit_args(tmp_path, "--scenario", "crash", "--scenario", "close-fds", "--scenario", "crash",
                       "--kills", "10")
    assert submit.run_submit(args, runner=fake) == 0
    # in the order given, once each, on both sides
    assert [arg(a, "--scenario") for a in fake.runs("base")] == ["crash", "close-fds"]
    assert [arg(a, "--scenario") for a in fake.runs("series")] == ["crash", "close-fds"]
    assert [arg(a, "--kills") for a in fake.runs("base", "crash") + fake.runs("series", "crash")] == ["10", "10"]
    # close-fds has no kills of its own: it is not given any (it would test something else)
    assert all("--kills" not in a for a in fake.runs("base", "close-fds") + fake.runs("series", "close-fds"))
    _, _, checks = outputs(tmp_path)
    assert [c["context"] for c in checks] == ["failover-harness-plain-crash", "failover-harness-plain-close-fds"]
    # the control: without the options, every default scenario with its own kills
    fake.calls.clear()
    shutil.rmtree(tmp_path / "runs")
    assert submit.run_submit(submit_args(tmp_path), runner=fake) == 0
    assert [arg(a, "--scenario") for a in fake.runs("series")] == SCENARIOS  # (close-fds' base run: cached)
    assert not any("--kills" in a for a in fake.calls)


def test_the_reproducing_command_spells_the_scenarios_and_kills_it_was_given(tmp_path, templates):
    args = submit_args(tmp_path, "--scenario", "crash", "--scenario", "close-fds", "--kills", "10", "--repeat", "2")
    command = submit.submit_command(args)
    assert "--base v6.12 --scenario crash --scenario close-fds --tree /src/linux --kills 10 --seed 1" in command
    again = cli.parser().parse_args(shlex.split(command)[1:])
    assert submit.scenarios_of(again) == ("crash", "close-fds") and again.kills == 10 and again.repeat == 2
    # the reply's command is that one, as a shell reads it back
    fake = TwoSidedHarness(templates, every("PASS"))
    submit.run_submit(args, runner=fake)
    text = outputs(tmp_path)[1].get_content()
    said = text[text.index("  failover-harness submit"):].split("\n\n", 1)[0]
    assert shlex.split(said.replace("\\\n", "")) == shlex.split(submit.submit_command(args, "v2.mbx"))
    # the control: the default scenarios, in their order, and the scenarios' own kills are not spelled
    plain = submit.submit_command(submit_args(tmp_path))
    assert "--scenario" not in plain and "--kills" not in plain
    same = submit.submit_command(submit_args(tmp_path, *[w for s in SCENARIOS for w in ("--scenario", s)]))
    assert same == plain


def test_a_narrowed_submission_says_so_and_a_default_one_does_not(tmp_path, templates):
    fake = TwoSidedHarness(templates, every("PASS"))
    submit.run_submit(submit_args(tmp_path, "--scenario", "crash", "--scenario", "close-fds", "--kills", "10",
                                  "--tested-by", "Tess Ter <tess@example.org>"), runner=fake)
    md, eml, _ = outputs(tmp_path)
    note = ("Not the default submission: only crash, close-fds of the 7 default scenarios; "
            "10 kills in each scenario that kills, not its own number.")
    assert f"\n\n{note}\n\n" in md
    text = eml.get_content()
    assert " ".join(text.split()).count(note) == 1 and max(len(line) for line in text.splitlines()) <= 72
    assert text.index("Not the default submission") < text.index("\nscenario ")  # before the table
    assert "Tested-by: Tess Ter <tess@example.org>" in text  # what ran passed: the note says what did not run
    # each narrowing alone, and scenarios beyond the default set
    assert submit.scope_note(tuple(SCENARIOS), 10) == \
        "Not the default submission: 10 kills in each scenario that kills, not its own number."
    assert submit.scope_note(("crash", "no-failover"), None) == \
        "Not the default submission: scenarios crash, no-failover, not the 7 default ones."
    assert submit.scope_note(tuple(reversed(SCENARIOS)), None) is None  # the same set, in another order
    # the control: a default submission says nothing of the kind
    shutil.rmtree(tmp_path / "runs")
    submit.run_submit(submit_args(tmp_path), runner=fake)
    md, eml, _ = outputs(tmp_path)
    assert "Not the default submission" not in md and "Not the default submission" not in eml.get_content()


def test_a_base_run_with_other_kills_is_never_reused(tmp_path, templates, tree):
    argv = ["submit", "--mbox", str(tmp_path / "v2.mbx"), "--base", "HEAD", "--tree", str(tree),
            "--cache", str(tmp_path / "cache"), "--scenario", "crash", "--scenario", "close-fds"]
    (tmp_path / "v2.mbx").write_text(COVER + PATCH)
    fake = TwoSidedHarness(templates, every("PASS"))

    def base_runs(*extra: str) -> list[list[str]]:
        fake.calls.clear()
        out = tmp_path / f"runs-{len(list(tmp_path.glob('runs-*')))}"
        submit.run_submit(cli.parser().parse_args([*argv, *extra, "--output", str(out)]), runner=fake)
        return fake.runs("base")

    assert [arg(a, "--scenario") for a in base_runs("--kills", "10")] == ["crash", "close-fds"]
    # the scenarios' own kills: crash runs again; close-fds, given no kills either way, is reused
    assert [(arg(a, "--scenario"), arg(a, "--kills")) for a in base_runs()] == [("crash", None)]
    assert [(arg(a, "--scenario"), arg(a, "--kills")) for a in base_runs("--kills", "20")] == [("crash", "20")]
    assert base_runs("--kills", "10") == [] and base_runs() == []  # each one is kept under its own kills
    # an entry kept before the kills were part of the key is a miss (run again), not an error
    cache = BaseRunCache(tmp_path / "cache")
    key = BaseRunKey(git(tree, "rev-parse", "HEAD"), "crash", 1, "plain", "console")
    entry = json.loads(cache.path(key).read_text())
    del entry["key"]["kills"]
    cache.path(key).write_text(json.dumps(entry))
    assert cache.get(key) is None
    assert [arg(a, "--scenario") for a in base_runs()] == ["crash"]


@pytest.mark.parametrize("content", ["", "From x\nSubject: [PATCH 0/1] cover\n\nwords only\n"])
def test_a_submission_without_a_patch_is_refused_once_before_any_run(content, tmp_path, monkeypatch, capsys):
    mbox = tmp_path / "empty.mbx"
    mbox.write_text(content)
    monkeypatch.setattr(ci, "run_cell", lambda *a, **kw: pytest.fail("a run ran"))
    assert cli.main(["submit", "--mbox", str(mbox), "--base", "v6.12", "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == (f"failover-harness: {mbox}: no patch in it "
                   "(an mbox as `git format-patch --stdout` or `b4 am` writes)\n")


@pytest.mark.parametrize("extra, message", [
    (["--repeat", "1"], "--repeat must be 2..100 (got 1)"),
    (["--scenario", "crash", "--scenario", "crash-point"], "unknown scenario 'crash-point' (one of crash, close-fds,"),
    (["--scenario", "close-fds", "--kills", "10"], "--kills 10: none of the scenarios (close-fds) has kills of its own"),
    (["--tested-by", "tess@example.org"], "--tested-by 'tess@example.org': expected \"Name <address>\""),
    (["--target-url", "ci.example.org/1"], "--target-url 'ci.example.org/1': expected an http"),
    (["--known-issues", "/nonexistent.json"], "--known-issues /nonexistent.json: No such file or directory"),
    (["--known-issues", "BAD"], "entry 1: fingerprint 'xyz' is not 12 hex digits"),
])
def test_bad_options_are_one_line_and_exit_2_before_any_run(extra, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "v2.mbx").write_text(COVER + PATCH)
    bad = known_issues(tmp_path, {"fingerprint": "xyz", "reason": "r"})
    extra = [str(bad) if x == "BAD" else x for x in extra]
    monkeypatch.setattr(ci, "run_cell", lambda *a, **kw: pytest.fail("a run ran"))
    assert cli.main(["submit", "--mbox", str(tmp_path / "v2.mbx"), "--base", "v6.12",
                     "--output", str(tmp_path / "runs"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_the_harness_version_in_the_key_moves_with_any_change_of_its_sources(tmp_path):
    """`__version__` moves by hand; a base run judged by a harness changed since (its judge, a
    scenario, a guest script) must be a miss. Generated files (bytecode, tool caches) are not
    sources. Control: the same tree digests the same."""
    import shutil
    import harness
    tree = tmp_path / "tree"
    for d in harness.SOURCE_DIRS:
        shutil.copytree(harness.ROOT / d, tree / d, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    digest = harness.source_digest.__wrapped__
    before = digest(tree)
    assert digest(tree) == before and len(before) == 16
    (tree / "guest_scripts" / "__pycache__").mkdir(exist_ok=True)
    (tree / "guest_scripts" / "__pycache__" / "keeper.cpython-311.pyc").write_bytes(b"\0")
    (tree / "harness" / ".mypy_cache").mkdir()
    (tree / "harness" / ".mypy_cache" / "x.json").write_text("{}")
    assert digest(tree) == before
    judge = tree / "harness" / "judge" / "ledger.py"
    judge.write_text(judge.read_text() + "\n# a judge changed\n")
    assert digest(tree) != before
    assert BaseRunKey(BASE_COMMIT, "crash", 1, "plain", "console").harness_version == harness.version_with_source()
