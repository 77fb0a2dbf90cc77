"""A daemon adapter: how the harness runs one on-demand daemon in the guest, as data.

An adapter is a small TOML file (the built-in ones beside this module; a user's given by path to
`--daemon`) saying how to start the daemon, where it takes its blobs, who restarts it after a
death and how it gets the device fd back, how the harness finds the process to kill, and which
faults it supports. Nothing here runs anything: the file is read, checked whole, and refused with
one line (InputError, exit 2) before any build or boot.

The process to kill is named by a pid file that the daemon (or, for ours, the keeper) rewrites
whenever a new worker starts: never by a name pattern. A pattern is how the series' own test
came to kill its supervisor instead of its worker. For a daemon that restarts itself, the process
the harness started is its supervisor: the run refuses to go on when the kill target's pid file
names that process.
"""
from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from guest_scripts.contract import Fault
from ..errors import InputError

BUILT_IN_DIR = Path(__file__).resolve().parent
DEFAULT_DAEMON = "python"
OURS = BUILT_IN_DIR / f"{DEFAULT_DAEMON}.toml"


class Restarts(str, Enum):
    """Who starts the next incarnation after a death."""

    HARNESS = "harness"  # the harness's keeper (guest_scripts/keeper.py) starts it
    SELF = "self"  # the daemon's own supervisor forks the next worker


class DeviceFd(str, Enum):
    """Where the /dev/cachefiles fd lives across a death, so that the cache outlives the worker."""

    KEEPER = "keeper"  # the harness's keeper holds it and passes it to each incarnation (SCM_RIGHTS)
    SUPERVISOR = "supervisor"  # the daemon's own supervisor opens, binds and keeps it


# What the command may name; each is filled in by the harness for the run.
PLACEHOLDERS = {
    "binary": "the daemon's binary, built on the host (adapters with `build`)",
    "scripts": "the guest scripts' directory (the harness's own daemon)",
    "config": "the run's config.json (the harness's own daemon)",
    "cache_dir": "the cache's directory (`dir` of the bind)",
    "tag": "the cache's tag (`tag` of the bind)",
    "threads": "threads that serve the device",
    "log_dir": "the run's log directory in the guest (shared with the host)",
    "run_dir": "a directory on the guest's own tmpfs for pid files and sockets",
}
# Faults the host can send to any daemon that supports them: signals to the kill target.
SUPPORTABLE = (Fault.KILL, Fault.CLOSE, Fault.RESTORE_LIVE, Fault.STALE, Fault.STATE_KILL,
               Fault.CACHE_DEATH, Fault.KILL_WAITER, Fault.UMOUNT_REOPEN, Fault.AWAIT_CRASH)
# ... of which another daemon than ours can take: signals to its kill target. The rest need our
# keeper (it carries them out, or its log says when a process died)
FOREIGN_FAULTS = (Fault.KILL, Fault.CLOSE, Fault.RESTORE_LIVE, Fault.STALE)
BUILDS = ("cdaemon",)  # what the harness knows how to build on the host (harness/guest/cdaemon.py)
KEYS = {"name", "description", "build", "command", "image_args", "restarts", "device_fd", "kill", "faults", "log",
        "poll_sleepers"}
KILL_KEYS = {"pid_file"}
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
Fail = Callable[[str], InputError]
E = TypeVar("E", bound=Enum)


@dataclass(frozen=True)
class Adapter:
    name: str
    description: str
    command: tuple[str, ...]  # argv, with {placeholders}
    image_args: tuple[str, ...]  # per image, appended to the command: {name} and {path}
    restarts: Restarts
    device_fd: DeviceFd
    kill_pid_file: str  # the file naming the process to kill (the worker), with {placeholders}
    faults: frozenset[str]  # of SUPPORTABLE
    build: str | None = None  # of BUILDS
    log: str | None = None  # the daemon's own log: a cross-check of the kernel's ledger only
    source: str = ""  # where it was read from
    # its threads wait in poll(2)/select(2) on the device while another answers: a reopen's copen
    # has a sleeper to wake, and close-fds asks for the kernel's wake-up (copen-wake) as evidence
    poll_sleepers: bool = False

    def argv(self, values: Mapping[str, str], images: Mapping[str, str]) -> list[str]:
        """The command for a run: placeholders filled in, then `image_args` for each image."""
        argv = [_fill(arg, values, self.source) for arg in self.command]
        for name, path in sorted(images.items()):
            argv += [_fill(arg, {**values, "name": name, "path": path}, self.source) for arg in self.image_args]
        return argv

    @property
    def ours(self) -> bool:
        """The harness's own daemon (the built-in python.toml): its keeper and its logs."""
        return self.source == str(OURS)


def _fill(template: str, values: Mapping[str, str], source: str) -> str:
    try:
        return template.format_map(values)
    except KeyError as e:
        raise InputError(f"{source}: {template!r} names {{{e.args[0]}}}, which the harness does not fill") from None


def built_in() -> list[str]:
    return sorted(p.stem for p in BUILT_IN_DIR.glob("*.toml"))


