"""The end of a run, checked in the guest once the readers are done: what the failovers left.

Run by the host after it stopped the readers, with the daemon still serving. Writes one JSON
object (contract.EndOfRun's fields):
- the data the failovers wrote is read back from the cache files: the page cache dropped, every
  image's first fsid read through (contract.reread_rounds) mounted again, each file checksummed, with
  marks in the kernel's trace around it (the host checks that no READ was needed: the cache file
  held it all);
- then SIGTERM to the keeper, which stops the daemon and closes /dev/cachefiles;
- every mount still under the mount directory is unmounted without MNT_DETACH: one that fails
  or does not return within the bound is a finding (a pinned object, a request never answered);
- the keeper exits: closing the device withdraws the cache, which waits for every cache object
  to be put; a leaked object reference keeps it waiting for good (the keeper in D state);
- /dev/cachefiles can be opened again (EBUSY: the old cache was never released);
- no task is left in D state (for two seconds; 9p waits are the host's);
- the debug flavour: kmemleak's unreferenced objects (cleared at boot, scanned twice here).
Nothing here waits without a bound: a umount, a re-read or a kmemleak scan that hangs is left
behind in its own process.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from contract import KMEMLEAK_FILE, REREAD_MARK, EndOfRun, GuestConfig, reread_rounds, round_domain, round_fsid
from eventlog import trace_mark
from reader import CHUNK, files_under, mount_erofs

KMEMLEAK = "/sys/kernel/debug/kmemleak"


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


def returned_within(child: "subprocess.Popen[bytes]", bound_s: float) -> bool:
    """Whether the child exited within the bound; one that did not is left behind."""
    deadline = time.monotonic() + bound_s
    while child.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def unmount(point: str, bound_s: float) -> str | None:
    """None when unmounted; else what went wrong. The umount runs as a child that is left
    behind if it hangs (a task in D state cannot be killed, and must not hang this check)."""
    child = subprocess.Popen(["umount", point], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not returned_within(child, bound_s):
        return f"umount did not return within {bound_s:.0f}s (pid {child.pid}, state {state_of(child.pid)})"
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


def mark(value: int) -> None:
    trace_mark(REREAD_MARK, value)  # no tracefs: the host finds no marks, the re-read unaccounted for


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def reread_images(config: GuestConfig, bound_s: float) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The page cache dropped, each image's first fsid read through mounted again, every file read: what
    the daemons wrote through their anon fds, failovers and all, from the cache files alone. The
    reading is done by a child with a bound (a read the kernel never completes must not hang
    the check), which leaves its results in a file."""
    open(config.end_check_file, "w").close()  # the daemon asks no more probes
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    fd, result_path = tempfile.mkstemp(prefix="reread-", suffix=".json")
    os.close(fd)
    child = os.fork()
    if child == 0:  # the child: its result goes to a file, a pipe would fill up and block it
        try:
            sums, errors = _reread(config, bound_s)
            with open(result_path, "w") as out:
                json.dump({"sums": sums, "errors": errors}, out)
        finally:
            os._exit(0)
    bound = bound_s * (1 + len(config.images))
    deadline = time.monotonic() + bound
    while os.waitpid(child, os.WNOHANG)[0] != child:
        if time.monotonic() > deadline:
            return {}, [f"the re-read did not finish within {bound:.0f}s (pid {child}, state {state_of(child)})"]
        time.sleep(0.05)
    try:
        with open(result_path) as f:
            got = json.load(f)
        return got["sums"], got["errors"]
    except (OSError, ValueError, KeyError):
        return {}, ["the re-read's child wrote no result"]
    finally:
        os.unlink(result_path)


