"""Daemon adapters (harness/daemons): the built-in ones parse, and every bad file is refused
with one line naming the file and what is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.daemons import adapter
from harness.errors import InputError

VALUES = {"binary": "/b/cdaemon", "scripts": "/s", "config": "/c.json", "cache_dir": "/cache", "tag": "t",
          "threads": "3", "log_dir": "/log", "run_dir": "/run/x"}
GOOD = {"name": "mine", "command": ["/usr/sbin/mine", "--dir", "{cache_dir}"], "restarts": "self",
        "device_fd": "supervisor", "kill": {"pid_file": "{log_dir}/worker.pid"}, "faults": ["kill"]}


def test_the_built_in_adapters_parse_and_fill_in():
    assert adapter.built_in() == ["cdaemon", "cdaemon-no-restore", "python"]
    ours = adapter.load("python")
    assert ours.restarts is adapter.Restarts.HARNESS and ours.device_fd is adapter.DeviceFd.KEEPER
    assert set(ours.faults) == set(adapter.SUPPORTABLE)  # every fault the harness has, on one path
    off = adapter.load("cdaemon-no-restore")
    assert "--no-restore" in off.command and off.build == "cdaemon"
    c = adapter.load("cdaemon")
    assert c.build == "cdaemon" and ours.ours and not c.ours
    assert c.faults == {"kill", "close"} and off.faults == c.faults
    argv = c.argv(VALUES, {"img1": "/d/img1.erofs", "img0": "/d/img0.erofs"})
    assert argv[:3] == ["/b/cdaemon", "--cache-dir", "/cache"]
    assert argv[-4:] == ["--image", "img0=/d/img0.erofs", "--image", "img1=/d/img1.erofs"]
    assert c.kill_pid_file.format_map(VALUES) == "/log/cdaemon-worker.pid"


def test_an_adapter_file_is_read_by_path(tmp_path: Path):
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\ncommand = ["/usr/sbin/mine"]\nrestarts = "self"\ndevice_fd = "supervisor"\n'
                 'kill = { pid_file = "{log_dir}/w.pid" }\nfaults = ["kill"]\n')
    a = adapter.load(str(f))
    assert a.name == "mine" and a.source == str(f) and a.argv(VALUES, {}) == ["/usr/sbin/mine"]


@pytest.mark.parametrize("change, says", [
    ({"kill": {"pid_file": "/w.pid", "pattern": "mine-worker"}}, "never by a name pattern"),
    ({"pgrep": "mine"}, "never by a name pattern"),
    ({"kill": {}}, "missing `pid_file`"),
    ({"kill": {"pid_file": "{run_dir}/w.pid"}}, "must be in {log_dir}/"),
    ({"kill": "/w.pid"}, "`kill` must be a table"),
    ({"faults": ["close"]}, "`kill` is required"),
    ({"faults": ["kill", "explode"]}, "explode unknown"),
    ({"restarts": "sometimes"}, "restarts = 'sometimes': one of 'harness', 'self'"),
    ({"device_fd": "keeper"}, "are the harness's own daemon's"),
    ({"command": ["{binary}"]}, "names {binary} but the adapter has no `build`"),
    ({"command": ["/m", "{home}"]}, "names {home}; the harness fills"),
    ({"command": []}, "`command` is empty"),
    ({"command": "/usr/sbin/mine"}, "`command` must be a list"),
    ({"image_args": ["--img", "{name}={size}"]}, "each image fills {name} and {path}"),
    ({"build": "nydusd"}, "the harness builds only cdaemon"),
    ({"name": "My Daemon"}, "lower-case letters"),
    ({"name": "python"}, "is a built-in daemon's"),
    ({"restarts": "harness", "device_fd": "keeper"}, "are the harness's own daemon's"),
    ({"faults": ["kill", "state_kill"]}, "need the harness's own keeper"),
    ({"faults": ["kill", "cache_death"]}, "need the harness's own keeper"),
])
def test_a_bad_adapter_is_refused_with_one_line(change, says):
    with pytest.raises(InputError) as e:
        adapter.parse({**GOOD, **change}, "mine.toml")
    assert says in str(e.value) and str(e.value).startswith("mine.toml: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["name", "command", "restarts", "device_fd", "kill", "faults"])
def test_every_required_key_is_asked_for(key):
    with pytest.raises(InputError, match=f"missing `{key}`"):
        adapter.parse({k: v for k, v in GOOD.items() if k != key}, "mine.toml")


def test_a_missing_or_broken_file_is_one_line(tmp_path: Path):
    with pytest.raises(InputError, match="no such built-in daemon .*built in: cdaemon, cdaemon-no-restore, python"):
        adapter.load("nydusd")
    with pytest.raises(InputError, match="cannot read it"):
        adapter.load(str(tmp_path / "absent.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(InputError, match="not a TOML adapter file"):
        adapter.load(str(bad))
