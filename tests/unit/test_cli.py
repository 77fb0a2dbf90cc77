"""Bad input: one clear line on stderr and exit code 2, before any expensive work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, **kw)


def test_a_directory_that_is_not_a_kernel_tree(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "Makefile").write_text("all:\n")
    p = cli("run", "--tree", str(tmp_path / "tree"), "--output", str(tmp_path / "runs"),
            "--cache", str(tmp_path / "cache"))
    assert p.returncode == 2
    assert "not a kernel source tree" in p.stderr and "Traceback" not in p.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "results.json").read_text())["verdict"] == "ERROR"


def test_a_missing_tree(tmp_path):
    p = cli("run", "--tree", str(tmp_path / "nowhere"), "--output", str(tmp_path / "runs"),
            "--cache", str(tmp_path / "cache"))
    assert p.returncode == 2 and "no such directory" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--kills", "-1"], "argument --kills: must be 1 or more (got -1)"),
    (["--scenario", "nonsense"], "unknown scenario 'nonsense'"),
    (["--readers", "0"], "--readers must be 1..16"),
    (["--accel", "xen"], "invalid choice"),
    (["--kills", "many"], "invalid int value"),
])
def test_bad_options(args, message, tmp_path):
    p = cli("run", *args, "--output", str(tmp_path))
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


# what each command needs besides the option under test, so that only that option can be refused
REQUIRED = {"bisect": ["--good", "a", "--bad", "b"], "_bisect-step": ["--steps", "steps.jsonl", "--tree", "linux"]}


@pytest.mark.parametrize("flag", ["--kills", "--jobs"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_no_kills_and_no_make_jobs_are_refused_by_every_command_that_takes_them(flag, value, monkeypatch, capsys):
    """While the command line is parsed, before any command starts: each command that takes the
    option, and the matrix, which gives its cells' runs the options after -- (once, not per cell)."""
    from harness import cli, run_options
    monkeypatch.setattr(cli, "HANDLERS", {})  # a command that started would be a KeyError
    takers = sorted(c for c in run_options.COMMANDS if flag in {o.flag for o in run_options.options_of(c)})
    assert {"run", "bisect"} <= set(takers) and ("mutate" in takers) == (flag == "--jobs")
    for argv in [[c, *REQUIRED.get(c, []), flag, value] for c in takers] + [["matrix", "--", flag, value]]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count(f"argument {flag}: must be 1 or more (got {value})") == 1 and "Traceback" not in err, argv


def test_an_output_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    p = cli("run", "--output", str(tmp_path / "file" / "runs"))
    assert p.returncode == 2 and "output directory" in p.stderr and "Traceback" not in p.stderr


def test_a_missing_tool_is_named(tmp_path):
    """With nothing on PATH, the first tool a run needs (QEMU) is named, before any build."""
    env = {**os.environ, "PATH": "/nonexistent"}
    p = cli("run", "--output", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), env=env)
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    p = cli("report", str(tmp_path))
    assert p.returncode == 2 and "not a run directory" in p.stderr


def test_every_command_has_a_handler():
    from harness import cli
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    assert set(cli.HANDLERS) == set(sub.choices)
