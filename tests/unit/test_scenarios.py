import re
from collections import Counter
from pathlib import Path

import pytest

from dataclasses import asdict

from harness import scenarios
from harness.judge import misbehaviour
from harness.errors import InputError
from harness.request import RunRequest
from guest_scripts.contract import CrashPoint
import daemon


def test_the_daemon_can_die_at_every_crash_point_of_the_contract():
    source = Path(daemon.__file__).read_text()
    called = {getattr(CrashPoint, name) for name in re.findall(r"self\.point\(CrashPoint\.(\w+)\)", source)}
    assert called == set(scenarios.CRASH_POINTS)


def test_every_scenario_of_the_issue_exists_and_asks_for_evidence():
    assert set(scenarios.SCENARIOS) == {"crash", "close-fds", "combined", "crash-points", "adversarial", "supervised",
                                      "cache-death", "no-failover"}
    for name, s in scenarios.SCENARIOS.items():
        if name != "no-failover":
            assert s.needs != scenarios.Needs(), f"{name} would pass without proving anything"
    assert not scenarios.SCENARIOS["no-failover"].failover
    combined = scenarios.SCENARIOS["combined"]
    assert combined.kills and combined.fd_closes and combined.threads > 1 and len(combined.domain_images) == 2
    adversarial = scenarios.SCENARIOS["adversarial"]
    assert set(misbehaviour.expected(asdict(adversarial))) == set(misbehaviour.NAMES) - {misbehaviour.SUPERVISED}
    supervised = scenarios.SCENARIOS["supervised"]
    assert misbehaviour.expected(asdict(supervised)) == (misbehaviour.SUPERVISED,) and supervised.kills
    assert adversarial.needs.misbehaviours and adversarial.threads > 1 and adversarial.lockless
    dying = scenarios.SCENARIOS["cache-death"]
    assert dying.cache_deaths >= dying.needs.cache_deaths > 0 and dying.threads > 1 and dying.lockless
    assert [a.kind for a in scenarios.schedule(dying, 1, (1, 2), 60)].count("cache_death") == dying.cache_deaths


def test_crash_plan_visits_every_point_and_never_restores_first():
    s = scenarios.SCENARIOS["crash-points"]
    for seed in range(30):
        plan = scenarios.crash_plan(s, seed)
        assert Counter(plan.values()) == {p: 3 for p in scenarios.CRASH_POINTS}
        assert plan["1"] != "after_restore"
        assert sorted(map(int, plan)) == list(range(1, len(plan) + 1))
    assert scenarios.crash_plan(s, 1) == scenarios.crash_plan(s, 1)
    assert scenarios.crash_plan(scenarios.SCENARIOS["crash"], 1) == {}


def test_schedule_is_seeded_and_mixes_the_faults():
    s = scenarios.SCENARIOS["combined"]
    a = scenarios.schedule(s, 7, (0.5, 2.0), 60)
    assert a == scenarios.schedule(s, 7, (0.5, 2.0), 60)
    assert a != scenarios.schedule(s, 8, (0.5, 2.0), 60)
    assert Counter(x.kind for x in a) == {"kill": s.kills, "close": s.fd_closes}
    assert all(0.5 <= x.delay_s <= 2.0 for x in a)
    kinds = "".join(x.kind[0] for x in a)
    assert "kc" in kinds or "ck" in kinds  # interleaved, not all kills then all closes
    waits = scenarios.schedule(scenarios.SCENARIOS["crash-points"], 1, (0.5, 2.0), 60)
    assert [x.kind for x in waits] == ["await_crash"] * 21 and waits[0].delay_s == 60


def test_request_overrides():
    req = RunRequest(scenario="crash", kills=7, readers=2, daemon_threads=3)
    assert req.plan.kills == 7 and req.plan.readers == 2 and req.plan.threads == 3
    assert "--daemon-threads 3" in req.reproduce()
    assert "--scenario crash" in req.reproduce() and "--kills 7" in req.reproduce()
    assert RunRequest().plan.kills == 50  # the README's main job
    with pytest.raises(InputError, match="unknown scenario"):
        RunRequest(scenario="nope").validate()


def test_a_daemon_runs_only_the_faults_it_takes_and_the_evidence_they_bring():
    crash, dropped = scenarios.for_daemon(scenarios.SCENARIOS["crash"], frozenset({"kill"}), ours=False)
    assert dropped == () and crash.kills == 50 and crash.needs.in_flight_share == 0.5
    combined, dropped = scenarios.for_daemon(scenarios.SCENARIOS["combined"], frozenset({"kill"}), ours=False)
    assert dropped == ("close",) and combined.kills == 25 and combined.fd_closes == 0
    assert (combined.needs.fd_closes, combined.needs.reopens, combined.needs.reads_after_reopen) == (0, 0, 0)
    assert combined.needs.reopen_probes == 0  # our daemon's probes: none from another daemon
    assert combined.needs.in_flight_share == 0.6  # the kills' evidence stays
    adversarial, dropped = scenarios.for_daemon(scenarios.SCENARIOS["adversarial"], frozenset({"kill"}), ours=False)
    assert set(dropped) == {"close", "restore_live", "stale", "state_kill", "kill_waiter", "umount_reopen"}
    assert not (adversarial.lockless or adversarial.late_close) and adversarial.needs.misbehaviours == 0
    # our own daemon through the same table: nothing left out
    assert scenarios.for_daemon(scenarios.SCENARIOS["adversarial"], frozenset(scenarios.FAULT_FIELDS), ours=True) == (
        scenarios.SCENARIOS["adversarial"], ())


def test_a_request_with_another_daemon_plans_and_says_what_it_leaves_out(tmp_path):
    kill_only = tmp_path / "kill-only.toml"
    kill_only.write_text('name = "kill-only"\ncommand = ["/usr/sbin/mine"]\nrestarts = "self"\n'
                         'device_fd = "supervisor"\nkill = { pid_file = "{log_dir}/w.pid" }\nfaults = ["kill"]\n')
    req = RunRequest(scenario="combined", daemon=str(kill_only), output=tmp_path, cache=tmp_path).validate()
    assert req.plan.fd_closes == 0 and req.faults_left_out == ("close",)
    with pytest.raises(InputError, match="takes none of scenario close-fds's faults"):
        RunRequest(scenario="close-fds", daemon=str(kill_only), output=tmp_path, cache=tmp_path).validate()
    # the C daemon takes kills and closes: combined and close-fds whole, adversarial without the rest
    req = RunRequest(scenario="combined", daemon="cdaemon", output=tmp_path, cache=tmp_path).validate()
    assert req.plan.fd_closes == 30 and req.plan.kills == 25 and req.faults_left_out == ()
    req = RunRequest(scenario="close-fds", daemon="cdaemon", output=tmp_path, cache=tmp_path).validate()
    assert req.plan.fd_closes == 40 and req.faults_left_out == ()
    req = RunRequest(scenario="adversarial", daemon="cdaemon", output=tmp_path, cache=tmp_path).validate()
    assert "close" not in req.faults_left_out and "stale" in req.faults_left_out and req.plan.fd_closes == 20
    with pytest.raises(InputError, match="no such built-in daemon"):
        RunRequest(daemon="nydusd", output=tmp_path, cache=tmp_path).validate()
