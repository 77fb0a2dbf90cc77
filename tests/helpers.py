"""What unit and VM tests share: where the captured runs are, and how to call the CLI."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from guest_scripts.contract import GuestConfig, Mode

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def harness(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    """The command line exactly as a user or CI calls it."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def results_of(proc: subprocess.CompletedProcess) -> dict:
    line = [l for l in proc.stdout.splitlines() if l.endswith("results.json")]
    assert line, f"no results.json reported\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(Path(line[-1].split(": ", 1)[1]).read_text())


def git(repo: Path, *args: str, env: dict | None = None, input: str | None = None, strip: bool = True) -> str:
    import os
    full_env = {**os.environ, "GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.org",
                "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.org", **(env or {})}
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, text=True, capture_output=True,
                          env=full_env, input=input).stdout
    return out.strip() if strip else out


def init_repo(path: Path, files: dict[str, str], message: str = "base") -> Path:
    """A new git repository at `path` with one commit of `files` ({name: text})."""
    path.mkdir()
    git(path, "init", "--quiet")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", *files)
    git(path, "commit", "--quiet", "-m", message)
    return path


def _commit_staged(repo: Path, parent: str, message: str, stage: Callable[[dict], None]) -> str:
    """A commit on `parent` of what `stage(env)` makes of its tree in a private index (`env` names
    it), with plumbing: the repository's checkout and index are not touched."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": f"{tmp}/index"}
        git(repo, "read-tree", parent, env=env)
        stage(env)
        tree = git(repo, "write-tree", env=env)
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message)


def commit_on(repo: Path, parent: str, message: str, edits: dict) -> str:
    """A commit on `parent` changing files by `edits` ({path: old text -> new text})."""
    def stage(env: dict) -> None:
        for path, edit in edits.items():
            old = git(repo, "show", f"{parent}:{path}", strip=False)
            new = edit(old)
            assert new != old, f"edit of {path} changed nothing"
            blob = git(repo, "hash-object", "-w", "--stdin", input=new)
            git(repo, "update-index", "--cacheinfo", f"100644,{blob},{path}", env=env)
    return _commit_staged(repo, parent, message, stage)


def commit_patch(repo: Path, parent: str, patch: Path) -> str:
    """A commit on `parent` of a patch mail (a mutant of tests/mutants, or any mail `git
    format-patch` writes), with its subject and message, applied as `git am` would apply it."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        info = git(repo, "mailinfo", f"{tmp}/msg", f"{tmp}/diff", input=patch.read_text())
        subject = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Subject: "))
        message = f"{subject}\n\n{Path(tmp, 'msg').read_text()}"
    return _commit_staged(repo, parent, message,
                          lambda env: git(repo, "apply", "--cached", str(patch.resolve()), env=env))


def harmless(path: str, note: str) -> dict:
    """An edit that changes a file but not the kernel's behaviour: a comment (or a line of text)."""
    prefix = "# " if path.endswith((".rst", ".txt", "Kconfig")) else "/* "
    suffix = "" if prefix == "# " else " */"
    return {path: lambda text: text + f"{prefix}{note}{suffix}\n"}


# `restore` that no longer re-marks the held requests NEW: after a daemon crash, the requests it
# held are never read again, and their readers wait for ever (what the series' patch 5 fixed)
RESTORE_NOOP = {"fs/cachefiles/ondemand.c": lambda text: text.replace(
    "\txas_for_each(&xas, req, ULONG_MAX)\n\t\txas_set_mark(&xas, CACHEFILES_REQ_NEW);\n",
    "\txas_for_each(&xas, req, ULONG_MAX)\n\t\tcontinue;\n", 1)}


def failed_and_skipped_checks(results: dict) -> tuple[set, set]:
    """What junit.xml says of a run, read back as checks: the checks of its failed test cases (a
    kernel finding's own case is the splat check) and of its skipped ones (missing evidence)."""
    import xml.etree.ElementTree as ET
    from harness.judge import junit
    from harness.judge.checks import Check
    by_case = {c.case: c for c in Check}
    failed, skipped = set(), set()
    for case in ET.fromstring(junit.render(results)).iter("testcase"):
        name = case.get("name")
        check = by_case.get(name) or (Check.SPLAT if name.startswith("kernel: ") else None)
        if case.find("failure") is not None:
            failed.add(check)
        if case.find("skipped") is not None:
            skipped.add(check)
    return failed, skipped


def assert_reports_agree(results: dict) -> None:
    """JUnit and mutate classify a run alike: both from results.json's checks."""
    from harness.campaign import mutants
    from harness.judge.checks import by_slug
    failed, skipped = failed_and_skipped_checks(results)
    killed = mutants.killed_by(results)
    assert failed == {by_slug(s) for s in killed if s != mutants.MISSING_EVIDENCE}
    assert failed == {by_slug(s) for s in results["failed_checks"]}
    assert skipped == {by_slug(s) for s in results["missing_checks"]}
    assert (mutants.MISSING_EVIDENCE in killed) == (results["verdict"] == "INCONCLUSIVE")


def guest_config(guest_dir: Path, **fields: object) -> GuestConfig:
    """A guest config whose logs and state files are all in `guest_dir`; `fields` override."""
    return GuestConfig(**{
        "mode": Mode.FAILOVER, "images": {}, "cache_dir": str(guest_dir / "cache"), "mount_dir": str(guest_dir / "mnt"),
        "log_dir": str(guest_dir), "keeper_log": str(guest_dir / "keeper.jsonl"),
        "daemon_log": str(guest_dir / "daemon.jsonl"), "keeper_state_file": str(guest_dir / "keeper.state"),
        "daemon_state_file": str(guest_dir / "daemon.state"), "stop_file": str(guest_dir / "stop"),
        "stall_bound_s": 30.0, **fields})  # type: ignore[arg-type]


def judged(run: Path) -> dict:
    """A run directory judged anew (harness/judge/report.py), JUnit and mutate agreeing on it."""
    from harness.judge import report
    results = report.evaluate(run)
    assert_reports_agree(results)
    return results


# /proc/fs/netfs/cookies as fs/netfs/fscache_cookie.c (6.12) prints it: a header, then a row a
# cookie: debug id, volume's debug id, ref, n_active, n_accesses, state ("-LCAIFUWRD": D dropped),
# flags, the key in hex and, if the cookie has aux data, ", " and the aux in hex
COOKIES_HEADER = ("COOKIE   VOLUME   REF ACT ACC S FL DEF             \n"
                  "======== ======== === === === = == ================\n")


def cookie_row(debug_id: int, name: str, state: str, aux: str = "") -> str:
    return (f"{debug_id:08x} {3:08x} {2:3d} {1:3d} {0:3d} {state} {0x2a:02x} {name.encode().hex()}"
            + (f", {aux}" if aux else "") + "\n")
