"""The end of a run, checked in the guest once the readers are done: what the failovers left.

Run by the host after it stopped the readers and sent SIGTERM to the keeper (which stops the
daemon and closes /dev/cachefiles). Writes one JSON object (contract.EndOfRun's fields):
- every mount still under the mount directory is unmounted without MNT_DETACH: one that fails
  or does not return within the bound is a finding (a pinned object, a request never answered);
- the keeper exits: closing the device withdraws the cache, which waits for every cache object
  to be put; a leaked object reference keeps it waiting for good (the keeper in D state);
- /dev/cachefiles can be opened again (EBUSY: the old cache was never released);
- no task is left in D state (for two seconds; 9p waits are the host's).
Nothing here waits without a bound: a umount that hangs is left behind in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from contract import EndOfRun


def mounts_under(directory: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    prefix = directory.rstrip("/") + "/"
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


def state_of(pid: int) -> str | None:
    """The task's state letter; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def wait_gone(pid: int, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if state_of(pid) in (None, "Z", "X"):
            return True
        time.sleep(0.05)
    return state_of(pid) in (None, "Z", "X")


def unmount(point: str, bound_s: float) -> str | None:
    """None when unmounted; else what went wrong. The umount runs as a child that is left
    behind if it hangs (a task in D state cannot be killed, and must not hang this check)."""
    child = subprocess.Popen(["umount", point], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + bound_s
    while child.poll() is None:
        if time.monotonic() > deadline:
            return f"umount did not return within {bound_s:.0f}s (pid {child.pid}, state {state_of(child.pid)})"
        time.sleep(0.05)
    if child.returncode != 0:
        err = child.stderr.read().decode(errors="replace").strip() if child.stderr else ""
        return f"umount failed ({child.returncode}): {err}"
    return None


def d_state_tasks(samples: int = 5, interval_s: float = 0.4) -> list[str]:
    """Tasks in D state at every one of `samples` looks: a task that waits a moment on I/O is
    no finding, one that stays is. Waits on the 9p transport (the guest's root is the host's
    file system, its latency the host's) are not the kernel under test's."""
    stuck: dict[str, str] | None = None
    for i in range(samples):
        now = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and state_of(int(name)) == "D":
                try:
                    with open(f"/proc/{name}/comm") as f:
                        comm = f.read().strip()
                    with open(f"/proc/{name}/wchan") as f:
                        wchan = f.read().strip()
                except OSError:
                    continue
                if not wchan.startswith("p9_"):
                    now[name] = f"{comm}[{name}] in {wchan or '?'}"
        stuck = now if stuck is None else {pid: what for pid, what in now.items() if pid in stuck}
        if not stuck:
            return []
        if i + 1 < samples:
            time.sleep(interval_s)
    return sorted((stuck or {}).values())


def reopen_device() -> str | None:
    try:
        fd = os.open("/dev/cachefiles", os.O_RDWR)
    except OSError as e:
        return f"{e.strerror} (errno {e.errno})"
    os.close(fd)
    return None


def check(mount_dir: str, keeper_pid: int, bound_s: float) -> EndOfRun:
    failed_umounts = {p: why for p in mounts_under(mount_dir) if (why := unmount(p, bound_s)) is not None}
    keeper_exited = wait_gone(keeper_pid, bound_s)
    return EndOfRun(failed_umounts=failed_umounts, keeper_exited=keeper_exited,
                    device_reopen_error=reopen_device() if keeper_exited else "not tried: the keeper never exited",
                    d_state=d_state_tasks())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mount-dir", required=True)
    parser.add_argument("--keeper-pid", type=int, required=True)
    parser.add_argument("--bound-s", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = check(args.mount_dir, args.keeper_pid, args.bound_s)
    with open(args.out, "w") as f:
        json.dump(result.to_json(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
