"""The base side's results, kept across submissions: a series sent again (v2, v3) or another
series on the same base does not run the base again.

A base run is reused only when everything that decides what it tested is the same, named field
by field in BaseRunKey: the base commit (for the Debian package, the commit the harness makes
of it, whose id is fixed by the package's contents, so it stands for the package version), the
scenario, the seed (the dataset and the fault timing), the flavour, the transport, the kills
(`submit --kills`; None for the scenario's own number), and the harness version with a
digest of its sources (`harness.source_digest`: they fix the scenarios, the configs and the
judge, and `__version__` alone moves only by hand). The entries live under
`<cache>/base-runs/`, one file each, named by a digest of the key and holding the key itself,
so that a digest collision, a hand-edited file or an entry of a key with fewer fields (one kept
before the kills were part of it) is a miss, never a wrong result. Only judged runs are kept: a
build or boot failure is tried again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import version_with_source
from ..judge.results import AnyResults, is_judged

ENTRY_VERSION = 1  # the entry file's own shape


@dataclass(frozen=True)
class BaseRunKey:
    base_commit: str
    scenario: str
    seed: int
    flavor: str
    transport: str
    kills: int | None = None  # None: the scenario's own number (submit without --kills)
    # the harness's version and a digest of its sources: a judge fixed since is a miss
    harness_version: str = field(default_factory=version_with_source)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:24]


def is_base_run_of(results: AnyResults, key: BaseRunKey) -> bool:
    """Whether `results` are a judged run of this key's base, without a patch on it, with its seed
    and kills: what may be kept."""
    prov = results.get("provenance") or {}
    request = results["request"]
    return is_judged(results) and (prov.get("base") or {}).get("commit") == key.base_commit \
        and not prov.get("patches") and request.get("seed") == key.seed and request.get("kills") == key.kills


class BaseRunCache:
    def __init__(self, cache: Path) -> None:
        self.root = cache / "base-runs"

    def path(self, key: BaseRunKey) -> Path:
        return self.root / f"{key.digest}.json"

    def get(self, key: BaseRunKey) -> AnyResults | None:
        try:
            entry = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("version") != ENTRY_VERSION or entry.get("key") != key.to_json():
            return None
        results: AnyResults = entry["results"]
        return results

    def put(self, key: BaseRunKey, results: AnyResults) -> bool:
        """Keep a base run's results; False (and nothing kept) for what is not one."""
        if not is_base_run_of(results, key):
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        # written whole, then renamed: a submission running beside this one reads all or nothing
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".entry-")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": ENTRY_VERSION, "key": key.to_json(), "results": results}, f)
        os.replace(tmp, self.path(key))
        return True
