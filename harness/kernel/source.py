"""Kernel sources: Debian's linux-source package (the default) or a user's tree; a ref and a
patch series on top of either.

The Debian package is downloaded once with `apt-get download`, unpacked once into the cache and
made a git repository there (one commit, fixed identity and dates: the same package gives the
same commit id everywhere), so that a series can be applied and a history bisected in it. That
tree belongs to the harness: runs check out the commit they need in it, forced and detached, and
git rewrites only the files that differ, so the one build directory of the tree rebuilds only
what changed. A `.harness-unpacked` marker written last says the copy is whole. The progress
display shows each step as it goes: the bytes downloaded, the files unpacked, the files imported
into git, the commit.

A user's tree is never written to. Built as it is (out of tree) when no ref or series is asked
for; otherwise the ref is checked out, and the series applied, in a scratch worktree of its
repository under the cache (`git worktree add --detach`: no branch, index or checkout of the
user's is touched), the same scratch worktree every time so that its builds are incremental.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import git, series
from .. import proc
from ..progress import Progress, silent
from ..errors import HarnessError, InputError, UntestableError

DEFAULT_PACKAGE = "linux-source-6.12"
MARKER = ".harness-unpacked"
LOCK_WAIT_S = 4 * 3600  # another run (a bisection) may hold a tree this long; then we give up


@dataclass(frozen=True)
class KernelSource:
    tree: Path
    identity: str  # "debian:<package>_<version>" or "tree:<path>": where the source came from
    version: str
    commit: str | None = None  # HEAD when the tree is a clean git checkout: a build of it can be reused


@dataclass(frozen=True)
class Provenance:
    """What was built: results.json's record of the base, the series and the result."""

    source: str
    base_commit: str | None
    base_describe: str | None
    head: str | None
    patches: tuple[series.PatchResult, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "base": {"commit": self.base_commit, "describe": self.base_describe},
                "head": self.head, "patches": [p.to_json() for p in self.patches]}


def kernel_version(tree: Path) -> str:
    """`6.12.117` from the top Makefile; InputError if `tree` is not a kernel tree."""
    makefile = tree / "Makefile"
    if not tree.is_dir():
        raise InputError(f"{tree}: no such directory")
    if not (makefile.is_file() and (tree / "Kconfig").is_file() and (tree / "arch").is_dir()):
        raise InputError(f"{tree}: not a kernel source tree (no top-level Makefile, Kconfig and arch/)")
    head = makefile.read_text(errors="replace")[:2000]
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d*)\s*$", head, re.M))
    if "VERSION" not in fields or "PATCHLEVEL" not in fields:
        raise InputError(f"{tree}: not a kernel source tree (Makefile has no VERSION/PATCHLEVEL)")
    return ".".join(v for v in (fields["VERSION"], fields["PATCHLEVEL"], fields.get("SUBLEVEL")) if v)


def clean_commit(tree: Path) -> str | None:
    """HEAD if `tree` is a git checkout without changes to tracked files, else None."""
    head = git.own_head(tree)
    return head if head is not None and git.is_clean(tree) else None


def user_tree(tree: Path) -> KernelSource:
    tree = tree.resolve()
    version = kernel_version(tree)
    if (tree / ".config").exists() or (tree / "include" / "config").exists():
        raise InputError(f"{tree}: has an in-tree build; out-of-tree builds need `make mrproper` first")
    return KernelSource(tree, f"tree:{tree}", version, clean_commit(tree))


