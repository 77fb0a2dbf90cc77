"""A session with a running guest over its serial console (pexpect).

Commands are typed into the guest's shell and end with a marker that carries the exit status;
the marker's text is computed by the shell (`$?`), so an echoed command line never matches it.
A guest that stops answering raises GuestHung, one whose console closes raises GuestGone: the
caller turns either into a finding, never into a wait without end.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import pexpect

from .. import proc


class Transport(str, Enum):
    """How the host drives the guest: typing into its serial console (this module), or over ssh
    (guest/ssh.py), the console then only keeping the guest's lifetime and its log."""

    CONSOLE = "console"
    SSH = "ssh"


class GuestGone(Exception):
    """The console closed: QEMU exited (a panic, a poweroff, a crash of QEMU itself); or, over
    ssh, the connection did (the guest's sshd died, or the guest with it)."""


class GuestHung(Exception):
    """No answer within the phase's timeout."""


class RunDecided(GuestHung):
    """While the host waited on something else, the run was decided: a reader reported a call
    stuck past the stall bound (FAIL, `stall`), or the daemon a probe the kernel failed. What the
    host waited for need not come."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str
    seconds: float


class Session(Protocol):
    """What driving a booted guest takes, whatever the Transport: the fault loop and the services
    never know which one they use."""

    def run(self, command: str, timeout_s: float) -> CommandResult:
        """The command's status and output; GuestHung or GuestGone if no answer comes."""

    def check(self, command: str, timeout_s: float) -> CommandResult:
        """`run`, raising GuestCommandFailed on a non-zero status."""

    def alive(self) -> bool:
        """False once the guest is gone (a panic, a poweroff): waits on it end at once."""

    def shutdown(self, timeout_s: float) -> bool:
        """Power the guest off; True if it went away by itself within the timeout."""


POKE_FIRST_S = 5.0
POKE_MAX_S = 30.0
READY = re.compile(r"(?<!: )FH_READY_42\r*\n")  # printf's line; not inside `bash: ...: not found`


class GuestSession:
    """A Session over the serial console."""

    def __init__(self, console: proc.Interactive) -> None:
        self.console = console
        self._n = 0

    def wait_for_shell(self, timeout_s: float) -> float:
        """Until the guest's shell answers; returns the seconds it took. Pokes now and then, since
        what is typed before the shell starts may be lost; or kept: the serial tty queues what
        comes before bash reads it, and bash runs the whole pile, so the pokes thin out (5 s
        apart, doubling up to 30 s: a slow boot of 300 s leaves a dozen, not sixty). The answer
        is printf's output, which no error message about a mangled poke can contain (`bash:
        FH_READY_42: command not found` once passed for a ready shell)."""
        started = time.monotonic()
        deadline = started + timeout_s
        child = self.console.child
        interval = POKE_FIRST_S
        while True:
            child.send("printf 'FH_READY_%s\\n' $((20+22))\r")
            try:
                child.expect(READY, timeout=min(interval, max(0.1, deadline - time.monotonic())))
                break
            except pexpect.EOF as e:
                raise GuestGone("the guest exited before its shell answered") from e
            except pexpect.TIMEOUT as e:
                if time.monotonic() > deadline:
                    raise GuestHung(f"no shell within {timeout_s:.0f}s of boot") from e
                interval = min(interval * 2, POKE_MAX_S)
        # A quiet, predictable shell: no echo, no prompt, no job notices, no pager. Within what is
        # left of the boot's bound (scaled for TCG and the debug flavour: a KASAN and kmemleak
        # guest under TCG took over 30 s to answer this first command), and never less than 30 s.
        self.run("stty -echo; PS1=; PROMPT_COMMAND=; set +m; export PAGER=cat",
                 timeout_s=max(30.0, deadline - time.monotonic()))
        return time.monotonic() - started

    def run(self, command: str, timeout_s: float) -> CommandResult:
        self._n += 1
        marker = f"__FH{self._n}_"
        child = self.console.child
        started = time.monotonic()
        # drop whatever the shell said since the last command (stray prompts, job notices)
        try:
            child.read_nonblocking(1 << 20, timeout=0)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass
        separator = " " if command.rstrip().endswith("&") else "; "  # `cmd &; echo` is a syntax error
        child.send(f"{command}{separator}echo {marker}$?__\r")
        try:
            child.expect(re.escape(marker) + r"(\d+)__", timeout=timeout_s)
        except pexpect.EOF as e:
            raise GuestGone(f"the guest exited during: {command}") from e
        except pexpect.TIMEOUT as e:
            raise GuestHung(f"no answer within {timeout_s:.0f}s to: {command}") from e
        output = (child.before or "").replace("\r", "")
        match = child.match
        assert isinstance(match, re.Match)  # expect() matched our pattern, or it raised above
        return CommandResult(command, int(match.group(1)), output.strip("\n"),
                             time.monotonic() - started)

    def alive(self) -> bool:
        return self.console.alive()

    def check(self, command: str, timeout_s: float) -> CommandResult:
        result = self.run(command, timeout_s)
        if result.status != 0:
            raise GuestCommandFailed(result)
        return result

    def shutdown(self, timeout_s: float) -> bool:
        """Power the guest off; True if QEMU went away by itself within the timeout.

        Leaving the shell is virtme-ng's way: its init powers off when the shell exits, and a
        minimal root may have no `poweroff` to call."""
        child = self.console.child
        try:
            child.send("exit\r")
            child.expect(pexpect.EOF, timeout=timeout_s)
            return True
        except (pexpect.TIMEOUT, OSError):
            return False


class GuestCommandFailed(Exception):
    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"guest command failed ({result.status}): {result.command}\n{result.output[-2000:]}")
        self.result = result