def _reread(config: GuestConfig, bound_s: float) -> tuple[dict[str, dict[str, str]], list[str]]:
    sums: dict[str, dict[str, str]] = {}
    errors: list[str] = []
    events = []
    for path in sorted(glob.glob(os.path.join(config.log_dir, "reader-*.jsonl"))):
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # the reader was killed mid-line
    rounds = reread_rounds(events)
    mark(1)
    for image in sorted(config.images):
        if image not in rounds:
            continue  # no reader read it through (cache deaths): nothing to read back
        reader, round_no = rounds[image]
        fsid = round_fsid(image, reader, round_no)
        target = os.path.join(config.mount_dir, f"reread-{fsid}")
        os.makedirs(target, exist_ok=True)
        try:
            mount_erofs(fsid, target, round_domain(reader, round_no) if image in config.domain_images else None)
        except OSError as e:
            errors.append(f"mount {fsid}: {e.strerror} (errno {e.errno})")
            continue
        files = sums.setdefault(image, {})
        for rel in files_under(target):
            try:
                files[rel] = sha256_of(os.path.join(target, rel))
            except OSError as e:
                errors.append(f"read {fsid}/{rel}: {e.strerror} (errno {e.errno})")
        if (why := unmount(target, bound_s)) is not None:
            errors.append(f"{target}: {why}")
    mark(0)
    return sums, errors


_LEAK = re.compile(r"^unreferenced object (?P<addr>0x[0-9a-f]+) \(size (?P<size>\d+)\):", re.M)
# a frame: `    fn+0x1c/0x80` (%pS; older kernels put `[<address>] ` before it)
_FRAME = re.compile(r"^ {4}(?:\[<[0-9a-f]+>\] )?(?P<fn>[\w.]+)\+0x", re.M)
_ALLOCATOR = re.compile(r"^(kmemleak_|__kmalloc|kmalloc|kmem_cache_alloc|__kmem_cache|slab_|__alloc|alloc_pages"
                        r"|__kvmalloc|kvmalloc|krealloc|kstrdup|kmemdup|kzalloc)")


def leak_lines(report: str) -> list[str]:
    """One line per unreferenced object: its size, the task, and where it was allocated (the
    allocator's own frames left out)."""
    out = []
    starts = [m.start() for m in _LEAK.finditer(report)] + [len(report)]
    for begin, end in zip(starts, starts[1:]):
        block = report[begin:end]
        head = _LEAK.match(block)
        comm = re.search(r'comm "(?P<comm>[^"]*)", pid (?P<pid>\d+)', block)
        frames = [f for f in (m.group("fn") for m in _FRAME.finditer(block)) if not _ALLOCATOR.match(f)]
        out.append(f"size {head.group('size') if head else '?'}"
                   f"{', ' + comm.group('comm') + '[' + comm.group('pid') + ']' if comm else ''}: "
                   f"{' < '.join(frames[:6]) or 'no backtrace'}")
    return out


def kmemleak_scan(bound_s: float, log_dir: str) -> list[str] | None:
    """None without kmemleak (the plain flavour). Two scans: an object is reported once a scan
    finds no reference to it, and one that a list still on its way to being freed held at the
    first scan must not count."""
    if not os.path.exists(KMEMLEAK):
        return None
    for _ in range(2):
        scan = subprocess.Popen(["sh", "-c", f"echo scan >{KMEMLEAK}"], stderr=subprocess.DEVNULL)
        if not returned_within(scan, bound_s * 3):
            return [f"the kmemleak scan did not finish within {bound_s * 3:.0f}s"]
    with open(KMEMLEAK) as f:
        report = f.read()
    with open(os.path.join(log_dir, KMEMLEAK_FILE), "w") as f:
        f.write(report)
    return leak_lines(report)


def check(config: GuestConfig, keeper_pid: int, bound_s: float) -> EndOfRun:
    sums, reread_errors = reread_images(config, bound_s)
    try:
        os.kill(keeper_pid, signal.SIGTERM)  # it stops the daemon and closes /dev/cachefiles
    except ProcessLookupError:
        pass
    failed_umounts = {p: why for p in mounts_under(config.mount_dir) if (why := unmount(p, bound_s)) is not None}
    keeper_exited = wait_gone(keeper_pid, bound_s)
    return EndOfRun(failed_umounts=failed_umounts, keeper_exited=keeper_exited,
                    device_reopen_error=reopen_device() if keeper_exited else "not tried: the keeper never exited",
                    d_state=d_state_tasks(), reread=sums, reread_errors=reread_errors,
                    leaks=kmemleak_scan(bound_s, config.log_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--keeper-pid", type=int, required=True)
    parser.add_argument("--bound-s", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = check(GuestConfig.read(args.config), args.keeper_pid, args.bound_s)
    with open(args.out, "w") as f:
        json.dump(result.to_json(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
