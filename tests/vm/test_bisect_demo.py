"""The bisection demonstration: a history on the default kernel source with one commit that
breaks failover among harmless ones; `failover-harness bisect` must name exactly that commit."""
import json
from pathlib import Path

import pytest

from harness.kernel import source
from harness.request import default_cache
from helpers import RESTORE_NOOP, commit_on, git, harmless, harness

pytestmark = pytest.mark.vm

DOC = "Documentation/filesystems/caching/cachefiles.rst"


def test_bisect_names_the_commit_that_breaks_failover(tmp_path):
    repo = source.debian_package(default_cache()).tree
    base = git(repo, "rev-parse", source.base_tag(repo.parent.name))
    history = [("Documentation: cachefiles: say more about restore", harmless(DOC, "restore re-marks held requests")),
               ("cachefiles: comment the daemon's command table", harmless("fs/cachefiles/daemon.c", "commands")),
               ("cachefiles: simplify restore", RESTORE_NOOP),  # the breaking one
               ("cachefiles: comment the ondemand read path", harmless("fs/cachefiles/ondemand.c", "read path")),
               ("Documentation: cachefiles: typo", harmless(DOC, "typo"))]
    commits, parent = [], base
    for message, edits in history:
        parent = commit_on(repo, parent, message, edits)
        commits.append(parent)
    git(repo, "update-ref", "refs/failover-harness/bisect-demo", commits[-1])  # reachable, kept from gc

    proc = harness("bisect", "--good", base, "--bad", commits[-1], "--kills", "10", "--output", str(tmp_path))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bisect_json,) = tmp_path.glob("*-bisect/bisect.json")
    r = json.loads(bisect_json.read_text())
    assert r["first_bad"] == {"commit": commits[2], "subject": "cachefiles: simplify restore"}
    phases = [(s["phase"], s["result"]) for s in r["steps"]]
    assert phases[:2] == [("check-bad", "bad"), ("check-good", "good")]
    assert all(result in ("good", "bad") for _, result in phases[2:]) and len(phases) >= 3
    # the breaking commit was judged bad by the scenario itself: a reader stuck after a kill
    bad_runs = [run for s in r["steps"] if s["result"] == "bad" for run in s["runs"]]
    assert all(run["verdict"] == "FAIL" for run in bad_runs)
    assert r["confidence"]["failure_rate_on_bad"] == 1.0
    replay = Path(r["replay"]).read_text()
    assert f"git bisect start '{commits[-1]}' '{base}'" in replay or "git bisect start" in replay
    assert f"# first bad commit: [{commits[2]}]" in replay
    # between steps only what changed was rebuilt: every step after the first reuses the build dir
    builds = [run["build_s"] for s in r["steps"] for run in s["runs"]]
    assert max(builds[1:]) < 300, builds
    assert "FOUND: first bad commit" in proc.stdout
