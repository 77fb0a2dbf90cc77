"""One table maps a RunRequest to its command line and back: whatever a request holds, the flags
spelled for it parse back to the same request, for every command that takes run options."""
import random
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from harness import cli, run_options
from harness.campaign import bisect, submit
from harness.kernel import source
from harness.request import RunRequest
from harness.scenarios import SCENARIOS

PATHS = [Path("runs"), Path("/srv/linux"), Path("a dir/with spaces"), Path("../up/ünïcode"), Path("/tmp/x,y=z"),
         Path("rel/patches.mbx")]


def a_value(rng: random.Random, option: run_options.Option) -> Any:
    """A value the option's parser accepts, None (the scenario's own number) for the optional ints."""
    if option.choices:
        return rng.choice(option.choices)
    if option.field == "scenario":
        return rng.choice(list(SCENARIOS))
    if option.type is run_options.one_or_more:  # --kills (None: the scenario's own number), --jobs
        return rng.choice([None, 1, 7, 16, 123456]) if option.field == "kills" else rng.randint(1, 999)
    if option.type is int:
        return rng.choice([None, 0, 1, 7, 16, 123456]) if option.field in ("fd_closes", "readers",
                                                                           "daemon_threads") else rng.randint(0, 999)
    if option.type is Path:
        return rng.choice([None, *PATHS]) if option.field in ("tree", "series") else rng.choice(PATHS)
    if option.field == "daemon":
        return rng.choice(["python", "cdaemon", "/etc/failover/mine.toml"])
    if option.field == "package":
        return rng.choice([source.DEFAULT_PACKAGE, "linux-source-6.13"])
    return rng.choice([None, "v6.12", "deadbeef", "origin/main~3"])  # ref


def requests(command: str, n: int = 150, seed: int = 1) -> list[RunRequest]:
    """Requests as `command`'s parser can make them: only the fields it takes differ from the
    defaults, and a package other than the default only without a tree (the two exclude each
    other on the command line; a request holding both builds the tree)."""
    rng = random.Random(f"{command}/{seed}")
    made = [RunRequest()]
    for _ in range(n):
        values: dict[str, Any] = {o.field: a_value(rng, o) for o in run_options.options_of(command)}
        if values.get("tree") is not None and "package" in values:
            values["package"] = source.DEFAULT_PACKAGE
        made.append(RunRequest(**values))
    return made


def parsed(argv: list[str], command: str) -> RunRequest:
    return RunRequest.from_args(cli.parser().parse_args(argv), command)


def every_field(command: str) -> list[str]:
    return [o.field for o in run_options.options_of(command)]


def test_the_table_names_every_field_a_command_line_sets() -> None:
    names = {f.name for f in fields(RunRequest)}
    assert {o.field for o in run_options.OPTIONS} == names - {"kill_interval_s"}  # set by no option: a scenario's
    assert len({o.flag for o in run_options.OPTIONS}) == len(run_options.OPTIONS)


@pytest.mark.parametrize("command, around", [("run", []), ("bisect", ["--good", "a", "--bad", "b"]), ("mutate", [])])
def test_every_request_parses_back_from_its_flags(command: str, around: list[str]) -> None:
    for req in requests(command):
        argv = [command, *req.to_argv(command, every_field(command)), *around]
        assert parsed(argv, command) == req, argv


def test_a_reproducing_command_gives_the_same_run_on_any_machine() -> None:
    """reproduce() leaves out where output and builds go and make's -j: the rest is the run."""
    d = RunRequest()
    for req in requests("run"):
        argv = shlex.split(req.reproduce())
        assert argv[:2] == ["failover-harness", "run"]
        assert parsed(argv[1:], "run") == replace(req, output=d.output, jobs=d.jobs, cache=d.cache), argv
        assert not {"--output", "--jobs", "--cache"} & set(argv)


