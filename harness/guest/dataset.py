"""Deterministic files from a seed, their sha256, and the EROFS images that carry them.

Every seed gives the same bytes, the same tree and the same image, so a failure reproduces
with the seed from results.json. Sizes are chosen to hit what page-based code gets wrong: empty
and one-byte files, tails one short of and one past a page, a file of zeros (sparse on the host),
and a few large files so that each round of reading produces a steady stream of READs.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import proc
from ..errors import UntestableError

GENERATOR = "dataset-v1"  # bump when the generation changes: cached images are keyed by it


@dataclass(frozen=True)
class DatasetSpec:
    seed: int
    images: int = 3
    large_files: int = 3  # per image, each 256 KiB .. 1 MiB with an unaligned tail

    @property
    def key(self) -> str:
        text = json.dumps({"gen": GENERATOR, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    spec: DatasetSpec
    images: dict[str, Path]  # image name (the fsid prefix the daemon serves) -> image file
    manifest: dict[str, dict[str, str]]  # image -> relative path -> sha256

    @property
    def total_files(self) -> int:
        return sum(len(files) for files in self.manifest.values())


def file_plan(spec: DatasetSpec, image_no: int) -> list[tuple[str, int, bool]]:
    """(relative path, size, all zeros) for one image: pure, so the tests can look at it."""
    rng = random.Random(f"{spec.seed}/{image_no}")
    page = 4096
    plan = [
        ("empty", 0, False),
        ("one-byte", 1, False),
        ("dir-a/page-minus-one", page - 1, False),
        ("dir-a/page-plus-one", page + 1, False),
        ("dir-a/dir-b/odd-tail", rng.randrange(3, 40) * page + rng.randrange(1, page), False),
        ("dir-a/dir-b/zeros", rng.randrange(64, 160) * page, True),
    ]
    for i in range(spec.large_files):
        size = rng.randrange(256 * 1024, 1024 * 1024) | 1  # odd: never page aligned
        plan.append((f"dir-c/large-{i}", size, False))
    return plan


def generate_tree(spec: DatasetSpec, image_no: int, root: Path) -> dict[str, str]:
    rng = random.Random(f"{spec.seed}/{image_no}/content")
    manifest = {}
    for rel, size, zeros in file_plan(spec, image_no):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if zeros:
            with open(path, "wb") as f:
                f.truncate(size)  # a hole on the host; the image stores zeros
            data = bytes(size)
        else:
            data = rng.randbytes(size)
            path.write_bytes(data)
        manifest[rel] = hashlib.sha256(data).hexdigest()
    return manifest


def build(spec: DatasetSpec, cache: Path) -> Dataset:
    """The images for `spec`, made once and reused (the directory is complete iff manifest.json)."""
    mkfs = proc.require_tool("mkfs.erofs", "erofs-utils")
    top = cache / "datasets" / spec.key
    manifest_file = top / "manifest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text())
        return Dataset(spec, {n: top / f"{n}.erofs" for n in manifest}, manifest)
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(parents=True)
    manifest = {}
    images = {}
    for i in range(spec.images):
        name = f"img{i}"
        tree = top / "trees" / name
        manifest[name] = generate_tree(spec, i, tree)
        image = top / f"{name}.erofs"
        # Fixed timestamp and UUID: the same seed gives the same image, byte for byte.
        uuid = hashlib.md5(f"{spec.key}/{name}".encode()).hexdigest()
        uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"
        r = proc.run([mkfs, "--quiet", "-T0", f"-U{uuid}", "--all-root", str(image), str(tree)],
                     timeout_s=300)
        if not r.ok:
            raise UntestableError(f"mkfs.erofs failed for {name}: {r.tail(5)}")
        images[name] = image
    shutil.rmtree(top / "trees")
    tmp = manifest_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, manifest_file)
    return Dataset(spec, images, manifest)
