"""The C daemon (guest_scripts/cdaemon/), built on the host for the guest.

The guest, booted by virtme-ng, sees the host's root filesystem, so a binary built here runs
there. It is linked statically when the C library allows it (glibc's libc.a: libc6-dev, which
ci/setup.sh installs), so that it does not depend on the guest's view of the host's shared
libraries; dynamically otherwise. A build is named by a hash of the sources and the flags: the
same sources give the binary already there, and a change builds a new one beside it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import guest_scripts

from .. import proc
from ..errors import UntestableError

SOURCE_DIR = Path(guest_scripts.__file__).resolve().parent / "cdaemon"
SOURCES = ("cdaemon.c", "msg.c", "msg.h")  # hashed; the .c files are compiled
COMPILED = ("cdaemon.c", "msg.c")
# Warnings are errors: the daemon is built clean or not at all (tests/unit/test_cdaemon.py
# builds it with these flags too)
CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread")
BUILD_TIMEOUT_S = 120.0


def source_hash(source_dir: Path = SOURCE_DIR) -> str:
    """Of every source file's name and bytes, and of the flags: what names a build."""
    digest = hashlib.sha256()
    for flag in CFLAGS:
        digest.update(flag.encode() + b"\0")
    for name in SOURCES:
        digest.update(name.encode() + b"\0")
        digest.update((source_dir / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_cdaemon(out_dir: Path, source_dir: Path = SOURCE_DIR) -> Path:
    """The daemon's binary in `out_dir`, built unless one of the same sources is there already.

    The compiler writes to a temporary name, renamed into place once it is done, so that a
    binary of the expected name is always whole (a build interrupted, or two at once, leave none
    half written). Raises InputError without a compiler, UntestableError if the build fails."""
    target = out_dir / f"cdaemon-{source_hash(source_dir)}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    cc = proc.require_tool("cc", "gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{target.name}.{os.getpid()}.tmp"
    sources = [str(source_dir / name) for name in COMPILED]
    try:
        failures = []
        for link in (["-static"], []):  # static if libc.a is there
            done = proc.run([cc, *CFLAGS, *link, "-o", str(tmp), *sources], timeout_s=BUILD_TIMEOUT_S)
            if done.ok:
                os.replace(tmp, target)
                return target
            failures.append(f"{' '.join(done.argv)}:\n{done.tail()}")
        raise UntestableError("the C daemon did not build:\n" + "\n".join(failures))
    finally:
        tmp.unlink(missing_ok=True)
