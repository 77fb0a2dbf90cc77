"""What unit and VM tests share: where the captured runs are, and how to call the CLI."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def harness(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    """The command line exactly as a user or CI calls it."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def results_of(proc: subprocess.CompletedProcess) -> dict:
    line = [l for l in proc.stdout.splitlines() if l.endswith("results.json")]
    assert line, f"no results.json reported\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(Path(line[-1].split(": ", 1)[1]).read_text())
