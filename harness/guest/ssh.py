"""The guest driven over ssh (paramiko) instead of its serial console.

The guest sees the host's root, so its sshd is the host's own binary: started over the console
right after boot, with a config and a host key the guest makes in its own tmpfs, and reached
through QEMU's user networking, a port of the host's 127.0.0.1 (never another address)
forwarded to the guest's port 22. Trust goes only through channels the harness already owns:
the client's public key reaches the guest through the run directory (9p), the guest's host key
reaches the host over the serial console, and the client refuses every other host key. Neither
side ever offers or accepts a password, and nothing is trusted on first use.

Every command runs on a channel of its own, so a fault is never queued behind another command
(the console has one line for everything). The console stays attached all along: the kernel
console is still written to console.log, and the guest is shut down through it at the end.
"""
from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import paramiko

from ..errors import InputError
from .session import CommandResult, GuestCommandFailed, GuestGone, GuestHung, GuestSession
from .vm import SSH_GUEST_ADDR, SSH_GUEST_PORT

SSHD = Path("/usr/sbin/sshd")  # Debian's path; the guest runs the host's binary
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
# (tool, the Debian package that brings it): a missing one is an input error (exit 2) naming it
TOOLS = ((SSHD, "openssh-server"), (SSH_KEYGEN, "openssh-client"))

USER = "root"  # the guest's services need root (/dev/cachefiles, mounts, tracefs)
GUEST_PREFIX = 24
HOST_KEY_LINE = re.compile(r"^FH_HOSTKEY (\S+) ([A-Za-z0-9+/]+={0,2})(?:\s|$)", re.M)
PORT_LOCKS = Path(tempfile.gettempdir()) / "failover-harness-ports"
CONNECT_RETRY_S = 1.0
# a channel closed with no exit status: how long the transport may take to say it is gone (its
# reader thread closes the channels first, then marks itself inactive)
GONE_GRACE_S = 2.0
# sshd runs a command with the user's shell, `$SHELL -c COMMAND`, which puts the command on that
# shell's command line, where `pkill -f PATTERN` (the drain's) would match and kill the shell
# itself. So the command goes in on stdin and is evaluated by a shell whose command line is this
# (`read`, a builtin: no process more per command than the console's shell forks).
REMOTE_SHELL = "exec /bin/bash -c 'IFS= read -r -d \"\" command; eval \"$command\"'"


class SshUnreachable(Exception):
    """The guest's sshd never answered, or answered with another key than the one it printed."""


class HostKeyRefused(SshUnreachable):
    """The server offered a host key other than the pinned one."""


def require_tools() -> None:
    for path, package in TOOLS:
        if not os.access(path, os.X_OK):
            raise InputError(f"{path} not found (Debian package {package}; ci/setup.sh installs it): "
                             f"--transport ssh starts the host's sshd in the guest")


# -- the port: free, on 127.0.0.1, one VM's only ------------------------------------------------

def ephemeral_port() -> int:
    """A port of 127.0.0.1 free right now, as the kernel picks one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PortReservation:
    """A port held for one VM: a lock on the port's file that every harness on the host honours,
    held until release(). The kernel never hands out a port bound now, and a port handed out
    again in the moment between our probe's close and QEMU's bind is refused by the lock."""

    port: int
    lock_fd: int

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def reserve_port(lock_dir: Path = PORT_LOCKS, pick: Callable[[], int] = ephemeral_port,
                 attempts: int = 64) -> PortReservation:
    lock_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = pick()
        fd = os.open(lock_dir / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # another VM of ours holds it
            raise
        return PortReservation(port, fd)
    raise SshUnreachable(f"no free port for the guest's sshd after {attempts} tries")


# -- keys ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientKey:
    private_file: Path  # 0600 in a 0700 directory of its own; gone when the run ends
    authorized_keys: Path  # what the guest's sshd accepts: this key and nothing else
    key: paramiko.PKey


@contextmanager
def client_key(authorized_keys: Path) -> Iterator[ClientKey]:
    """A fresh key pair for one run; the private key is deleted when the run ends, however it ends."""
    private_dir = Path(tempfile.mkdtemp(prefix="failover-harness-ssh-"))  # mode 0700
    try:
        key = paramiko.ECDSAKey.generate()
        private_file = private_dir / "id_ecdsa"
        fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w") as f:
            key.write_private_key(f)
        # `restrict`: no pty, no forwarding of any kind; commands only
        authorized_keys.write_text(f"restrict {key.get_name()} {key.get_base64()} failover-harness\n")
        yield ClientKey(private_file, authorized_keys, paramiko.ECDSAKey.from_private_key_file(str(private_file)))
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class HostKeyPin:
    """The guest's host key as the guest printed it on the console: the only one accepted."""

    key_type: str
    blob: bytes

    @classmethod
    def parse(cls, console_output: str) -> "HostKeyPin":
        """From the `FH_HOSTKEY <type> <base64>` line the guest prints; ValueError without one."""
        match = HOST_KEY_LINE.search(console_output)
        if match is None:
            raise ValueError("the guest printed no host key")
        return cls(match.group(1), base64.b64decode(match.group(2), validate=True))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def check(self, offered: paramiko.PKey) -> None:
        if offered.get_name() != self.key_type or offered.asbytes() != self.blob:
            raise HostKeyRefused(f"the server's host key {offered.get_name()} {fingerprint(offered.asbytes())} is not "
                                 f"the guest's {self.key_type} {self.fingerprint}: refused")


