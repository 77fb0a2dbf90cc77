"""The source stage: what it shows while it unpacks and imports (a tiny package made here with
real dpkg-deb, tar and git; the real download is not exercised), and no automatic git gc in any
repository the harness runs git in, without a change to a user's configuration."""
import io
import shutil
import subprocess

import pytest

from harness import progress
from harness.kernel import git, source
from helpers import git as user_git, init_repo

KERNEL_FILES = {"Makefile": "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 1\n", "Kconfig": "",
                "arch/x86/Kconfig": "", ".gitignore": "/*\n", "fs/erofs/super.c": "int s;\n"}


def test_a_git_command_of_the_harness_does_not_start_auto_maintenance(tmp_path):
    repo = init_repo(tmp_path / "repo", {"a.c": "int a;\n"})
    user_git(repo, "config", "gc.auto", "1")  # a user's own setting: gc at the first loose object
    (repo / "b.c").write_text("int b;\n")
    user_git(repo, "add", "b.c")
    trace = tmp_path / "trace"
    user_git(repo, "commit", "--quiet", "-m", "b", env={"GIT_TRACE": str(trace)})
    assert "maintenance run --auto" in trace.read_text()  # what a plain `git commit` starts
    (repo / "c.c").write_text("int c;\n")
    git.check(repo, "add", "c.c")
    trace.unlink()
    git.check(repo, "commit", "--quiet", "-m", "c", env={"GIT_TRACE": str(trace)})
    assert "maintenance" not in trace.read_text() and "gc --auto" not in trace.read_text()
    r = git.run(repo, "status")
    assert r.argv[:5] == ("git", "-c", "gc.auto=0", "-c", "maintenance.auto=false")
    assert git.check(repo, "config", "--get", "gc.auto") == "0"
    assert git.check(repo, "config", "--get", "maintenance.auto") == "false"


def test_a_users_configuration_is_not_changed(tmp_path):
    repo = init_repo(tmp_path / "user", {"super.c": "int s;\n"})
    config = (repo / ".git" / "config").read_bytes()
    scratch = source.scratch_worktree(tmp_path / "cache", repo)
    git.checkout(scratch, "HEAD")
    (scratch / "super.c").write_text("int t;\n")
    git.check(scratch, "commit", "--quiet", "-a", "-m", "in the scratch worktree")
    assert git.check(scratch, "config", "--get", "gc.auto") == "0"
    assert (repo / ".git" / "config").read_bytes() == config
    assert subprocess.run(["git", "-C", str(repo), "config", "--get", "gc.auto"]).returncode == 1  # unset


@pytest.mark.parametrize("counts, line, one_more", [
    (source.is_unpacked_file, "linux-source-6.12/fs/erofs/super.c", True),  # tar -xv
    (source.is_unpacked_file, "linux-source-6.12/arch/x86/", False),  # a directory
    (source.is_unpacked_file, "tar: linux-source-6.12/Makefile: time stamp 2030-01-01 is in the future", False),
    (source.is_unpacked_file, "", False),
    (source.is_added_file, "add 'fs/erofs/super.c'", True),  # git add --verbose
    (source.is_added_file, "warning: in the working copy of 'a', CRLF will be replaced", False),
])
def test_files_are_counted_from_tars_and_git_adds_listings(counts, line, one_more):
    assert counts(line) is one_more


def test_the_source_stage_line():
    s = progress.Status("source", 0.0, {"files": 41234}, step="unpack")
    assert progress.format_status(s, 12.5) == "source 12s: unpack, 41234 files"
    s = progress.Status("source", 0.0, {"bytes": 75_000_000}, {"bytes": 153_531_472}, step="download")
    assert progress.format_status(s, 3) == "source 3s: download, 75.0 MB of 153.5 MB"
    s = progress.Status("source", 0.0, {"files": 40000}, {"files": 80000}, step="import")
    assert progress.format_status(s, 75) == "source 1m15s: import, 40000/80000 files"
    assert progress.format_status(progress.Status("source", 0.0, step="commit"), 90) == "source 1m30s: commit"


def test_a_step_starts_its_counters_afresh_and_a_log_keeps_the_last_counts():
    out, now = io.StringIO(), [0.0]
    p = progress.Progress(out, tty=False, plain_interval_s=30, clock=lambda: now[0], wall=lambda: 0.0)
    p.step("ignored")  # no stage yet: nothing to show it in
    p.stage("source")
    p.step("unpack")
    for _ in range(5):
        p.count("files")
    now[0] = 12.0
    p.step("import", totals={"files": 5})
    p.count("files")
    assert p.status is not None and p.status.counters == {"files": 1} and p.status.step == "import"
    p.stage("build")
    assert [l[9:] for l in out.getvalue().splitlines()] == [
        "source 0s", "source 0s: unpack", "source 12s: unpack, 5 files", "source 12s: import",
        "source 12s: import, 1/5 files", "build 0s"]


