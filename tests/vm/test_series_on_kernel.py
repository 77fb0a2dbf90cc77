"""A patch series on the real Debian tree (and on a user's clone of it), with patches made by
`git format-patch`: applied, already present, not applying; the user's checkout untouched."""
import json
import subprocess

import pytest

from harness.kernel import source
from harness.errors import EXIT_USAGE
from harness.request import default_cache
from harness.kernel.series import SeriesError
from helpers import commit_on, git, harmless, harness, results_of

pytestmark = pytest.mark.vm

DOC = "Documentation/filesystems/caching/cachefiles.rst"
DAEMON = "fs/cachefiles/daemon.c"
LINE = " * Written by David Howells (dhowells@redhat.com)\n"  # a line of daemon.c's header comment


@pytest.fixture(scope="module")
def debian():
    src = source.debian_package(default_cache())
    base = git(src.tree, "rev-parse", source.base_tag(src.tree.parent.name))
    return src.tree, base


def format_patch(repo, *revs, out):
    out.write_text(git(repo, "format-patch", "--stdout", "--thread", *revs, strip=False))
    return out


def two_harmless(repo, base):
    c1 = commit_on(repo, base, "Documentation: cachefiles: a note", harmless(DOC, "a note"))
    return c1, commit_on(repo, c1, "cachefiles: a comment in the daemon", harmless(DAEMON, "a comment"))


def already_present(repo, base):
    """A patch whose change the base has already: it re-adds a line a parent commit removed."""
    removed = commit_on(repo, base, "cachefiles: drop a comment line", {DAEMON: lambda t: t.replace(LINE, "", 1)})
    return commit_on(repo, removed, "cachefiles: restore the comment line", {DAEMON: lambda t: t.replace(
        " */\n\n#include <linux/module.h>", LINE + " */\n\n#include <linux/module.h>", 1)})


def conflicting(repo, base):
    """A patch written against a line the base does not have."""
    first = commit_on(repo, base, "cachefiles: reword a comment", {DAEMON: lambda t: t.replace(LINE, " * By David Howells\n", 1)})
    return commit_on(repo, first, "cachefiles: reword it again", {DAEMON: lambda t: t.replace(" * By David Howells\n",
                                                                                              " * Author: David Howells\n", 1)})


def test_series_applies_with_cover_letter_and_message_ids(debian, tmp_path):
    repo, base = debian
    c1, c2 = two_harmless(repo, base)
    mbox = tmp_path / "series.mbox"
    mbox.write_text(git(repo, "format-patch", "--stdout", "--thread", "--cover-letter", f"{base}..{c2}", strip=False))
    with source.prepare(default_cache(), "linux-source-6.12", None, None, mbox, tmp_path) as (src, prov):
        assert [p.status for p in prov.patches] == ["applied", "applied"]
        assert [p.subject for p in prov.patches] == ["Documentation: cachefiles: a note",
                                                     "cachefiles: a comment in the daemon"]
        assert all(p.message_id and "@" in p.message_id for p in prov.patches)
        assert prov.base_commit == base and src.commit == prov.head == prov.patches[-1].commit
        assert git(repo, "rev-parse", f"{prov.head}^{{tree}}") == git(repo, "rev-parse", f"{c2}^{{tree}}")
        first_head = prov.head
    # the same series on the same base: the same commits (identity and dates come from the mails)
    with source.prepare(default_cache(), "linux-source-6.12", None, None, mbox, tmp_path) as (src, prov):
        assert prov.head == first_head


def test_patch_already_in_the_base_is_detected_not_reapplied(debian, tmp_path):
    repo, base = debian
    c1, _ = two_harmless(repo, base)
    series = tmp_path / "series"
    series.mkdir()
    format_patch(repo, "-1", c1, out=series / "0001-note.patch")
    format_patch(repo, "-1", already_present(repo, base), out=series / "0002-restore-line.patch")
    with source.prepare(default_cache(), "linux-source-6.12", None, None, series, tmp_path) as (src, prov):
        assert [(p.status, p.subject) for p in prov.patches] == [
            ("applied", "Documentation: cachefiles: a note"),
            ("already-present", "cachefiles: restore the comment line")]
        assert prov.patches[1].commit is None
        assert git(repo, "rev-list", "--count", f"{base}..{prov.head}") == "1"