def load(name_or_path: str) -> Adapter:
    """A built-in adapter by name, or an adapter file by path; InputError if it is not one."""
    path = Path(name_or_path)
    if "/" not in name_or_path and not name_or_path.endswith(".toml"):
        path = BUILT_IN_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise InputError(f"--daemon {name_or_path}: no such built-in daemon (built in: {', '.join(built_in())}; "
                             "or give the path of an adapter file)")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(f"--daemon {name_or_path}: cannot read it: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a TOML adapter file: {e}") from None
    return parse(data, str(path))


def parse(data: Mapping[str, Any], source: str) -> Adapter:
    """The adapter a file declares, checked whole."""
    def fail(what: str) -> InputError:
        return InputError(f"{source}: {what}")

    if unknown := sorted(set(data) - KEYS):
        hint = " (a process is named by its pid file, never by a name pattern)" if any(
            k in ("pattern", "pgrep", "process_name", "comm") for k in unknown) else ""
        raise fail(f"unknown key(s) {', '.join(unknown)}{hint}")
    for key in ("name", "command", "restarts", "device_fd", "kill", "faults"):
        if key not in data:
            raise fail(f"missing `{key}`")
    name = _string(data, "name", fail)
    if not _NAME.fullmatch(name):
        raise fail(f"name {name!r}: lower-case letters, digits and dashes, at most 32")
    command = _strings(data, "command", fail)
    if not command:
        raise fail("`command` is empty")
    image_args = _strings(data, "image_args", fail) if "image_args" in data else ()
    restarts = _enum(Restarts, data, "restarts", fail)
    device_fd = _enum(DeviceFd, data, "device_fd", fail)
    kill = data["kill"]
    if not isinstance(kill, dict):
        raise fail("`kill` must be a table with `pid_file`")
    if unknown := sorted(set(kill) - KILL_KEYS):
        raise fail(f"kill: unknown key(s) {', '.join(unknown)} (the process to kill is named by `pid_file` alone, "
                   "never by a name pattern)")
    if "pid_file" not in kill:
        raise fail("kill: missing `pid_file`: the file naming the worker to kill")
    pid_file = _string(kill, "pid_file", fail)
    if not pid_file.startswith("{log_dir}/"):
        raise fail(f"kill.pid_file {pid_file!r} must be in {{log_dir}}/, which the host reads as the faults go")
    faults = _strings(data, "faults", fail)
    if bad := [f for f in faults if f not in SUPPORTABLE]:
        raise fail(f"fault(s) {', '.join(bad)} unknown (known: {', '.join(SUPPORTABLE)})")
    if Fault.KILL not in faults:
        raise fail(f"faults: `{Fault.KILL}` is required: every scenario kills the daemon")
    build = _string(data, "build", fail) if "build" in data else None
    if build is not None and build not in BUILDS:
        raise fail(f"build {build!r}: the harness builds only {', '.join(BUILDS)}")
    if source != str(OURS):
        # only our keeper restarts a daemon and hands it the device fd; only our daemon takes the
        # faults the keeper carries out
        if name in built_in() and Path(source).parent != BUILT_IN_DIR:
            raise fail(f"name {name!r} is a built-in daemon's: give yours another")
        if restarts is not Restarts.SELF or device_fd is not DeviceFd.SUPERVISOR:
            raise fail("restarts = \"harness\" and device_fd = \"keeper\" are the harness's own daemon's: another "
                       "daemon restarts itself and keeps the device fd (restarts = \"self\", device_fd = \"supervisor\")")
        if bad := [f for f in faults if f not in FOREIGN_FAULTS]:
            raise fail(f"fault(s) {', '.join(bad)} need the harness's own keeper; another daemon takes "
                       f"{', '.join(FOREIGN_FAULTS)}")
    if build is None and any("{binary}" in arg for arg in command):
        raise fail("`command` names {binary} but the adapter has no `build`")
    for arg in (*command, pid_file):
        for field in _fields(arg, fail):
            if field not in PLACEHOLDERS:
                raise fail(f"{arg!r} names {{{field}}}; the harness fills {', '.join(PLACEHOLDERS)}")
    for arg in image_args:
        for field in _fields(arg, fail):
            if field not in (*PLACEHOLDERS, "name", "path"):
                raise fail(f"image_args: {arg!r} names {{{field}}}; each image fills {{name}} and {{path}}")
    poll_sleepers = data.get("poll_sleepers", False)
    if not isinstance(poll_sleepers, bool):
        raise fail("poll_sleepers must be true or false")
    return Adapter(name, _string(data, "description", fail) if "description" in data else "", command, image_args,
                   restarts, device_fd, pid_file, frozenset(faults), build,
                   _string(data, "log", fail) if "log" in data else None, source, poll_sleepers)


def _fields(template: str, fail: Fail) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise fail(f"{template!r}: {e}") from None


def _string(data: Mapping[str, Any], key: str, fail: Fail) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise fail(f"`{key}` must be a non-empty string")
    return value


def _strings(data: Mapping[str, Any], key: str, fail: Fail) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(f"`{key}` must be a list of non-empty strings")
    return tuple(value)


def _enum(kind: type[E], data: Mapping[str, Any], key: str, fail: Fail) -> E:
    value = data[key]
    try:
        return kind(value)
    except ValueError:
        raise fail(f"{key} = {value!r}: one of {', '.join(repr(k.value) for k in kind)}") from None
