"""Every scenario on the real kernel, each with the evidence it exists for."""
import pytest

from helpers import harness, results_of

pytestmark = pytest.mark.vm


def run(tmp_path, *args):
    proc = harness("run", "--output", str(tmp_path), *args)
    print(proc.stdout)
    return proc, results_of(proc)


def test_close_fds_reopens_and_delivers(tmp_path):
    proc, r = run(tmp_path, "--scenario", "close-fds")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    ev = r["evidence"]
    assert ev["fd_closes"] >= 10 and ev["reopens"] >= 10 and ev["reads_after_reopen"] >= 10
    assert r["read_errors"] == 0 and r["mismatches"] == 0


def test_combined_faults_at_once(tmp_path):
    proc, r = run(tmp_path, "--scenario", "combined")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    ev = r["evidence"]
    assert r["kills"] == 25 and ev["fd_closes"] >= 5 and ev["reopens"] >= 5 and ev["redelivered"] >= 1
    assert r["request"]["scenario"] == "combined"


def test_crash_points_each_visited_and_recovered(tmp_path):
    proc, r = run(tmp_path, "--scenario", "crash-points")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    table = r["crash_points"]
    assert all(row["hits"] >= 3 and row["restored"] == row["hits"] and row["served_after"] == row["hits"]
               for row in table.values()), table
    for point, row in table.items():
        if not row["kernel_had_answer"]:
            assert row["redelivered"] == row["held_requests"] > 0, point


def test_supervised_fds_survive_deaths_and_are_taken_over(tmp_path):
    """A supervisor keeps the anon fds: restore meets objects still OPEN, held OPENs are answered
    by the next incarnation, and the kernel never hands out a second fd for an object held open."""
    proc, r = run(tmp_path, "--scenario", "supervised")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    assert r["misbehaviours"]["supervised-fds"]["decided"] >= 3, r["misbehaviours"]
    assert r["probes"]["second-fd"]["violations"] == 0
    assert r["read_errors"] == 0 and r["mismatches"] == 0


def test_no_failover_is_caught(default_run, tmp_path):
    """The negative control: without a surviving device fd the reads fail, and we say so."""
    proc, r = run(tmp_path, "--no-failover")
    assert proc.returncode == 1 and r["verdict"] == "FAIL"
    assert r["read_errors"] > 0
    assert any("read error" in reason for reason in r["reasons"])
    # the kernel the default run built is reused, not rebuilt
    assert r["timing"]["build_reused"] is True


def test_cache_death_fails_its_waiters_and_the_readers_go_on(tmp_path):
    """The cache dies with requests queued (the device's last reference let go while lockless
    threads read): its waiters get EIO, a new cache is bound, fresh mounts read every file."""
    proc, r = run(tmp_path, "--scenario", "cache-death")
    assert proc.returncode == 0 and r["verdict"] == "PASS", r["reasons"] + r["missing_evidence"]
    c = r["cache_deaths"]
    assert c["asked"] == c["released"] == len(c["deaths"]) and sum(d["ran"] for d in c["deaths"]) >= 3
    assert r["read_errors"] == c["errors_explained"] > 0 and r["mismatches"] == 0
    # the held umounts raced the dead cache's withdrawal (its probe timed each one)
    assert all(d["withdrawal_s"] is not None for d in c["deaths"])
    assert sum(d["umounts_in_withdrawal"] for d in c["deaths"]) >= 1
