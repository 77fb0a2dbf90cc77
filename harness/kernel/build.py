"""Configure and build a small kernel out of tree, keyed by source and config; through ccache
when CCACHE_DIR is set (USE_CCACHE).

The build directory is `<cache>/build/<key>` where the key hashes the source tree's path and the
fragments, so two trees or two configs never share objects, while a re-run, a series, a mutant
or a bisection step checked out in the same tree reuses every object make does not rebuild.
The finished bzImage is copied into the run directory: the run keeps the kernel it tested, and
the build directory is free for the next run as soon as the copy is made.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from . import kconfig, source
from .. import proc
from ..errors import InputError, UntestableError

STAMP = ".harness-built"


@dataclass(frozen=True)
class BuildRequest:
    source: source.KernelSource
    fragments: tuple[kconfig.Fragment, ...]
    cache: Path
    jobs: int
    timeout_s: float
    on_line: Callable[[str], None] | None = field(default=None, compare=False)  # make's output, line by line


@dataclass(frozen=True)
class BuildResult:
    bzimage: Path
    build_dir: Path
    key: str
    config_hash: str  # of the final .config
    seconds: float
    reused: bool  # make did not run: this commit, clean, was the last one built here
    log: Path


def build_key(req: BuildRequest) -> str:
    return kconfig.fingerprint(req.fragments, f"tree:{req.source.tree}")


def use_ccache(environ: Mapping[str, str]) -> bool:
    """Whether builds go through ccache: only when the user names its directory (CCACHE_DIR), as
    a CI job that keeps it between runs does. A miss costs more than it saves here: compiling
    fs/, mm/ and kernel/ of our config from nothing took 99 s with gcc, 155 s through a cold
    ccache and 126 s in its depend mode (2026-12-04, 2 cores); the first run's build was 397 s
    through ccache against 244 s without. What ccache would serve again, kbuild's incremental
    build of the same build directory already does not rebuild; a new config misses it whole."""
    return bool(environ.get("CCACHE_DIR")) and shutil.which("ccache") is not None


def _make(req: BuildRequest, build_dir: Path, targets: list[str], log: Path, timeout_s: float) -> proc.Completed:
    argv = ["make", "-C", str(req.source.tree), f"O={build_dir}", f"-j{req.jobs}", *targets]
    if use_ccache(os.environ):
        argv.append("CC=ccache gcc")  # its directory from the environment, as ccache reads it
    return proc.run(argv, timeout_s=timeout_s, log=log, on_line=req.on_line)


def configure(req: BuildRequest, build_dir: Path, log_dir: Path) -> None:
    """tinyconfig + fragments + olddefconfig; every symbol asked for must have survived."""
    config = build_dir / ".config"
    merged = kconfig.merge(req.fragments)
    if config.exists() and (build_dir / ".harness-fragments").read_text() == merged:
        return
    r = _make(req, build_dir, ["tinyconfig"], log_dir / "config.log", 600)
    if not r.ok:
        if "is not clean" in r.output:
            raise InputError(f"{req.source.tree}: source tree is not clean (run `make mrproper` in it)")
        raise UntestableError(f"make tinyconfig failed: {r.tail(5)}")
    with open(config, "a") as f:
        f.write(merged)
    r = _make(req, build_dir, ["olddefconfig"], log_dir / "olddefconfig.log", 600)
    if not r.ok:
        raise UntestableError(f"make olddefconfig failed: {r.tail(5)}")
    final = kconfig.parse_config(config.read_text())
    drops = kconfig.find_drops(req.fragments, final)
    if drops:
        report = kconfig.explain_drops(req.source.tree, drops, final)
        (log_dir / "config-drops.txt").write_text(report + "\n")
        config.unlink()  # never build, nor reuse, a config that lost what we asked for
        raise InputError(f"{len(drops)} config symbol(s) dropped by olddefconfig:\n{report}")
    (build_dir / ".harness-fragments").write_text(merged)


def build(req: BuildRequest, log_dir: Path) -> BuildResult:
    """Build (or reuse) and copy the bzImage to `log_dir`, holding the build directory meanwhile."""
    key = build_key(req)
    build_dir = req.cache / "build" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    with source.locked(build_dir.with_name(key + ".lock"), f"build directory {build_dir}"):
        seconds, reused = _build_locked(req, build_dir, log_dir)
        kept = log_dir / "bzImage"
        shutil.copyfile(build_dir / "arch" / "x86" / "boot" / "bzImage", kept)
    config_hash = hashlib.sha256((build_dir / ".config").read_bytes()).hexdigest()[:16]
    return BuildResult(kept, build_dir, key, config_hash, seconds, reused, log_dir / "build.log")


def _build_locked(req: BuildRequest, build_dir: Path, log_dir: Path) -> tuple[float, bool]:
    bzimage = build_dir / "arch" / "x86" / "boot" / "bzImage"
    log = log_dir / "build.log"
    stamp = build_dir / STAMP
    started = time.monotonic()
    commit = req.source.commit
    if commit and bzimage.exists() and stamp.exists() and stamp.read_text().split() == [commit]:
        log.write_text(f"reused {bzimage}: built before from commit {commit} of {req.source.tree}\n")
        return 0.0, True
    stamp.unlink(missing_ok=True)
    configure(req, build_dir, log_dir)
    r = _make(req, build_dir, ["bzImage"], log, req.timeout_s)
    if r.timed_out:
        raise UntestableError(f"kernel build timed out after {req.timeout_s:.0f}s (log: {log})")
    if not r.ok or not bzimage.exists():
        raise UntestableError(f"kernel build failed (log: {log}):\n{r.tail(15)}")
    if commit:
        stamp.write_text(f"{commit}\n")
    return time.monotonic() - started, False