# -- the guest's side ------------------------------------------------------------------------------

def sshd_config(key_dir: str, authorized_keys: Path) -> str:
    """sshd's whole configuration: keys only, root only, our key only; the defaults of the host's
    /etc/ssh play no part (sshd -f reads this file alone)."""
    return "\n".join((
        f"Port {SSH_GUEST_PORT}",
        "AddressFamily inet",  # the guest kernel has no IPv6
        f"HostKey {key_dir}/host_ed25519",
        f"PidFile {key_dir}/sshd.pid",
        f"AuthorizedKeysFile {authorized_keys}",
        f"AllowUsers {USER}",
        "PermitRootLogin prohibit-password",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "HostbasedAuthentication no",
        "GSSAPIAuthentication no",
        # no PAM: the guest has no session of its own to set up, and the key is the whole check
        "UsePAM no",
        # the authorized_keys file is the host's, on 9p: its modes are the host's umask's
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "AllowTcpForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "MaxSessions 64",  # a channel per command; a few at once at most, never a refusal
        # bash started by sshd at shell level 1 sources ~/.bashrc for every command (Debian builds
        # it so), and a root's .bashrc may take long (pyenv's init: 0.7 s a command on the host);
        # the console's shell reads it once. At level 2 bash reads nothing, as on the console after
        # its start; no ~/.ssh/rc either.
        "SetEnv SHLVL=1",
        "PermitUserRC no",
        "LogLevel VERBOSE",
        "",
    ))


def start_sshd_command(key_dir: str, config: Path, log: Path) -> str:
    """What the console types to bring the guest's network and sshd up and print the host key.

    The NIC is the only one besides lo (its name depends on the kernel, not on us); its address
    is the one QEMU's forward goes to. sshd binds before it forks into the background, so when
    this returns, a connection reaches it."""
    q = shlex.quote
    return " && ".join((
        "ip link set lo up",
        "nic=$(ls /sys/class/net | grep -vx lo | head -n 1) && [ -n \"$nic\" ]",
        f"ip addr add {SSH_GUEST_ADDR}/{GUEST_PREFIX} dev $nic && ip link set $nic up",
        "mkdir -p -m 0755 /run/sshd",  # sshd's privilege separation directory
        f"mkdir -p -m 0700 {q(key_dir)}",
        f"{SSH_KEYGEN} -q -t ed25519 -N '' -C failover-harness-guest -f {q(key_dir)}/host_ed25519",
        # virtme-ng's init gives the guest a copy of /etc/shadow with every account locked ('!'),
        # and sshd without PAM lets no one into a locked account, not even with a key. '*' is a
        # password nothing matches (and sshd takes no password anyway): root's entry, in place
        # (the copy is mounted over /etc/shadow; a rename could not replace it)
        f"awk -F: -v OFS=: '$1 == \"{USER}\" {{ $2 = \"*\" }} 1' /etc/shadow >{q(key_dir)}/shadow"
        f" && cat {q(key_dir)}/shadow >/etc/shadow",
        f"{SSHD} -f {q(str(config))} -E {q(str(log))}",
        f"printf 'FH_HOSTKEY %s\\n' \"$(cut -d' ' -f1,2 {q(key_dir)}/host_ed25519.pub)\"",
    ))


# -- the host's side -------------------------------------------------------------------------------

