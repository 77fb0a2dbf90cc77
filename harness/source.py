"""Kernel sources: Debian's linux-source package (the default) or a user's tree.

The Debian package is downloaded once with `apt-get download` and unpacked once into the cache;
a `.harness-unpacked` marker written last says the copy is whole, so an interrupted unpack is
redone and an intact one is never downloaded again.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import proc
from .errors import InputError, UntestableError

DEFAULT_PACKAGE = "linux-source-6.12"
MARKER = ".harness-unpacked"


@dataclass(frozen=True)
class KernelSource:
    tree: Path
    identity: str  # what a build directory is keyed by
    version: str
    immutable: bool  # a package's tree never changes: a finished build need not run make again


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


def user_tree(tree: Path) -> KernelSource:
    tree = tree.resolve()
    version = kernel_version(tree)
    if (tree / ".config").exists() or (tree / "include" / "config").exists():
        raise InputError(f"{tree}: has an in-tree build; out-of-tree builds need `make mrproper` first")
    return KernelSource(tree, f"tree:{tree}", version, immutable=False)


def _deb_version(deb: Path) -> str:
    # apt-get download names files <package>_<version>_<arch>.deb with ':' escaped as %3a
    return deb.name.split("_")[1].replace("%3a", ":")


def debian_package(cache: Path, package: str = DEFAULT_PACKAGE) -> KernelSource:
    downloads = cache / "downloads"
    src_root = cache / "src"
    for marker in sorted(src_root.glob(f"{package}_*/{MARKER}")):
        tree = marker.parent / "linux"
        return KernelSource(tree, f"debian:{marker.parent.name}", kernel_version(tree), immutable=True)

    apt = proc.require_tool("apt-get", "apt")
    downloads.mkdir(parents=True, exist_ok=True)
    debs = sorted(downloads.glob(f"{package}_*.deb"))
    if not debs:
        got = proc.run([apt, "download", package], cwd=downloads, timeout_s=900)
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
    r = proc.run(["dpkg-deb", "-x", str(deb), str(partial / "deb")], timeout_s=600)
    if not r.ok:
        raise UntestableError(f"unpacking {deb.name} failed: {r.tail(3)}")
    tarballs = sorted((partial / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise UntestableError(f"{deb.name} holds no linux-source tarball")
    r = proc.run(["tar", "-xaf", str(tarballs[0]), "-C", str(partial)], timeout_s=900)
    if not r.ok:
        raise UntestableError(f"unpacking {tarballs[0].name} failed: {r.tail(3)}")
    shutil.rmtree(partial / "deb")
    (unpacked,) = [p for p in partial.iterdir() if p.is_dir()]
    unpacked.rename(partial / "linux")
    (partial / MARKER).write_text(f"{deb.name}\n")
    partial.rename(final)
    tree = final / "linux"
    return KernelSource(tree, f"debian:{name}", kernel_version(tree), immutable=True)