def test_a_counter_polled_from_a_growing_file(tmp_path):
    out = io.StringIO()
    p = progress.Progress(out, tty=False, plain_interval_s=3600)
    p.stage("source")
    grown = tmp_path / "pkg.deb"
    with p.polling("bytes", lambda: grown.stat().st_size, interval_s=0.01):
        subprocess.run(["sh", "-c", f"for i in 1 2 3; do printf 12345 >> {grown}; sleep 0.05; done"], check=True)
        assert p.status is not None and 0 < p.status.counters.get("bytes", 0)
    assert p.status.counters == {"bytes": 15}
    with p.polling("bytes", lambda: (tmp_path / "gone").stat().st_size, interval_s=0.01):
        pass  # a file not there (yet): no count, no error
    assert p.status.counters == {"bytes": 15}


def a_downloaded_package(tmp_path, cache):
    """A cache holding a tiny linux-source-6.12 .deb, as if apt had downloaded it."""
    tree = tmp_path / "pkg" / "linux-source-6.12"
    for name, text in KERNEL_FILES.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    usr_src = tmp_path / "deb" / "usr" / "src"
    usr_src.mkdir(parents=True)
    subprocess.run(["tar", "-cJf", str(usr_src / "linux-source-6.12.tar.xz"), "-C", str(tree.parent), tree.name],
                   check=True)
    (tmp_path / "deb" / "DEBIAN").mkdir()
    (tmp_path / "deb" / "DEBIAN" / "control").write_text(
        "Package: linux-source-6.12\nVersion: 6.12.1-1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: a test\n")
    (cache / "downloads").mkdir(parents=True)  # already downloaded: apt is not asked
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tmp_path / "deb"),
                    str(cache / "downloads" / "linux-source-6.12_6.12.1-1_all.deb")], check=True, capture_output=True)


def imported(tmp_path, cache):
    """The package's source stage in `cache`: its tree, and what the progress display showed."""
    a_downloaded_package(tmp_path, cache)
    out = io.StringIO()
    p = progress.Progress(out, tty=False, plain_interval_s=0, clock=lambda: 0.0, wall=lambda: 0.0)
    p.stage("source")
    return source.debian_package(cache, "linux-source-6.12", p), out.getvalue()


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None,
                                reason="needs dpkg-deb and apt-get (Debian)")


@needs_dpkg
def test_unpack_and_import_of_a_package_show_their_files(tmp_path):
    src, shown = imported(tmp_path, tmp_path / "cache")
    lines = [l[9:] for l in shown.splitlines()]
    assert lines[:2] == ["source 0s", "source 0s: unpack"]
    assert "source 0s: unpack, 5 files" in lines and "source 0s: unpack, 6 files" not in lines
    assert lines[-7:] == [
        "source 0s: import", "source 0s: import, 1/5 files", "source 0s: import, 2/5 files", "source 0s: import, 3/5 files",
        "source 0s: import, 4/5 files", "source 0s: import, 5/5 files", "source 0s: commit"]
    assert src.version == "6.12.1" and src.identity == "debian:linux-source-6.12_6.12.1-1"
    assert git.check(src.tree, "ls-files").splitlines() == sorted(KERNEL_FILES)
    assert git.resolve(src.tree, source.base_tag("linux-source-6.12_6.12.1-1")) == git.head(src.tree)


@needs_dpkg
def test_a_cache_inside_a_checkout_gets_a_repository_of_its_own(tmp_path):
    """bench's cold cache is made under its --output, by default inside the harness's own clone:
    the package's tree is imported into a repository of its own, and the clone is not touched."""
    project = init_repo(tmp_path / "project", {"harness.py": "x = 1\n"})
    before = git.head(project)
    src, shown = imported(tmp_path, project / "bench" / "cold-cache")
    assert "source 0s: import, 5/5 files" in shown
    assert git.top_level(src.tree) == src.tree.resolve()
    assert git.check(src.tree, "ls-files").splitlines() == sorted(KERNEL_FILES)
    assert git.resolve(src.tree, source.base_tag("linux-source-6.12_6.12.1-1")) == git.head(src.tree) != before
    # the enclosing checkout: its HEAD where it was, no tag of the package's
    assert git.head(project) == before and git.check(project, "tag", "--list") == ""