class SshSession:
    """A Session over ssh; the console session beside it keeps the guest's lifetime."""

    def __init__(self, transport: paramiko.Transport, console: GuestSession, transcript: TextIO) -> None:
        self.transport = transport
        self.console = console
        self.transcript = transcript
        self.lost: str | None = None  # why the connection ended, once it has

    @classmethod
    def connect(cls, port: int, client: ClientKey, pin: HostKeyPin, console: GuestSession, transcript: TextIO,
                timeout_s: float) -> "SshSession":
        """Until the guest's sshd lets us in with our key and its own host key. A refusal of the
        host key ends the attempts at once; anything else is tried again until the timeout."""
        deadline = time.monotonic() + timeout_s
        last = "no attempt"
        while True:
            try:
                return cls(open_transport(port, client, pin, max(1.0, deadline - time.monotonic())), console,
                           transcript)
            except HostKeyRefused:
                raise
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = f"{type(e).__name__}: {e}"
            if not console.alive():
                raise GuestGone(f"the guest exited before its sshd answered ({last})")
            if time.monotonic() + CONNECT_RETRY_S > deadline:
                raise SshUnreachable(f"the guest's sshd on 127.0.0.1:{port} did not let us in within "
                                     f"{timeout_s:.0f}s ({last})")
            time.sleep(CONNECT_RETRY_S)

    def run(self, command: str, timeout_s: float) -> CommandResult:
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            channel = self.transport.open_session(timeout=timeout_s)
            channel.set_combine_stderr(True)  # one stream, as on the console
            channel.exec_command(REMOTE_SHELL)
            channel.sendall(command.encode())
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self._no_answer(command, timeout_s) from e
        try:
            output = self._read_until_eof(channel, command, deadline, timeout_s)
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise GuestHung(f"no exit status within {timeout_s:.0f}s from: {command}")
            if channel.exit_status == -1 and self._gone_within(GONE_GRACE_S):
                raise self._gone(command)
            status = channel.exit_status
        finally:
            channel.close()
        result = CommandResult(command, status, output.replace("\r", "").strip("\n"), time.monotonic() - started)
        self.transcript.write(f"$ {command}\n{result.output}\n[status {status}, {result.seconds:.2f}s]\n")
        self.transcript.flush()
        return result

    def _read_until_eof(self, channel: paramiko.Channel, command: str, deadline: float, timeout_s: float) -> str:
        chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestHung(f"no answer within {timeout_s:.0f}s to: {command}")
            channel.settimeout(min(remaining, 1.0))
            try:
                data = channel.recv(1 << 16)
            except socket.timeout:
                if not self.transport.is_active():
                    raise self._gone(command) from None
                continue
            if not data:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(data)

    def _gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.transport.is_active():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _gone(self, command: str) -> GuestGone:
        return GuestGone(f"{self._note_lost()} during: {command}")

    def _note_lost(self) -> str:
        """Why the connection ended, said once: what the run's report gives as the cause."""
        if self.lost is None:
            cause = self.transport.get_exception()
            said = "" if cause is None else f" ({type(cause).__name__}{f': {cause}' if str(cause) else ''})"
            self.lost = f"the ssh connection to the guest closed{said}"
        return self.lost

    def _no_answer(self, command: str, timeout_s: float) -> Exception:
        """A channel that could not be opened: the connection is gone, or the guest is too busy
        (or frozen) to open one in time."""
        if self.transport.is_active():
            return GuestHung(f"no channel within {timeout_s:.0f}s for: {command}")
        return self._gone(command)

    def check(self, command: str, timeout_s: float) -> CommandResult:
        result = self.run(command, timeout_s)
        if result.status != 0:
            raise GuestCommandFailed(result)
        return result

    def alive(self) -> bool:
        if not self.transport.is_active():
            self._note_lost()
            return False
        return self.console.alive()

    def shutdown(self, timeout_s: float) -> bool:
        """ssh closed first, then the guest powered off through its console (as with the console)."""
        self.close()
        return self.console.shutdown(timeout_s)

    def close(self) -> None:
        self.transport.close()
        self.transcript.close()


def open_transport(port: int, client: ClientKey, pin: HostKeyPin, timeout_s: float) -> paramiko.Transport:
    """One attempt: connect, check the host key against the pin, log in with our key alone."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    transport = paramiko.Transport(sock)
    try:
        transport.get_security_options().key_types = (pin.key_type,)  # the pinned kind of key, no other
        transport.start_client(timeout=timeout_s)
        pin.check(transport.get_remote_server_key())
        transport.auth_publickey(USER, client.key)  # raises unless accepted; no password is ever tried
        return transport
    except BaseException:
        transport.close()
        raise


@dataclass(frozen=True)
class SshLink:
    """What a VM needs for ssh before it boots: its port, and the run's client key."""

    port: PortReservation
    client: ClientKey
    run_dir: Path  # ssh/ under the run directory: sshd's config and log, the transcript

    @property
    def config(self) -> Path:
        return self.run_dir / "sshd_config"


@contextmanager
def link(run_dir: Path) -> Iterator[SshLink]:
    """A port and a key pair for one VM, released and deleted when it is over."""
    run_dir.mkdir(exist_ok=True)
    port = reserve_port()
    try:
        with client_key(run_dir / "authorized_keys") as client:
            yield SshLink(port, client, run_dir)
    finally:
        port.release()


def open_session(console: GuestSession, ssh: SshLink, key_dir: str, timeout_s: float) -> SshSession:
    """Start the guest's sshd over the console, pin the host key it prints, connect.

    SshUnreachable (never let in) and GuestCommandFailed (sshd did not start) are the caller's
    to turn into an untestable run; the caller closes the session."""
    ssh.config.write_text(sshd_config(key_dir, ssh.client.authorized_keys))
    started = console.check(start_sshd_command(key_dir, ssh.config, ssh.run_dir / "sshd.log"), timeout_s)
    try:
        pin = HostKeyPin.parse(started.output)
    except ValueError as e:
        raise SshUnreachable(f"{e}: {started.output[-500:]}") from e
    transcript = open(ssh.run_dir / "commands.log", "w")
    transcript.write(f"# ssh -i {ssh.client.private_file} -p {ssh.port.port} {USER}@127.0.0.1 "
                     f"(host key {pin.key_type} {pin.fingerprint}; the key file is deleted at the run's end)\n")
    try:
        return SshSession.connect(ssh.port.port, ssh.client, pin, console, transcript, timeout_s)
    except BaseException:
        transcript.close()
        raise
