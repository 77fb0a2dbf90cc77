"""--transport ssh without a VM: the run's keys, the pinned host key, the port, the VM's command
line, and the session itself against an sshd stand-in (paramiko's server side, on 127.0.0.1,
running each command with the real bash as the guest's sshd would)."""
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest

from harness import runner
from harness.campaign import bisect, mutants
from harness.errors import EXIT_USAGE, InputError
from harness.guest import ssh, vm
from harness.guest.session import GuestGone, GuestHung
from harness.request import RunRequest


# -- keys ------------------------------------------------------------------------------------------

def test_the_client_key_is_fresh_private_and_gone_at_the_end(tmp_path):
    with ssh.client_key(tmp_path / "authorized_keys") as first:
        assert stat.S_IMODE(first.private_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(first.private_file.parent.stat().st_mode) == 0o700
        line = (tmp_path / "authorized_keys").read_text()
        assert line.startswith("restrict ") and first.key.get_base64() in line  # commands only, this key only
        with ssh.client_key(tmp_path / "other") as second:
            assert second.key.asbytes() != first.key.asbytes()  # a pair per run, never reused
    assert not first.private_file.exists() and not first.private_file.parent.exists()


def test_the_client_key_is_deleted_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with ssh.client_key(tmp_path / "authorized_keys") as key:
            raise RuntimeError("the run died")
    assert not key.private_file.parent.exists()


def test_the_client_key_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with ssh.client_key(tmp_path / "authorized_keys") as key:
            assert stat.S_IMODE(key.private_file.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def ed25519_public(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A host key as the guest makes it (ssh-keygen), and its public line."""
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text()


def test_the_pin_is_read_from_the_console_and_refuses_any_other_key(tmp_path):
    key_a, pub_a = ed25519_public(tmp_path, "a")
    key_b, _ = ed25519_public(tmp_path, "b")
    console = "stray line\nFH_HOSTKEY " + " ".join(pub_a.split()[:2]) + "\n"
    pin = ssh.HostKeyPin.parse(console)
    a = paramiko.Ed25519Key.from_private_key_file(str(key_a))
    pin.check(a)  # the guest's own key
    with pytest.raises(ssh.HostKeyRefused, match="refused"):
        pin.check(paramiko.Ed25519Key.from_private_key_file(str(key_b)))
    with pytest.raises(ssh.HostKeyRefused):
        pin.check(paramiko.ECDSAKey.generate())  # another kind of key is another key
    assert pin.fingerprint == subprocess.run(["ssh-keygen", "-l", "-f", str(key_a) + ".pub"], check=True, text=True,
                                             capture_output=True).stdout.split()[1]


def test_no_host_key_on_the_console_is_no_pin():
    with pytest.raises(ValueError):
        ssh.HostKeyPin.parse("bash: ssh-keygen: command not found\n")
    with pytest.raises(ValueError):  # a command line that merely mentions the marker is not the answer
        ssh.HostKeyPin.parse("printf 'FH_HOSTKEY %s\\n' \"$(cut -d' ' -f1,2 key.pub)\"")


# -- the port --------------------------------------------------------------------------------------

def test_a_port_is_free_and_on_the_loopback(tmp_path):
    held = ssh.reserve_port(tmp_path)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", held.port))  # free: QEMU will bind it
        assert "hostfwd=tcp:127.0.0.1:" in vm.ssh_netdev(held.port)
    finally:
        held.release()


def test_two_vms_never_get_the_same_port(tmp_path):
    """Even when the kernel hands out the same port twice (the first VM's QEMU has not bound it
    yet), the second reservation moves on."""
    picks = iter([40001, 40001, 40001, 40002])
    first = ssh.reserve_port(tmp_path, pick=lambda: next(picks))
    second = ssh.reserve_port(tmp_path, pick=lambda: next(picks))
    assert (first.port, second.port) == (40001, 40002)
    first.release()
    third = ssh.reserve_port(tmp_path, pick=lambda: 40001)  # released with its VM: usable again
    assert third.port == 40001
    second.release()
    third.release()


def test_ports_held_by_another_process_are_skipped(tmp_path):
    held = ssh.reserve_port(tmp_path, pick=lambda: 40010)
    try:
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from harness.guest import ssh;"
                "it = iter([40010, 40011]); print(ssh.reserve_port(Path(sys.argv[2]), pick=lambda: next(it)).port)")
        out = subprocess.run([sys.executable, "-c", code, str(Path(runner.__file__).parents[1]), str(tmp_path)],
                             check=True, text=True, capture_output=True).stdout
        assert out.strip() == "40011"
    finally:
        held.release()


# -- the VM's command line and the guest's sshd ----------------------------------------------------

def test_the_ssh_vm_has_one_nic_forwarded_from_the_loopback_only():
    spec = vm.VmSpec(Path("/k/bzImage"), "tcg", (Path("/runs/r1"),), console_log=Path("/runs/r1/console.log"),
                     ssh_port=41234)
    (opts,) = [a for a in vm.vng_argv(spec) if a.startswith("--qemu-opts=")]
    assert "-serial chardev:fhconsole" in opts  # the console is still kept
    assert "-netdev user,id=fhssh,restrict=on,hostfwd=tcp:127.0.0.1:41234-10.0.2.15:22" in opts
    assert "-device virtio-net-pci,netdev=fhssh" in opts
    assert opts.count("-netdev") == 1 and "0.0.0.0" not in opts
    plain = vm.vng_argv(vm.VmSpec(Path("/k/bzImage"), "tcg", (Path("/runs/r1"),)))
    assert not any("-netdev" in a for a in plain)  # the console transport has no network at all


def test_sshd_takes_our_key_and_nothing_else(tmp_path):
    config = ssh.sshd_config("/run/failover-harness/ssh", tmp_path / "authorized_keys")
    lines = set(config.splitlines())
    assert {"PasswordAuthentication no", "KbdInteractiveAuthentication no", "AuthenticationMethods publickey",
            "PermitRootLogin prohibit-password", f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
            "HostKey /run/failover-harness/ssh/host_ed25519"} <= lines
    command = ssh.start_sshd_command("/run/failover-harness/ssh", tmp_path / "sshd_config", tmp_path / "sshd.log")
    assert "ssh-keygen -q -t ed25519 -N ''" in command and f"/usr/sbin/sshd -f {tmp_path}/sshd_config" in command
    assert "ip addr add 10.0.2.15/24" in command


def test_a_missing_sshd_is_one_line_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(ssh, "TOOLS", ((tmp_path / "sshd", "openssh-server"),))
    with pytest.raises(InputError) as e:
        runner.preflight("ssh")
    assert e.value.exit_code == EXIT_USAGE
    assert "openssh-server" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(runner.vm, "vng_path", lambda: "/usr/bin/vng")
    runner.preflight("console")  # the console needs nothing of ssh's


def test_the_transport_is_in_the_request_and_its_reproducing_command():
    req = RunRequest(transport="ssh").validate()
    assert req.to_json()["transport"] == "ssh"
    assert "--transport ssh" in req.reproduce()
    assert "--transport console" in RunRequest().reproduce()
    with pytest.raises(InputError, match="unknown transport"):
        RunRequest(transport="telnet").validate()
    # a mutant's run and a bisection step go the way the command was asked to
    assert mutants.faulted(RunRequest(transport="ssh"), "crash", 5, "plain", None).transport == "ssh"
    step = bisect.step_argv(RunRequest(transport="ssh", tree=Path("/src/linux")), 1, Path("/b/steps.jsonl"))
    assert step[step.index("--transport") + 1] == "ssh"


# -- the session, against an sshd stand-in ----------------------------------------------------------

class StandIn(paramiko.ServerInterface):
    """One connection's server side: our key only (a password is recorded, never accepted); each
    exec runs its command with bash, the command's stdin being what the client sent."""

    def __init__(self, allowed: paramiko.PKey) -> None:
        self.allowed = allowed
        self.passwords_tried = 0
        self.transport: paramiko.Transport | None = None

    def get_allowed_auths(self, username):
        return "publickey,password"

    def check_auth_publickey(self, username, key):
        ok = username == "root" and key.asbytes() == self.allowed.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_password(self, username, password):
        self.passwords_tried += 1
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        threading.Thread(target=self.execute, args=(channel, command), daemon=True).start()
        return True

    def execute(self, channel, command):
        stdin = b""
        while chunk := channel.recv(1 << 16):
            stdin += chunk
        if b"FH_DROP" in stdin:  # the guest's sshd killed under the session
            assert self.transport is not None
            self.transport.close()
            return
        r = subprocess.run(["/bin/bash", "-c", command.decode()], input=stdin, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        channel.sendall(r.stdout)
        channel.send_exit_status(r.returncode)
        channel.close()


class Server:
    def __init__(self, host_key: paramiko.PKey, allowed: paramiko.PKey) -> None:
        self.host_key = host_key
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.standins: list[StandIn] = []
        self.allowed = allowed
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            standin = StandIn(self.allowed)
            standin.transport = t
            self.standins.append(standin)
            try:
                t.start_server(server=standin)
            except (paramiko.SSHException, EOFError, OSError):
                continue  # a client that hung up in the handshake (one refused, one closed): serve the next

    def close(self):
        self.listener.close()
        for s in self.standins:
            if s.transport is not None:
                s.transport.close()


class Console:
    """The serial console beside the ssh session: the guest's lifetime."""

    def __init__(self):
        self.up = True
        self.shut_down = False

    def alive(self):
        return self.up

    def shutdown(self, timeout_s):
        self.shut_down = True
        return True


@pytest.fixture
def guest(tmp_path):
    host_key = paramiko.Ed25519Key.from_private_key_file(str(ed25519_public(tmp_path, "host")[0]))
    with ssh.client_key(tmp_path / "authorized_keys") as client:
        server = Server(host_key, client.key)
        pin = ssh.HostKeyPin(host_key.get_name(), host_key.asbytes())
        yield server, client, pin
        server.close()


def connect(guest, tmp_path, timeout_s=10.0, pin=None):
    server, client, own_pin = guest
    transcript = open(tmp_path / "commands.log", "w")
    return ssh.SshSession.connect(server.port, client, pin or own_pin, Console(), transcript, timeout_s)


def test_a_command_gives_its_status_and_output(guest, tmp_path):
    session = connect(guest, tmp_path)
    try:
        r = session.run("echo one; echo two >&2; exit 3", timeout_s=10)
        assert (r.status, r.output) == (3, "one\ntwo")
        assert session.check("echo fine", timeout_s=10).output == "fine"
        # the command is not on the shell's command line: `pkill -f` of the drain never hits the shell
        r = session.run("tr '\\0' ' ' </proc/$$/cmdline; echo; echo guest_scripts/reader.py >/dev/null", 10)
        assert "guest_scripts" not in r.output and r.status == 0
        r = session.run("sleep 30 >/dev/null 2>&1 & echo started", timeout_s=10)  # as the services start theirs
        assert r.output == "started" and r.seconds < 5
        assert session.alive()
    finally:
        session.shutdown(timeout_s=1)
    assert guest[0].standins[0].passwords_tried == 0
    assert "$ echo fine" in (tmp_path / "commands.log").read_text()


def test_a_command_that_does_not_return_is_a_hang(guest, tmp_path):
    session = connect(guest, tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(GuestHung, match="no answer within 1s"):
            session.run("sleep 5", timeout_s=1)
        assert time.monotonic() - started < 3
        assert session.run("echo after", timeout_s=10).output == "after"  # its own channel: the next one works
    finally:
        session.close()


def test_a_connection_that_dies_is_the_guest_gone(guest, tmp_path):
    session = connect(guest, tmp_path)
    try:
        with pytest.raises(GuestGone, match="ssh connection to the guest closed"):
            session.run("FH_DROP", timeout_s=10)
        assert not session.alive() and session.lost
        with pytest.raises(GuestGone):
            session.run("echo again", timeout_s=10)
    finally:
        session.close()


def test_a_changed_host_key_is_refused_at_once(guest, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(ed25519_public(tmp_path, "other")[0]))
    started = time.monotonic()
    with pytest.raises(ssh.HostKeyRefused):
        connect(guest, tmp_path, timeout_s=30, pin=ssh.HostKeyPin(other.get_name(), other.asbytes()))
    assert time.monotonic() - started < 10  # refused, not retried until the timeout
    assert all(s.passwords_tried == 0 for s in guest[0].standins)


def test_a_key_the_guest_does_not_know_never_gets_in(guest, tmp_path):
    server, _, pin = guest
    with ssh.client_key(tmp_path / "other_keys") as stranger:
        with pytest.raises(ssh.SshUnreachable, match="did not let us in"):
            ssh.SshSession.connect(server.port, stranger, pin, Console(), open(tmp_path / "t.log", "w"), 2.5)
    assert all(s.passwords_tried == 0 for s in server.standins)


def test_an_sshd_that_never_answers_is_unreachable_in_time(tmp_path):
    with socket.socket() as silent:  # accepts (as QEMU's forward does before the guest listens), says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with ssh.client_key(tmp_path / "authorized_keys") as client:
            started = time.monotonic()
            with pytest.raises(ssh.SshUnreachable):
                ssh.SshSession.connect(silent.getsockname()[1], client, ssh.HostKeyPin("ssh-ed25519", b"x"),
                                       Console(), open(tmp_path / "t.log", "w"), 3)
            assert time.monotonic() - started < 20


# -- the host's own sshd, as the guest runs it ------------------------------------------------------

AS_THE_GUEST = r'''
import os, socket, subprocess, sys
from pathlib import Path
import paramiko
from harness.guest import ssh
d = Path(sys.argv[1])
subprocess.run("mount -t tmpfs none /run && ip link set lo up", shell=True, check=True)
# the guest's /etc/shadow as virtme-ng's init leaves it: a copy mounted over it, every account locked
locked = d / "shadow.locked"
entries = [line.split(":") for line in Path("/etc/shadow").read_text().splitlines()]
locked.write_text("".join(":".join([e[0], "!", *e[2:]]) + "\n" for e in entries))
subprocess.run(["mount", "--bind", str(locked), "/etc/shadow"], check=True)

class Console:
    def alive(self): return True

with ssh.client_key(d / "authorized_keys") as client:
    (d / "sshd_config").write_text(ssh.sshd_config(str(d / "keys"), client.authorized_keys))
    start = ssh.start_sshd_command(str(d / "keys"), d / "sshd_config", d / "sshd.log")
    start = start[start.index("mkdir -p -m 0755 /run/sshd"):]  # no NIC in this namespace: lo is the guest's
    print("ROOT", [l.split(":")[1] for l in Path("/etc/shadow").read_text().splitlines() if l.startswith("root:")])
    out = subprocess.run(["bash", "-c", start], check=True, text=True, capture_output=True).stdout
    pin = ssh.HostKeyPin.parse(out)
    try:
        print("UNLOCKED", [l.split(":")[1] for l in Path("/etc/shadow").read_text().splitlines() if l.startswith("root:")])
        session = ssh.SshSession.connect(22, client, pin, Console(), open(d / "commands.log", "w"), 20)
        r = session.run("echo $SHLVL; exit 4", 20)
        print("RESULT", r.status, r.output.split()[0])
        session.close()
        t = paramiko.Transport(socket.create_connection(("127.0.0.1", 22)))
        t.start_client(timeout=10)
        try:
            t.auth_password("root", "x")
            print("PASSWORD ACCEPTED")
        except paramiko.BadAuthenticationType as e:
            print("PASSWORD REFUSED", e.allowed_types)
        t.close()
    finally:
        subprocess.run(["pkill", "-F", str(d / "keys" / "sshd.pid")])
'''


def test_the_hosts_sshd_lets_in_our_key_alone(tmp_path):
    """The real sshd with our configuration and start command, in a network and mount namespace
    of its own (its own loopback, /run and /etc/shadow, locked as in the guest): our key in, a
    password refused, and bash not at shell level 1 (where it would source root's .bashrc for
    every command)."""
    if not os.access(ssh.SSHD, os.X_OK) or os.geteuid() != 0:
        pytest.skip("needs the host's sshd (ci/setup.sh installs openssh-server) and root for namespaces")
    probe = subprocess.run(["unshare", "-m", "-n", "true"], text=True, capture_output=True, timeout=30)
    if probe.returncode != 0:  # a chroot whose / is no mount point: "cannot change root filesystem propagation"
        pytest.skip(f"no mount and network namespace here: {probe.stderr.strip()}")
    r = subprocess.run(["unshare", "-m", "-n", sys.executable, "-c", AS_THE_GUEST, str(tmp_path)], text=True,
                       capture_output=True, timeout=60, cwd=Path(runner.__file__).parents[1])
    assert r.returncode == 0, r.stderr + (tmp_path / "sshd.log").read_text(errors="replace")
    lines = r.stdout.splitlines()
    status, shlvl = [line.split()[1:] for line in lines if line.startswith("RESULT")][0]
    assert status == "4" and int(shlvl) >= 2
    assert "PASSWORD REFUSED ['publickey']" in lines
    assert "ROOT ['!']" in lines and "UNLOCKED ['*']" in lines  # locked as virtme-ng leaves it, then let in
