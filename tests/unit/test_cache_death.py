"""A cache's death judged (tests/fixtures/run-cache-death: scenario `cache-death`, seed 1, the
correct kernel): the errors each death explains, the evidence that it ran its course, and each
rule's negative control, the captured run changed where a broken kernel (or a lucky one) would
change it: an error on a mount made after the new bind, before the death, or with another errno;
a release never followed by a bind; a device let go and never released; too few deaths that ran."""
import json
import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES, judged

RUN = FIXTURES / "run-cache-death"


@pytest.fixture
def run(tmp_path) -> Path:
    return shutil.copytree(RUN, tmp_path / "run")


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(path: Path, events_: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events_))


def readers(run: Path) -> list[Path]:
    return sorted((run / "guest").glob("reader-*.jsonl"))


def trace_lines(run: Path) -> list[str]:
    return (run / "guest" / "trace.txt").read_text().splitlines()


def set_trace(run: Path, lines: list[str]) -> None:
    (run / "guest" / "trace.txt").write_text("\n".join(lines) + "\n")


def test_the_cache_dies_and_the_readers_go_on_on_the_correct_kernel(run):
    r = judged(run)
    assert r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    c = r["cache_deaths"]
    assert c["asked"] == c["released"] == len(c["deaths"]) >= 3
    assert sum(d["ran"] for d in c["deaths"]) >= 3
    assert all(d["flushed"] > 0 and d["explained"] > 0 for d in c["deaths"] if d["ran"])
    assert r["read_errors"] == c["errors_explained"] > 0 and r["mismatches"] == 0
    assert r["ledger"]["violations"] == {} or sum(r["ledger"]["violations"].values()) == 0


def _first_explained_read_error(run: Path) -> tuple[Path, int, list[dict]]:
    for path in readers(run):
        log = events(path)
        for i, e in enumerate(log):
            if e["event"] == "read_error" and e["stage"] == "read":
                return path, i, log
    raise AssertionError("no read error in the fixture")


def test_an_error_on_a_mount_made_after_the_new_bind_is_the_kernels(run):
    """The read error moved to the reader's last mount (begun after every rebind): a new cache
    that fails a fresh mount's read is a kernel bug no death explains."""
    path, i, log = _first_explained_read_error(run)
    last = max((e for e in log if e["event"] == "mounted"), key=lambda e: e["t"])
    log.append({**log[i], "fsid": last["fsid"], "image": last["image"], "t": last["t"] + 0.5})
    write(path, log)
    r = judged(run)
    assert r["verdict"] == "FAIL" and "read-error" in r["failed_checks"]
    assert any(f"read {last['fsid']}" in reason and "a cache death explains" in reason for reason in r["reasons"])


@pytest.mark.parametrize("change", ["errno", "before the death"])
def test_an_error_a_death_cannot_explain_is_the_kernels(run, change):
    """Another errno than a dead cache gives (ENOENT), or an EIO stamped before the death: read
    errors, whatever deaths came around them."""
    path, i, log = _first_explained_read_error(run)
    if change == "errno":
        log[i] = {**log[i], "errno": 2, "error": "No such file or directory"}
    else:
        first_death = min(float(e["t"]) for e in events(run / "guest" / "keeper.jsonl") if e["event"] == "cache_death")
        log[i] = {**log[i], "t": first_death - 1.0, "waited_s": 0.01}
    write(path, log)
    r = judged(run)
    assert r["verdict"] == "FAIL" and "read-error" in r["failed_checks"], r["reasons"]


def test_a_cache_never_replaced_fails(run):
    """The binds after the first death taken out: its tag stays in use, and what it failed is
    now a request never answered too."""
    lines = trace_lines(run)
    first_unbind = next(i for i, line in enumerate(lines) if " unbind: " in line)
    set_trace(run, [line for i, line in enumerate(lines) if not (i > first_unbind and " bind: " in line)])
    r = judged(run)
    assert r["verdict"] == "FAIL" and "cache-death" in r["failed_checks"]
    assert any("was never replaced" in reason for reason in r["reasons"])


def test_a_device_let_go_and_never_released_fails(run):
    """One release taken out of the trace: the keeper let the device go four times, the kernel
    released it three (a reference kept somewhere would do that)."""
    lines = trace_lines(run)
    first_unbind = next(i for i, line in enumerate(lines) if " unbind: " in line)
    set_trace(run, lines[:first_unbind] + lines[first_unbind + 1:])
    r = judged(run)
    assert r["verdict"] == "FAIL" and "cache-death" in r["failed_checks"]
    assert any("released it 3 time(s)" in reason for reason in r["reasons"]), r["reasons"]


def test_too_few_deaths_that_ran_their_course_is_inconclusive(run):
    meta = json.loads((run / "run.json").read_text())
    meta["scenario"]["needs"]["cache_deaths"] = meta["scenario"]["cache_deaths"] + 1
    (run / "run.json").write_text(json.dumps(meta))
    r = judged(run)
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["cache-deaths"]


def test_a_scenario_that_asks_for_no_death_explains_no_error(run):
    """no-failover's cache dies too (the device dies with the daemon): its errors stay errors."""
    meta = json.loads((run / "run.json").read_text())
    meta["scenario"]["cache_deaths"] = 0
    (run / "run.json").write_text(json.dumps(meta))
    r = judged(run)
    assert r["verdict"] == "FAIL" and "read-error" in r["failed_checks"] and "cache_deaths" not in r


def test_held_umounts_overlapping_the_withdrawal_are_counted(run):
    """The withdrawal's span from its probe (entry and return of cachefiles_withdraw_cache), the
    held umounts' from the readers' logs on the trace's clock; too few that overlap it and the run
    proves nothing of the race (INCONCLUSIVE). The controls: every held umount moved a second past
    its withdrawal; the probe's events taken out (no span, nothing counted; and the ENOBUFS the
    held mounts' reads got, which a death explains only once its withdrawal began, count against
    the kernel)."""
    deaths = judged(run)["cache_deaths"]["deaths"]
    assert all(d["withdrawal_s"] is not None for d in deaths) and sum(d["umounts_in_withdrawal"] for d in deaths) >= 3
    original = {path: events(path) for path in readers(run)}
    for path, log in original.items():
        write(path, [{**e, "began": e["began"] + 1.0} if e["event"] == "held_umount" else e for e in log])
    r = judged(run)
    assert sum(d["umounts_in_withdrawal"] for d in r["cache_deaths"]["deaths"]) == 0
    assert r["verdict"] == "INCONCLUSIVE" and r["missing_checks"] == ["withdrawal-umounts"], r["reasons"]
    for path, log in original.items():
        write(path, log)
    set_trace(run, [line for line in trace_lines(run) if " withdraw: " not in line and " withdrawn: " not in line])
    r = judged(run)
    assert all(d["withdrawal_s"] is None for d in r["cache_deaths"]["deaths"])
    assert r["verdict"] == "FAIL" and r["failed_checks"] == ["read-error"], r["reasons"]
    assert "No buffer space available" in r["reasons"][0] and r["missing_checks"] == ["withdrawal-umounts"]
