"""Mutation testing's pure parts: reading mutant patches, naming the check that killed one, the
command's verdict (a survivor, or a baseline that does not pass, fails it)."""
import re
import shutil
from dataclasses import replace

import pytest

from harness.campaign import mutants
from harness.kernel import series
from harness.judge import report
from harness.errors import InputError
from harness.campaign.mutants import Outcome
from helpers import FIXTURES, git

TRAILERS = ("Mutant-Undoes: cachefiles: add restore command\nMutant-Scenario: crash\nMutant-Flavor: plain\n"
            "Mutant-Faults: 8\nMutant-Expect: stall\n")


def write_mutant(tmp_path, name, trailers=TRAILERS):
    repo = tmp_path / "repo"
    if not repo.exists():
        repo.mkdir()
        git(repo, "init", "--quiet")
        (repo / "ondemand.c").write_text("int restore(void) { return 0; }\n")
        git(repo, "add", "-A")
        git(repo, "commit", "--quiet", "-m", "base")
    (repo / "ondemand.c").write_text((repo / "ondemand.c").read_text() + f"/* {name} */\n")
    git(repo, "commit", "--quiet", "-am", f"mutant: {name}\n\nWhy it is wrong.\n\n{trailers}")
    out = tmp_path / "mutants"
    out.mkdir(exist_ok=True)
    (out / f"{name}.patch").write_text(git(repo, "format-patch", "--stdout", "-1", strip=False))
    return out


def test_mutant_trailers_are_read(tmp_path):
    (m,) = mutants.load(write_mutant(tmp_path, "restore-noop"))
    assert (m.name, m.scenario, m.flavor, m.faults, m.expect) == ("restore-noop", "crash", "plain", 8, "stall")
    assert m.undoes == "cachefiles: add restore command" and m.subject == "mutant: restore-noop"


@pytest.mark.parametrize("bad, message", [
    ("Mutant-Scenario: crash\nMutant-Flavor: plain\nMutant-Faults: 8\nMutant-Expect: stall\n", "Mutant-Undoes"),
    (TRAILERS.replace("crash", "explode"), "Mutant-Scenario 'explode'"),
    (TRAILERS.replace("plain", "tiny"), "Mutant-Flavor 'tiny'"),
    (TRAILERS.replace("Faults: 8", "Faults: many"), "Mutant-Faults 'many'"),
    (TRAILERS.replace("stall", "luck"), "Mutant-Expect 'luck'"),
    (TRAILERS.replace("stall", "hang"), "Mutant-Expect 'hang'"),  # the slug before checks were types
])
def test_a_mutant_with_wrong_trailers_is_refused(tmp_path, bad, message):
    directory = write_mutant(tmp_path, "broken", bad)
    with pytest.raises(InputError, match=message):
        mutants.load(directory)


def plain(patch: str, unified: bool = False) -> str:
    """A `git format-patch` mail as a person writes one: no mbox From_ line, no --- and diffstat,
    and with `unified` no git header either (a `diff -u`)."""
    mail = patch.split("\n", 1)[1]
    mail = re.sub(r"\n---\n.*?\n\n(?=diff --git )", "\n", mail, count=1, flags=re.S)
    return re.sub(r"^(diff --git|index) .*\n", "", mail, flags=re.M) if unified else mail


@pytest.mark.parametrize("unified", [False, True])
def test_a_plain_mail_mutant_is_read_and_applied_as_git_am_takes_it(tmp_path, unified):
    """A shipped mutant made plain is the same mutant; a small one made plain applies as the
    one-patch series `mutate` makes of it."""
    shipped = mutants.parse(mutants.MUTANT_DIR / "restore-noop.patch")
    mine = tmp_path / "restore-noop.patch"
    mine.write_text(plain(shipped.path.read_text(), unified))
    assert mutants.parse(mine) == replace(shipped, path=mine)
    directory = write_mutant(tmp_path, "small")
    text = plain((directory / "small.patch").read_text(), unified)
    assert not text.startswith("From ") and "\n---\n" not in text and ("diff --git" in text) != unified
    (directory / "small.patch").write_text(text)
    (m,) = mutants.load(directory)
    repo = tmp_path / "repo"
    git(repo, "checkout", "--quiet", "--detach", "HEAD~1")
    (result,) = series.apply(repo, series.load(m.path), tmp_path)
    assert (result.status, result.files) == ("applied", ("ondemand.c",))
    assert git(repo, "log", "-1", "--format=%s") == m.subject == "mutant: small"


@pytest.mark.parametrize("content, message", [
    ("diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-a\n+b\n", "a bare diff, not a mail"),
    ("From: x <x@example.org>\nSubject: mutant: words only\n\n" + TRAILERS, "no patch in it"),
    ("Subject words\nFrom: x\n\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-a\n+b\n", "no patch in it"),  # not a mail
])
def test_what_git_am_refuses_is_no_mutant(tmp_path, content, message):
    (tmp_path / "m.patch").write_text(content)
    with pytest.raises(InputError, match=message):
        mutants.load(tmp_path)


