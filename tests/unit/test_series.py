"""Reading a series: mbox and directories as `git format-patch` and `b4 am` write them, on a
small repository made here with real git (applying on the kernel tree: tests/vm/test_series_on_kernel.py)."""
import pytest

from harness.kernel import series
from harness.kernel.series import SeriesError
from helpers import git, init_repo


@pytest.fixture
def repo(tmp_path):
    r = init_repo(tmp_path / "repo", {"a.c": "int a;\n"})
    for n, subject in ((1, "a: add b"), (2, "a: add c =?and ünïcode")):
        (r / "a.c").write_text((r / "a.c").read_text() + f"int x{n};\n")
        (r / f"f{n}.c").write_text("int f;\n")
        git(r, "add", "-A")
        git(r, "commit", "--quiet", "-m", subject)
    return r


def test_mbox_with_cover_letter_and_message_ids(repo, tmp_path):
    mbox = tmp_path / "s.mbox"
    mbox.write_text(git(repo, "format-patch", "--stdout", "--cover-letter", "--thread", "-v2", "HEAD~2", strip=False))
    patches = series.load(mbox)
    assert [p.index for p in patches] == [1, 2]  # the cover letter is not a patch
    assert [p.subject for p in patches] == ["a: add b", "a: add c =?and ünïcode"]
    assert all(p.message_id and not p.message_id.startswith("<") for p in patches)
    assert patches[0].files == ("a.c", "f1.c")
    assert patches[0].author.startswith("Test Author")


def test_the_thread_root_is_the_cover_letter_or_the_first_patch(repo, tmp_path):
    mbox = tmp_path / "s.mbox"
    mbox.write_text(git(repo, "format-patch", "--stdout", "--cover-letter", "--thread", "-v2", "HEAD~2",
                        "--to", "list@example.org", "--cc", "Maint Ainer <maint@example.org>", strip=False))
    text = mbox.read_text()
    reply = ("From reply Mon Sep 17 00:00:00 2001\nFrom: Someone <someone@example.org>\n"
             "Subject: Re: [PATCH v2 0/2] *** SUBJECT HERE ***\nMessage-Id: <reply@example.org>\n\nLooks good.\n\n")
    mbox.write_text(reply + text)  # lore's t.mbox holds the replies too, in any order
    root = series.thread_root(mbox)
    assert root.subject == "[PATCH v2 0/2] *** SUBJECT HERE ***"
    assert root.message_id and not root.message_id.startswith("<") and root.message_id != "reply@example.org"
    assert root.sender.startswith("Test Author") and root.references == ()
    assert root.recipients == ("list@example.org", "Maint Ainer <maint@example.org>")
    single = tmp_path / "one.mbox"
    single.write_text(git(repo, "format-patch", "--stdout", "--thread", "-1", "HEAD", strip=False))
    root = series.thread_root(single)
    assert root.subject == "[PATCH] a: add c =?and ünïcode" and root.message_id


def test_directory_of_patch_files_in_name_order(repo, tmp_path):
    out = tmp_path / "dir"
    git(repo, "format-patch", "--quiet", "-o", str(out), "HEAD~2")
    (out / "README").write_text("not a patch\n")
    assert [p.subject for p in series.load(out)] == ["a: add b", "a: add c =?and ünïcode"]


@pytest.mark.parametrize("content, message", [
    ("diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n", "a bare diff, not a mail"),
    ("", "no patch in it"),
    ("From 1 Mon Sep 17 00:00:00 2001\nSubject: [PATCH 0/2] cover\n\nwords only\n", "no patch in it"),
])
def test_what_is_not_a_series_is_refused(tmp_path, content, message):
    f = tmp_path / "x.mbox"
    f.write_text(content)
    with pytest.raises(SeriesError, match=message):
        series.load(f)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(SeriesError, match="no such file"):
        series.load(tmp_path / "nope")
    with pytest.raises(SeriesError, match="no patch files"):
        series.load(tmp_path)


def test_apply_reports_applied_present_and_failed(repo, tmp_path):
    mbox = tmp_path / "s.mbox"
    mbox.write_text(git(repo, "format-patch", "--stdout", "HEAD~2", strip=False))
    patches = series.load(mbox)
    git(repo, "checkout", "--quiet", "--detach", "HEAD~1")  # patch 1 is in, patch 2 is not
    results = series.apply(repo, patches, tmp_path)
    assert [r.status for r in results] == ["already-present", "applied"]
    assert results[1].commit == git(repo, "rev-parse", "HEAD")

    git(repo, "checkout", "--quiet", "--detach", "HEAD~2")
    (repo / "a.c").write_text("int changed;\n")
    git(repo, "commit", "--quiet", "-am", "conflict")
    with pytest.raises(SeriesError, match=r'patch 1/2 "a: add b" does not apply \(files: a.c, f1.c\)') as caught:
        series.apply(repo, patches, tmp_path)
    assert [r.status for r in caught.value.results] == ["failed"]
    assert git(repo, "status", "--porcelain") == ""  # git am aborted: nothing half-applied left
