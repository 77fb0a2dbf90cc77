"""failover-harness: proves a kernel survives the failure of its cachefiles on-demand daemon."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parents[1]
# What decides a run's verdict beside the kernel: the scenarios and the judge (harness/), what
# runs in the guest (guest_scripts/, the C daemon's sources among them) and the configs
SOURCE_DIRS = ("harness", "guest_scripts", "kconfigs")


@functools.cache
def source_digest(root: Path = ROOT) -> str:
    """A digest of the harness's own files (SOURCE_DIRS, by path and content): `__version__`
    moves by hand, this with every change, so a result kept across runs (the base runs of
    `submit`) is never reused by a harness that would judge it differently."""
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        for path in sorted(p for p in (root / d).rglob("*") if p.is_file() and not _generated(p.relative_to(root))):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _generated(rel: Path) -> bool:
    """Bytecode and tool caches (`__pycache__`, `.mypy_cache`): not the harness's sources."""
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts)


def version_with_source() -> str:
    return f"{__version__}+{source_digest()}"