@contextlib.contextmanager
def locked(lock_file: Path, what: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Exclusive use of a tree or build directory among harness processes on this host."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UntestableError(f"{what} stayed in use by another run for {wait_s:.0f}s ({lock_file})") from None
                if not said:
                    print(f"failover-harness: waiting for {what}, in use by another run", file=sys.stderr, flush=True)
                    said = True
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- Debian's package --------------------------------------------------------------------------
def _deb_version(deb: Path) -> str:
    # apt-get download names files <package>_<version>_<arch>.deb with ':' escaped as %3a
    return deb.name.split("_")[1].replace("%3a", ":")


def base_tag(name: str) -> str:
    """The tag naming the package's commit: `debian/linux-source-6.12_6.12.117-1_deb12u1`."""
    return "debian/" + re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def is_unpacked_file(line: str) -> bool:
    """A line of `tar -xv`'s listing that is a file (a directory's ends in `/`; tar's own
    messages start `tar: `)."""
    return bool(line) and not line.endswith("/") and not line.startswith("tar: ")


def is_added_file(line: str) -> bool:
    """A line of `git add --verbose`: `add 'arch/x86/Kconfig'`."""
    return line.startswith("add '")


def _size_of(directory: Path, pattern: str) -> int:
    """Bytes in the files under `directory` named like `pattern`: a download as it grows."""
    return sum(f.stat().st_size for f in directory.rglob(pattern) if f.is_file())


def _make_repo(tree: Path, name: str, progress: Progress, files: int | None = None) -> None:
    """One commit of the package's content, exactly: `-f` because Debian's .gitignore ignores `/*`.
    `files`, if known, is how many the tree has: the import's total.

    The tree's own repository is what is asked for: in a cache inside a checkout (`bench --output
    bench` in the harness's own clone), `git -C tree` finds the enclosing repository's HEAD, and
    the tag, the checkout and a series' commits would go to that repository."""
    if git.own_head(tree) is None:
        git.check(tree, "init", "--quiet")
        progress.step("import", totals={"files": files} if files else None)
        git.check(tree, "add", "--all", "--force", "--verbose", on_line=progress.counting("files", is_added_file))
        progress.step("commit")
        git.check(tree, "commit", "--quiet", "--no-verify", "-m", f"{name} (Debian source package)",
                  env=git.FIXED_DATES)
    git.check(tree, "tag", "--force", base_tag(name))


def unpacked_tree(cache: Path, package: str) -> Path | None:
    """The package's tree if it is unpacked in the cache already (nothing is downloaded)."""
    markers = sorted((cache / "src").glob(f"{package}_*/{MARKER}"))
    return markers[0].parent / "linux" if markers else None


def download_size(package: str) -> int | None:
    """The size of the .deb `apt-get download` would fetch (apt's lists know it), if told."""
    if shutil.which("apt-cache") is None:
        return None
    r = proc.run(["apt-cache", "show", "--no-all-versions", package], timeout_s=60)
    sizes = re.findall(r"^Size:\s*(\d+)\s*$", r.output, re.M) if r.ok else []
    return int(sizes[0]) if sizes else None


def _download(apt: str, downloads: Path, package: str, progress: Progress) -> proc.Completed:
    size = download_size(package)
    progress.step("download", totals={"bytes": size} if size else None)
    with progress.polling("bytes", lambda: _size_of(downloads, f"{package}_*")):
        return proc.run([apt, "download", package], cwd=downloads, timeout_s=900)


def debian_package(cache: Path, package: str = DEFAULT_PACKAGE, progress: Progress | None = None) -> KernelSource:
    """The package's tree in the cache, a git repository; its HEAD is wherever the last run left it."""
    progress = progress if progress is not None else silent()
    src_root = cache / "src"
    if (tree := unpacked_tree(cache, package)) is not None:
        if not (tree / ".git").exists():  # unpacked by a harness from before trees were repositories
            with locked(tree.parent / "lock", f"the {package} tree"):
                _make_repo(tree, tree.parent.name, progress)
        return KernelSource(tree, f"debian:{tree.parent.name}", kernel_version(tree))

    apt = proc.require_tool("apt-get", "apt")
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    debs = sorted(downloads.glob(f"{package}_*.deb"))
    if not debs:
        got = _download(apt, downloads, package, progress)
        debs = sorted(downloads.glob(f"{package}_*.deb"))
        if not got.ok or not debs:
            raise UntestableError(f"apt-get download {package} failed: {got.tail(3)}")
    deb = debs[-1]
    name = f"{package}_{_deb_version(deb)}"
    final = src_root / name
    partial = src_root / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    partial.mkdir(parents=True)
    progress.step("unpack")
    r = proc.run(["dpkg-deb", "-x", str(deb), str(partial / "deb")], timeout_s=600)
    if not r.ok:
        raise UntestableError(f"unpacking {deb.name} failed: {r.tail(3)}")
    tarballs = sorted((partial / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise UntestableError(f"{deb.name} holds no linux-source tarball")
    r = proc.run(["tar", "-xavf", str(tarballs[0]), "-C", str(partial)], timeout_s=900,
                 on_line=progress.counting("files", is_unpacked_file))
    if not r.ok:
        raise UntestableError(f"unpacking {tarballs[0].name} failed: {r.tail(3)}")
    files = sum(map(is_unpacked_file, r.output.splitlines()))
    shutil.rmtree(partial / "deb")
    (unpacked,) = [p for p in partial.iterdir() if p.is_dir()]
    unpacked.rename(partial / "linux")
    _make_repo(partial / "linux", name, progress, files)
    (partial / MARKER).write_text(f"{deb.name}\n")
    partial.rename(final)  # git stores no absolute paths: the repository moves with its tree
    tree = final / "linux"
    return KernelSource(tree, f"debian:{name}", kernel_version(tree))


# -- a user's repository -----------------------------------------------------------------------
def _common_dir(tree: Path) -> Path:
    return (tree / git.check(tree, "rev-parse", "--git-common-dir", timeout_s=30)).resolve()


def scratch_path(cache: Path, repo: Path) -> Path:
    """Where the scratch worktree of `repo` lives; its lock file is beside it, `<path>.lock`."""
    return cache / "work" / hashlib.sha256(str(repo).encode()).hexdigest()[:16]


def scratch_worktree(cache: Path, repo: Path) -> Path:
    """The harness's own detached worktree of `repo`, made once (without a checkout) and reused."""
    scratch = scratch_path(cache, repo)
    if (scratch / ".git").is_file() and git.is_repo(scratch) and _common_dir(scratch) == _common_dir(repo):
        return scratch
    shutil.rmtree(scratch, ignore_errors=True)
    git.run(repo, "worktree", "prune", timeout_s=120)  # forget a scratch worktree deleted by hand
    git.check(repo, "worktree", "add", "--quiet", "--detach", "--no-checkout", str(scratch), "HEAD")
    return scratch


@dataclass(frozen=True)
class WorkTree:
    """Where the harness may check out and commit: the Debian tree, or a scratch worktree."""

    path: Path
    lock: Path
    identity: str
    repo: Path  # where refs are resolved: the user's checkout, whose HEAD is theirs, not the scratch's
    default_base: str  # the commit a run starts from when no --ref is given

    def resolve(self, ref: str | None) -> str:
        return git.resolve(self.repo, ref or self.default_base)


def work_tree(cache: Path, package: str, tree: Path | None, progress: Progress | None = None) -> WorkTree:
    if tree is None:
        src = debian_package(cache, package, progress)
        return WorkTree(src.tree, src.tree.parent / "lock", src.identity, src.tree, base_tag(src.tree.parent.name))
    top = tree.resolve()
    kernel_version(top)
    if not git.is_repo(top):
        raise InputError(f"{tree}: --ref, --series and bisect need a git repository")
    top = git.top_level(top)
    scratch = scratch_path(cache, top)
    lock = scratch.with_name(scratch.name + ".lock")
    with locked(lock, f"the scratch worktree of {top}"):  # two first runs must not both make it
        scratch = scratch_worktree(cache, top)
    # the user's HEAD, resolved in the user's checkout: the scratch worktree has a HEAD of its own
    return WorkTree(scratch, lock, f"tree:{top}", top, git.resolve(top, "HEAD"))


def known_commit(cache: Path, package: str, tree: Path | None, ref: str) -> str | None:
    """The commit `ref` names, when that can be told without downloading or unpacking anything:
    in the user's repository, or in the package's if it is unpacked already; None otherwise."""
    repo = tree if tree is not None else unpacked_tree(cache, package)
    if repo is None or not repo.is_dir():
        return None
    try:
        return git.resolve(repo, ref)
    except HarnessError:
        return None


@contextlib.contextmanager
def prepare(cache: Path, package: str, tree: Path | None, ref: str | None, series_path: Path | None,
            work_dir: Path, progress: Progress | None = None) -> Iterator[tuple[KernelSource, Provenance]]:
    """The source to build, held (locked) until the caller has built it; `progress` shows its steps.

    Patches are read before anything is checked out, so that a series that is not one fails
    first; a series that does not apply raises SeriesError with each patch's outcome.
    """
    patches = series.load(series_path) if series_path else ()
    if tree is not None and ref is None and not patches:
        src = user_tree(tree)  # as it is: nothing to check out
        head = git.own_head(src.tree)
        yield src, Provenance(src.identity, head, git.describe(src.tree, head) if head else None,
                              head if src.commit else None)
        return
    progress = progress if progress is not None else silent()
    wt = work_tree(cache, package, tree, progress)
    with locked(wt.lock, str(wt.path)):
        base = wt.resolve(ref)
        progress.step("checkout")
        git.checkout(wt.path, base)
        if patches:
            progress.step("series")
        results = series.apply(wt.path, patches, work_dir) if patches else ()
        head = git.head(wt.path)
        yield (KernelSource(wt.path, wt.identity, kernel_version(wt.path), head),
               Provenance(wt.identity, base, git.describe(wt.path, base), head, results))
