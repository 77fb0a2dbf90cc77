"""The virtme-ng command line, the KVM probe and the timeouts that depend on the accelerator.

virtme-ng's interactive mode puts the guest's shell on the first serial port (our pexpect
console). Its kernel console, hvc0, starts printing only when the virtio port appears, and
what the kernel said before that is lost; so the kernel console goes to a second 8250 port,
live from the first line of boot, written by QEMU into `console.log`: the whole kernel log of
every boot, untouched by the shell traffic. vng's own stderr (hvc0's copy, QEMU's complaints)
goes to `vng.log`.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import InputError


# where the forward of --transport ssh goes: QEMU user networking's first guest address (guest/ssh.py
# gives it to the guest's NIC) and sshd's port
SSH_GUEST_ADDR = "10.0.2.15"
SSH_GUEST_PORT = 22


@dataclass(frozen=True)
class Timeouts:
    """Seconds for each phase; KVM values are TCG's divided by the scale."""

    boot: float
    command: float
    stall_bound: float
    recovery: float  # from a kill to the next incarnation serving
    drain: float  # readers finishing after the kill loop

    def scaled(self, factor: float) -> "Timeouts":
        return Timeouts(*(v * factor for v in vars(self).values()))

    @classmethod
    def for_accel(cls, accel: str) -> "Timeouts":
        tcg = cls(boot=180, command=120, stall_bound=30, recovery=60, drain=240)
        if accel == "tcg":
            return tcg
        return tcg.scaled(1 / 3)


@dataclass(frozen=True)
class VmSpec:
    bzimage: Path
    accel: str  # "kvm" or "tcg"
    rwdirs: tuple[Path, ...]
    console_log: Path | None = None
    # --transport ssh: the guest's NIC, reached only through this port of the host's 127.0.0.1.
    # virtme-ng's own --ssh does not fit: its host keys and client key are kept across runs in the
    # user's cache, and its client trusts any host key (StrictHostKeyChecking no).
    ssh_port: int | None = None
    cpus: int = 2
    memory: str = "2G"
    # vng boots with `quiet loglevel=1`: the console would hide every WARNING and BUG. An oops
    # or a soft lockup panics, and a panic reboots at once, which -no-reboot turns into QEMU
    # exiting: a crashed kernel ends the session now instead of leaving it to time out.
    append: tuple[str, ...] = ("loglevel=7", "oops=panic", "softlockup_panic=1", "panic=-1")


def vng_env() -> dict[str, str]:
    """vng runs its helpers (virtme-run) from PATH: put the venv we run from first."""
    return {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def vng_path() -> str:
    path = shutil.which("vng", path=vng_env()["PATH"])
    if path is None:
        raise InputError("vng (virtme-ng) not found: run ci/setup.sh, or use the .venv it makes")
    proc.require_tool("qemu-system-x86_64", "qemu-system-x86")
    return path


def vng_argv(spec: VmSpec, *, exec_cmd: str | None = None) -> list[str]:
    argv = [vng_path(), "--run", str(spec.bzimage),
            # the same transport everywhere: 9p root (no virtiofsd), the pc machine (no microvm)
            "--force-9p", "--disable-microvm", "--disable-monitor",
            "--cpus", str(spec.cpus), "--memory", spec.memory]
    if spec.accel == "tcg":
        argv.append("--disable-kvm")
    for d in spec.rwdirs:
        argv.append(f"--rwdir={d}")
    append = list(spec.append)
    qemu_opts = "-no-reboot"
    if spec.console_log is not None:
        path = str(spec.console_log).replace(",", ",,")  # QEMU's escape for a comma in a value
        qemu_opts += f" -chardev file,id=fhconsole,path={path} -serial chardev:fhconsole"
        append.append("console=ttyS1")  # the second port; ttyS0 is the shell's
    if spec.ssh_port is not None:
        qemu_opts += " " + ssh_netdev(spec.ssh_port)
    argv.append(f"--qemu-opts={qemu_opts}")
    for a in append:
        argv.append(f"--append={a}")
    if exec_cmd is not None:
        argv += ["--exec", exec_cmd]
    return argv


def ssh_netdev(port: int) -> str:
    """A NIC whose only way in is a forward from `port` of the host's loopback to the guest's sshd;
    `restrict=on` keeps the guest from reaching the host or anything beyond (the forward still
    works). The guest's address is the one QEMU's user network gives its first host."""
    return (f"-netdev user,id=fhssh,restrict=on,hostfwd=tcp:127.0.0.1:{port}-{SSH_GUEST_ADDR}:{SSH_GUEST_PORT}"
            " -device virtio-net-pci,netdev=fhssh")


def console_argv(spec: VmSpec, vng_log: Path) -> list[str]:
    """vng under a shell that keeps its stderr in `vng_log`; the pty is the guest's shell."""
    return ["/bin/bash", "-c", f"exec {shlex.join(vng_argv(spec))} 2>>{shlex.quote(str(vng_log))}"]


# -- does KVM really boot a guest here? --------------------------------------------------------

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_accel(bzimage: Path, cache: Path, log: Path, timeout_s: float = 45) -> str:
    """"kvm" if a KVM guest gets to run a command within the timeout, else "tcg".

    /dev/kvm can exist and still hang every guest (a nested paravirtual KVM does), so the only
    honest probe is a boot. The answer is kept per host boot, so it costs one boot per machine.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log.write_text("no usable /dev/kvm: tcg\n")
        return "tcg"
    memo = cache / "kvm-probe.json"
    try:
        known = json.loads(memo.read_text())
        if known.get("boot_id") == _boot_id():
            log.write_text(f"known for this host boot: {known['accel']}\n")
            return str(known["accel"])
    except (OSError, ValueError, KeyError):
        pass
    spec = VmSpec(bzimage, "kvm", ())
    r = proc.run(vng_argv(spec, exec_cmd="echo FH_KVM_BOOTED"), timeout_s=timeout_s, log=log, env=vng_env())
    accel = "kvm" if r.ok and "FH_KVM_BOOTED" in r.output else "tcg"
    memo.write_text(json.dumps({"boot_id": _boot_id(), "accel": accel}))
    return accel
