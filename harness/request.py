"""What the user asked for, as one frozen value, validated before any expensive work."""
from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError

MODES = ("failover", "no_failover")
ACCELS = ("auto", "kvm", "tcg")


def default_cache() -> Path:
    env = os.environ.get("FAILOVER_HARNESS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "failover-harness"


@dataclass(frozen=True)
class RunRequest:
    kills: int = 50
    seed: int = 1
    output: Path = Path("runs")
    tree: Path | None = None
    package: str = "linux-source-6.12"
    mode: str = "failover"
    readers: int = 3
    read_delay_ms: int = 50
    kill_interval_s: tuple[float, float] = (0.5, 2.0)
    accel: str = "auto"
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    cache: Path = field(default_factory=default_cache)

    def validate(self) -> "RunRequest":
        if self.kills < 1:
            raise InputError(f"--kills must be at least 1 (got {self.kills})")
        if not 1 <= self.readers <= 16:
            raise InputError(f"--readers must be 1..16 (got {self.readers})")
        if self.read_delay_ms < 0:
            raise InputError(f"--read-delay-ms must be >= 0 (got {self.read_delay_ms})")
        lo, hi = self.kill_interval_s
        if not 0 < lo <= hi:
            raise InputError(f"kill interval {lo}..{hi}s is not a range of positive seconds")
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r} (one of {', '.join(MODES)})")
        if self.accel not in ACCELS:
            raise InputError(f"unknown accelerator {self.accel!r} (one of {', '.join(ACCELS)})")
        for what, path in (("output", self.output), ("cache", self.cache)):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"{what} directory {path}: {e.strerror}") from e
            if not os.access(path, os.W_OK | os.X_OK):
                raise InputError(f"{what} directory {path}: not writable")
        return self

    def reproduce(self) -> str:
        """The command line that runs this request again."""
        argv = ["failover-harness", "run", "--kills", str(self.kills), "--seed", str(self.seed),
                "--readers", str(self.readers), "--read-delay-ms", str(self.read_delay_ms)]
        if self.tree:
            argv += ["--tree", str(self.tree)]
        elif self.package != RunRequest.package:
            argv += ["--package", self.package]
        if self.mode == "no_failover":
            argv.append("--no-failover")
        if self.accel != "auto":
            argv += ["--accel", self.accel]
        return shlex.join(argv)

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