def test_a_mutant_is_one_patch(tmp_path):
    directory = write_mutant(tmp_path, "twice")
    write_mutant(tmp_path, "twice")
    (directory / "twice.patch").write_text(git(tmp_path / "repo", "format-patch", "--stdout", "-2", strip=False))
    with pytest.raises(InputError, match="twice.patch: 2 patches; a mutant is one"):
        mutants.load(directory)


def test_unknown_mutant_name_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown mutant"):
        mutants.load(write_mutant(tmp_path, "a"), ("b",))


def test_cheapest_first():
    plain = mutants.Mutant("p", None, "", "", "crash", "plain", 20, "stall")
    debug = mutants.Mutant("d", None, "", "", "crash", "debug", 5, "splat")
    cheap = mutants.Mutant("c", None, "", "", "close-fds", "plain", 6, "read-error")
    fewer = mutants.Mutant("f", None, "", "", "close-fds", "plain", 3, "read-error")
    assert [m.name for m in sorted((plain, debug, cheap, fewer), key=lambda m: m.cost)] == ["p", "f", "c", "d"]


def judged(tmp_path, fixture):
    shutil.copytree(FIXTURES / fixture, tmp_path / fixture)
    return report.evaluate(tmp_path / fixture)


def test_killed_by_names_the_failing_checks(tmp_path):
    assert mutants.killed_by(judged(tmp_path, "run-crash-5-kills")) == ()  # a PASS kills nothing
    assert "read-error" in mutants.killed_by(judged(tmp_path, "run-no-failover"))
    # the checks results.json names, not the words of the reasons
    assert mutants.killed_by({"verdict": "FAIL", "reasons": ["anything at all"], "failed_checks": ["stall"]}) == ("stall",)
    assert mutants.killed_by({"verdict": "INCONCLUSIVE", "reasons": [], "failed_checks": [],
                              "missing_evidence": ["reopens: 0, need 1"]}) == ("missing-evidence",)
    assert mutants.killed_by({"verdict": "FAIL", "reasons": ["x", "y"], "failed_checks": ["splat", "run-completed"],
                              "missing_evidence": ["reopens: 0, need 1"]}) == ("splat", "run-completed")
    assert mutants.killed_by({"verdict": "UNTESTABLE", "reasons": ["boot failed"], "failed_checks": []}) == ()


def outcome(name, kind, verdict, killed_by=()):
    return Outcome(name, kind, "crash", "plain", 8, verdict, killed_by, None, (), 10.0, 60.0, None)


def test_verdict_passes_only_when_all_killed_and_baselines_pass():
    chosen = ()
    ok = mutants.verdict([outcome("base", "baseline", "PASS"), outcome("m1", "mutant", "FAIL", ("stall",)),
                          outcome("m2", "mutant", "INCONCLUSIVE", ("missing-evidence",))], chosen)
    assert ok["verdict"] == "PASS" and ok["score"] == 1.0 and ok["survivors"] == []

    survivor = mutants.verdict([outcome("base", "baseline", "PASS"), outcome("m1", "mutant", "PASS")], chosen)
    assert survivor["verdict"] == "FAIL" and survivor["survivors"] == ["m1"] and survivor["score"] == 0.0

    bad_base = mutants.verdict([outcome("base", "baseline", "FAIL"), outcome("m1", "mutant", "FAIL", ("stall",))],
                               chosen)
    assert bad_base["verdict"] == "FAIL" and "does not pass" in bad_base["reasons"][0]

    broken = mutants.verdict([outcome("base", "baseline", "PASS"), outcome("m1", "mutant", "UNTESTABLE")], chosen)
    assert broken["verdict"] == "UNTESTABLE" and "did not build or boot: m1" in broken["reasons"][0]
    assert "survived" in mutants.summary({**survivor, "total_s": 1.0})


@pytest.mark.parametrize("scenario, kills, fd_closes", [
    ("crash", 8, None), ("close-fds", None, 8), ("combined", 8, 8), ("crash-points", None, None)])
def test_faults_are_the_scenarios_own_kind(scenario, kills, fd_closes):
    from harness.request import RunRequest
    req = mutants.faulted(RunRequest(), scenario, 8, "plain", None)
    assert (req.kills, req.fd_closes) == (kills, fd_closes)
    plan = req.plan
    assert plan.kills == (8 if kills else plan.kills) and plan.fd_closes == (8 if fd_closes else plan.fd_closes)


def test_every_shipped_mutant_expects_a_check_the_verdict_has():
    """Mutant-Expect names a verdict check's slug (or missing-evidence), as killed_by reports it;
    a mutant whose held requests are lost is caught by the held-requests check."""
    from harness.judge.checks import VERDICT_CHECKS
    shipped = {m.name: m.expect for m in mutants.load()}
    assert set(shipped.values()) <= {c.slug for c in VERDICT_CHECKS} | {mutants.MISSING_EVIDENCE}
    assert shipped["fd-release-fails-reads"] == "held-requests"