def test_reproduce_states_what_is_tested_first_and_only_what_is_not_a_default() -> None:
    """Scenario, seed, read delay and the daemon's restart are said even at their defaults (what
    the run was, should a default change); the order is the matrix listing's: what is tested, then
    how hard."""
    assert RunRequest().reproduce() == ("failover-harness run --scenario crash --seed 1 --read-delay-ms 50 "
                                        "--daemon-restart standby --transport console")
    req = RunRequest(scenario="combined", kills=5, tree=Path("/src/linux"), ref="v6.12", flavor="debug",
                     accel="kvm", package="ignored-with-a-tree", jobs=3, transport="ssh")
    assert req.reproduce() == ("failover-harness run --scenario combined --flavor debug --tree /src/linux "
                               "--ref v6.12 --kills 5 --seed 1 --read-delay-ms 50 --daemon-restart standby --accel kvm "
                               "--transport ssh")
    assert "--package linux-source-6.13" in RunRequest(package="linux-source-6.13").reproduce()


def test_the_bisect_step_parses_back_to_the_same_request(tmp_path: Path) -> None:
    """The step spells every option (it must not fall back on defaults of its own), and its tree
    is the bisection's worktree: never a package, ref or series."""
    for req in requests(bisect.STEP_COMMAND):
        req = replace(req, tree=req.tree or tmp_path)
        argv = bisect.step_argv(req, 3, tmp_path / "steps.jsonl")
        args = cli.parser().parse_args(argv[3:])
        assert RunRequest.from_args(args, bisect.STEP_COMMAND) == req, argv
        assert (args.repeat, args.steps) == (3, tmp_path / "steps.jsonl")
        assert {"--output", "--jobs", "--cache", "--seed", "--scenario"} <= set(argv)


def test_the_default_package_is_the_sources_everywhere() -> None:
    args = cli.parser().parse_args(["submit", "--mbox", "x.mbx", "--base", "v1"])
    assert RunRequest().package == args.package == source.DEFAULT_PACKAGE
    assert submit.submit_command(args) == "failover-harness submit --mbox x.mbx --base v1 --seed 1 --transport console"


def test_each_command_takes_its_share_of_the_options() -> None:
    def flags(command: str) -> set[str]:
        return {o.flag for o in run_options.options_of(command)}
    assert {"--ref", "--series"} <= flags("run") and not {"--ref", "--series"} & flags("bisect")
    assert "--package" not in flags(bisect.STEP_COMMAND) and "--scenario" not in flags("mutate")
    # submit's scenarios are a list, an option of its own (test_submit.py)
    assert flags("submit") == {"--flavor", "--tree", "--package", "--kills", "--seed", "--transport", "--cache"}
    assert flags("matrix") == {"--transport"}  # its kernels, flavours and scenarios are axes of its own
    # the bench's scenarios, faults and stages are its own; its --output is where bench.json goes
    assert flags("bench") == {"--tree", "--package", "--seed", "--accel", "--transport", "--jobs", "--cache"}
    assert all("--transport" in flags(c) for c in ("run", "bisect", bisect.STEP_COMMAND, "mutate"))
    with pytest.raises(ValueError):
        run_options.options_of("report")


def test_the_pause_before_a_kill_follows_how_a_death_is_recovered_from() -> None:
    """A forked standby serves again within about 0.1 s: a faster pace; a cold start, or another
    daemon's own restart, keeps the slower one (a correct kernel FAILed at the faster with cold
    starts). An explicit interval wins; results.json's request says the pause used."""
    from harness.request import KILL_PAUSE_S
    assert RunRequest().kill_pause() == KILL_PAUSE_S["standby"] == (0.3, 1.0)
    assert RunRequest(daemon_restart="cold").kill_pause() == KILL_PAUSE_S["cold"] == (0.5, 2.0)
    assert RunRequest(daemon="cdaemon").kill_pause() == KILL_PAUSE_S["cold"]
    assert RunRequest(kill_interval_s=(1.0, 1.5)).kill_pause() == (1.0, 1.5)
    assert RunRequest(daemon_restart="cold").to_json()["kill_interval_s"] == [0.5, 2.0]
