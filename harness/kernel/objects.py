"""What a commit would build that the scenarios depend on, as one fingerprint: two commits with
the same fingerprint build the same objects under fs/cachefiles/, fs/erofs/ and fs/netfs/ with
the same headers, config and version, so a bisection takes the verdict of the one it tested for
the other without a build (syzkaller skips a commit whose kernel image is the one it tested).

The fingerprint is of git's own ids (a directory's tree id changes with any file below it), read
with one `git ls-tree`: no checkout, no build. A path a commit does not have is part of it, as
absent. What it does not cover is said in NOT_COMPARED, for the step's report and the README.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

from . import git, kconfig

# path (a directory or a file, from the top of the tree) -> why it decides what the scenarios run.
# NOT covered, on purpose: every other source of the image. A change to mm/, lib/xarray.c, the
# VFS (fs/*.c, include/linux/fs.h), the block layer, the scheduler or the compiler, or a Kconfig
# elsewhere that moves a symbol of the final .config, is assumed not to change what the scenarios
# see; a culprit there is found only with --no-skip-unchanged.
COMPARED: dict[str, str] = {
    "fs/cachefiles": "the on-demand cache backend: what every scenario drives and kills the daemon of",
    "fs/erofs": "the filesystem the scenarios mount, reading through fscache",
    "fs/netfs": "fscache's cookies, volumes and I/O (fs/fscache moved here in 6.8)",
    "fs/fscache": "fscache before 6.8 (absent after): a range across the move compares both",
    "fs/Makefile": "whether the directories above are built at all",
    "fs/Kconfig": "sources their Kconfigs and holds MISC_FILESYSTEMS, which EROFS_FS depends on",
    "include/linux/fscache.h": "fscache's interface to erofs",
    "include/linux/fscache-cache.h": "fscache's interface to cachefiles",
    "include/linux/netfs.h": "netfs's interface to both",
    "include/trace/events/cachefiles.h": "tracepoints compiled into cachefiles",
    "include/trace/events/fscache.h": "tracepoints compiled into fscache",
    "include/trace/events/netfs.h": "tracepoints compiled into netfs",
    "include/trace/events/erofs.h": "tracepoints compiled into erofs",
    "include/uapi/linux/cachefiles.h": "the on-demand protocol the daemon speaks",
}
# the top Makefile's lines that make the release string built into the image (uname, vermagic)
VERSION_VARIABLES = ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION")
ABSENT = "absent"

COMPARED_TEXT = "fs/cachefiles/, fs/erofs/, fs/netfs/, their headers, the config and the kernel version"
NOT_COMPARED = "a change elsewhere (e.g. mm/, lib/xarray.c) is assumed not to matter"


def version_lines(makefile: str) -> dict[str, str]:
    """VERSION, PATCHLEVEL, SUBLEVEL and EXTRAVERSION as the top Makefile sets them (the first time)."""
    found: dict[str, str] = {}
    for m in re.finditer(r"^([A-Z]+)[ \t]*=[ \t]*(.*?)[ \t]*$", makefile, re.MULTILINE):
        if m.group(1) in VERSION_VARIABLES:
            found.setdefault(m.group(1), m.group(2))
    return found


def fingerprint_of(ids: Mapping[str, str], version: Mapping[str, str], config: str) -> str:
    """The fingerprint of what COMPARED's paths are (`ids`, by path: a missing one is absent),
    the version lines and the config the harness generates (kconfig.fingerprint of its fragments)."""
    h = hashlib.sha256()
    for path in COMPARED:
        h.update(f"{path} {ids.get(path, ABSENT)}\n".encode())
    for variable in VERSION_VARIABLES:
        h.update(f"{variable}={version.get(variable, '')}\n".encode())
    h.update(f"config {config}\n".encode())
    return h.hexdigest()[:16]


def fingerprint(tree: Path, commit: str, flavor: str) -> str:
    """What `commit` of `tree`'s repository would build for the scenarios, with `flavor`'s config."""
    config = kconfig.fingerprint(kconfig.flavor_fragments(flavor), f"flavor:{flavor}")
    makefile = git.file_at(tree, commit, "Makefile") or ""
    return fingerprint_of(git.object_ids(tree, commit, COMPARED), version_lines(makefile), config)
