"""git, run through proc: the commands the series, checkout and bisection stages need.

Commits the harness makes (the Debian source's base, a series applied with `git am`) carry a
fixed identity and dates, so the same input gives the same commit ids on every machine.

No git command run here starts git's automatic garbage collection or maintenance (`git commit`
and `git am` would: a `git pack-objects` of a whole kernel tree, on a core beside the build):
the settings are given on the command line, which writes no configuration, so they hold in the
harness's repositories, those an older harness made included, and in a user's repository (whose
objects a scratch worktree's `git am` adds to) without a byte of its config changed.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, TypedDict

from .. import proc
from ..errors import InputError, UntestableError

if TYPE_CHECKING:  # typing.Unpack is new in 3.11; the harness still runs on 3.10
    from typing import Unpack

IDENTITY = {
    "GIT_AUTHOR_NAME": "failover-harness", "GIT_AUTHOR_EMAIL": "harness@failover-harness.invalid",
    "GIT_COMMITTER_NAME": "failover-harness", "GIT_COMMITTER_EMAIL": "harness@failover-harness.invalid",
}
FIXED_DATES = {"GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z"}
NO_AUTO_GC = ("-c", "gc.auto=0", "-c", "maintenance.auto=false")
GIT_TIMEOUT_S = 600  # `git add` of a whole kernel tree is the slowest: about 30 s on 2 cores


class RunOptions(TypedDict, total=False):
    """`run`'s keyword arguments, which `check` passes on."""
    timeout_s: float
    env: dict[str, str] | None
    log: Path | None
    on_line: Callable[[str], None] | None


def run(tree: Path, *args: str, timeout_s: float = GIT_TIMEOUT_S, env: dict[str, str] | None = None,
        log: Path | None = None, on_line: Callable[[str], None] | None = None) -> proc.Completed:
    return proc.run(["git", *NO_AUTO_GC, "-C", str(tree), *args], timeout_s=timeout_s,
                    env={**IDENTITY, **(env or {})}, log=log, on_line=on_line)


def check(tree: Path, *args: str, **kw: Unpack[RunOptions]) -> str:
    """Output of a git command that must succeed; a failure is the harness's, not the kernel's."""
    r = run(tree, *args, **kw)
    if not r.ok:
        raise UntestableError(f"git {' '.join(args)} in {tree} failed: {r.tail(3)}")
    return r.output.strip()


def is_repo(tree: Path) -> bool:
    r = run(tree, "rev-parse", "--is-inside-work-tree", timeout_s=30)
    return r.ok and r.output.strip() == "true"


def top_level(tree: Path) -> Path:
    return Path(check(tree, "rev-parse", "--show-toplevel", timeout_s=30))


def resolve(tree: Path, ref: str) -> str:
    """The commit id `ref` names in `tree`'s repository; InputError if it names none."""
    r = run(tree, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", timeout_s=30)
    if not r.ok:
        raise InputError(f"{tree}: {ref!r} is not a commit in this repository")
    return r.output.strip()


def head(tree: Path) -> str | None:
    r = run(tree, "rev-parse", "--verify", "--quiet", "HEAD", timeout_s=30)
    return r.output.strip() if r.ok else None


def own_head(tree: Path) -> str | None:
    """HEAD of `tree`'s own repository; None if it has none. `head` would answer for an enclosing
    one: a package tree unpacked in a cache inside a checkout, a user's plain tree in a monorepo."""
    return head(tree) if (tree / ".git").exists() else None


def describe(tree: Path, commit: str) -> str | None:
    r = run(tree, "describe", "--always", "--tags", commit, timeout_s=60)
    return r.output.strip() if r.ok else None


def subject(tree: Path, commit: str) -> str:
    return check(tree, "log", "-1", "--format=%s", commit, timeout_s=30)


def is_clean(tree: Path) -> bool:
    """No change to a tracked file (untracked files cannot reach the build without one)."""
    r = run(tree, "status", "--porcelain", "--untracked-files=no", timeout_s=120)
    return r.ok and not r.output.strip()


def checkout(tree: Path, commit: str) -> None:
    """Detached, forced: only the files that differ are rewritten, so make rebuilds only them."""
    check(tree, "checkout", "--quiet", "--force", "--detach", commit)


def is_ancestor(tree: Path, older: str, newer: str) -> bool:
    return run(tree, "merge-base", "--is-ancestor", older, newer, timeout_s=120).ok


def object_ids(tree: Path, commit: str, paths: Iterable[str]) -> dict[str, str]:
    """The tree or blob id of each of `paths` (relative to the top, no trailing slash) at
    `commit`, in one `git ls-tree`; a path the commit does not have is not in the result."""
    wanted = list(paths)
    out = check(tree, "ls-tree", "-z", "--full-tree", commit, "--", *wanted, timeout_s=60)
    ids: dict[str, str] = {}
    for entry in out.split("\0"):
        if "\t" in entry:  # (the output is stdout and stderr: a warning line has no tab)
            meta, path = entry.split("\t", 1)
            ids[path] = meta.split()[-1]
    return {p: ids[p] for p in wanted if p in ids}


def file_at(tree: Path, commit: str, path: str) -> str | None:
    """The text of `path` at `commit`; None when the commit has no such file."""
    r = run(tree, "cat-file", "blob", f"{commit}:{path}", timeout_s=60)
    return r.output if r.ok else None