def test_series_that_does_not_apply_exits_2_naming_patch_and_files(debian, tmp_path):
    repo, base = debian
    c1, _ = two_harmless(repo, base)
    mbox = tmp_path / "bad.mbox"
    mbox.write_text(git(repo, "format-patch", "--stdout", "-1", c1, strip=False)
                    + git(repo, "format-patch", "--stdout", "-1", conflicting(repo, base), strip=False))
    with pytest.raises(SeriesError) as caught:
        with source.prepare(default_cache(), "linux-source-6.12", None, None, mbox, tmp_path):
            pass
    assert [r.status for r in caught.value.results] == ["applied", "failed"]
    assert 'patch 2/2 "cachefiles: reword it again" does not apply (files: fs/cachefiles/daemon.c)' in str(caught.value)

    proc = harness("run", "--series", str(mbox), "--kills", "1", "--output", str(tmp_path / "runs"), timeout=600)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "patch 2/2" in proc.stderr and "Traceback" not in proc.stderr
    (results,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/results.json")]
    assert results["verdict"] == "ERROR"
    assert [p["status"] for p in results["provenance"]["patches"]] == ["applied", "failed"]
    assert "patch does not apply" in results["provenance"]["patches"][1]["message"]


def test_users_checkout_is_never_touched(debian, tmp_path):
    """--tree with a series works in a scratch worktree: the user's HEAD, branches, index and
    files stay as they were, when the series applies and when it does not."""
    repo, base = debian
    user = tmp_path / "linux"
    subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(repo), str(user)], check=True)
    git(user, "checkout", "--quiet", "-b", "work", base)
    (user / DAEMON).write_text((user / DAEMON).read_text() + "/* uncommitted work of the user's */\n")
    before = (git(user, "rev-parse", "HEAD"), git(user, "branch", "--list"), git(user, "status", "--porcelain"))

    c1, c2 = two_harmless(repo, base)
    good = format_patch(repo, f"{base}..{c2}", out=tmp_path / "good.mbox")
    bad = format_patch(repo, "-1", conflicting(repo, base), out=tmp_path / "bad.mbox")
    cache = default_cache()
    with source.prepare(cache, "", user, None, good, tmp_path) as (src, prov):
        assert src.tree != user and src.tree.parent == cache / "work"
        assert [p.status for p in prov.patches] == ["applied", "applied"] and prov.base_commit == base
    with pytest.raises(SeriesError):
        with source.prepare(cache, "", user, None, bad, tmp_path):
            pass
    assert (git(user, "rev-parse", "HEAD"), git(user, "branch", "--list"), git(user, "status", "--porcelain")) == before
    assert "uncommitted work" in (user / DAEMON).read_text()


def test_run_with_a_series_passes_and_records_provenance(debian, tmp_path):
    repo, base = debian
    _, c2 = two_harmless(repo, base)
    mbox = format_patch(repo, "--cover-letter", f"{base}..{c2}", out=tmp_path / "series.mbox")
    proc = harness("run", "--series", str(mbox), "--kills", "10", "--output", str(tmp_path / "runs"))
    results = results_of(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prov = results["provenance"]
    assert prov["base"]["commit"] == base and prov["head"] == results["kernel"]["commit"]
    assert [p["status"] for p in prov["patches"]] == ["applied", "applied"]
    assert all(p["message_id"] for p in prov["patches"])
    assert prov["command_line"][:3] == ["failover-harness", "run", "--series"]
    assert prov["config_hash"] and prov["harness_version"]
    assert "2 applied" in (tmp_path / "runs").joinpath(next((tmp_path / "runs").iterdir()), "summary.txt").read_text()
