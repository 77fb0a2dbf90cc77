"""Reads every file of the EROFS images again and again, checksumming each one.

Each round mounts every image under a fresh fsid (`<image>.<reader>x<round>`), so the kernel
has no cached copy and every byte read becomes a READ request to the daemon: the daemon stays
busy for as long as the kill loop runs. Per file: sha256, bytes, read count and worst latency;
per failed read: the errno, and how long the call waited. A failed read ends the reader's use of
that mount (it goes on with the next image's fresh mount: after a cache's death, only a fresh
mount can use the new cache); a failed mount is followed by a short pause. With
`race_withdrawal` the even readers keep a mount failed with EIO until the daemon starts
withdrawing the dead cache, and unmount it a seeded moment later; the odd ones unmount at once
and go on mounting (every 200 ms while mounts fail), which puts cookie lookups across the
withdrawal.
A watchdog thread reports a call (mount, open, read, umount) that has not returned within the
stall bound while it is still stuck, with the kernel stack it waits in, since a call waiting on
a dead daemon may never return.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import os
import random
import sys
import threading
import time
from collections.abc import Iterator

from contract import Event, GuestConfig, round_domain, round_fsid
from eventlog import EventLog

CHUNK = 128 * 1024
MOUNT_RETRY_PAUSE_S = 0.2  # after a failed mount: no cache bound yet, the next one tries again
# race_withdrawal: a held dead mount goes this share of the stall bound at most after the
# withdrawal begins (seeded, uniform), so that the readers' umounts spread over the withdrawal's
# stages: 0.1 s under TCG, where a withdrawal takes 0.02-0.25 s (cache-death, seeds 1-7)
WITHDRAWAL_SPREAD_SHARE = 1 / 300
WITHDRAWAL_POLL_S = 0.002
_libc = ctypes.CDLL(None, use_errno=True)


# Read latency histogram: upper bounds in seconds; the last bucket is everything slower.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)


def bucket(latency: float) -> str:
    for upper in LATENCY_BUCKETS:
        if latency <= upper:
            return str(upper)
    return "inf"


def mount_erofs(fsid: str, target: str, domain: str | None = None) -> None:
    options = f"fsid={fsid}" + (f",domain_id={domain}" if domain else "")
    if _libc.mount(b"none", target.encode(), b"erofs", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def files_under(root: str) -> list[str]:
    """Every file below `root`, relative to it, in a fixed order (directories sorted)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files += sorted(os.path.relpath(os.path.join(dirpath, n), root) for n in filenames)
    return files


def umount(target: str) -> int:
    """0, or the errno of a plain umount that failed (then detached: the reader goes on; the
    failure is a finding, logged by the caller)."""
    if _libc.umount2(target.encode(), 0) == 0:
        return 0
    err = ctypes.get_errno()
    detach(target)  # never leave the reader stuck here
    return err


def detach(target: str) -> int:
    """umount -l (MNT_DETACH): 0, or the errno. The filesystem goes when its last file does."""
    return 0 if _libc.umount2(target.encode(), 2) == 0 else ctypes.get_errno()


class Watchdog(threading.Thread):
    """Reports a call of the reader's that has not returned within the bound, once, while it is
    still stuck, with the kernel stack its thread waits in (what a maintainer asks first)."""

    def __init__(self, log: EventLog, bound_s: float) -> None:
        super().__init__(daemon=True)
        self.log = log
        self.bound_s = bound_s
        self.current: tuple[str, float, int] | None = None  # (what, monotonic start, native tid)
        self.reported: tuple[str, float, int] | None = None

    @contextlib.contextmanager
    def watching(self, what: str) -> Iterator[float]:
        """Watch the calls in the block; yields when it began (monotonic)."""
        started = time.monotonic()
        self.current = (what, started, threading.get_native_id())
        try:
            yield started
        finally:
            self.current = None

    def run(self) -> None:
        while True:
            time.sleep(min(0.5, self.bound_s / 4))
            current = self.current
            if current and current is not self.reported:
                waited = time.monotonic() - current[1]
                if waited > self.bound_s:
                    self.reported = current
                    self.log.emit(Event.STALL, what=current[0], waited_s=round(waited, 3),
                                  wchan=read_proc(f"/proc/self/task/{current[2]}/wchan"),
                                  stack=read_proc(f"/proc/self/task/{current[2]}/stack").splitlines())


def read_proc(path: str) -> str:
    """A /proc file's text, or why it could not be read (the task may be gone)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"unreadable: {e.strerror}"


class Reader:
    def __init__(self, config: GuestConfig, reader_id: int) -> None:
        self.config = config
        self.reader_id = reader_id
        self.log = EventLog(config.reader_log(reader_id), who="reader", reader=reader_id)
        self.slow_s = config.slow_read_s
        self.watchdog = Watchdog(self.log, config.stall_bound_s)
        self.rounds_done = 0
        self.read_through: set[str] = set()  # images this reader read every file of, in one mount
        self.stop_seen_round: int | None = None
        self.rng = random.Random(f"{config.seed}/reader-{reader_id}")
        self.latencies: dict[str, int] = {}
        # images named here share one EROFS domain per round (volume `erofs,<domain>`)
        self.domain_images = set(config.domain_images)

    def stop_requested(self) -> bool:
        """Asked to stop, and every image read through once by this reader (a cache death cuts
        mounts short), or a whole round read since the stop was asked (errors that never end)."""
        if self.rounds_done < 1 or not os.path.exists(self.config.stop_file):
            return False
        if self.stop_seen_round is None:
            self.stop_seen_round = self.rounds_done
        return self.read_through >= set(self.config.images) or self.rounds_done > self.stop_seen_round

    def read_file(self, image: str, fsid: str, root: str, rel: str) -> int | None:
        """Read and checksum one file; the errno of a call that failed (logged), or None."""
        digest = hashlib.sha256()
        total = reads = 0
        worst = 0.0
        error = None
        path = os.path.join(root, rel)
        try:
            with self.watchdog.watching(f"open {fsid}:{rel}") as started:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.log.emit(Event.READ_ERROR, image=image, fsid=fsid, path=rel, stage="open",
                          errno=e.errno, error=e.strerror, waited_s=round(time.monotonic() - started, 4))
            return e.errno
        try:
            while True:
                try:
                    with self.watchdog.watching(f"read {fsid}:{rel}@{total}") as started:
                        chunk = os.read(fd, CHUNK)
                except OSError as e:
                    error = e
                    break
                latency = time.monotonic() - started
                self.latencies[bucket(latency)] = self.latencies.get(bucket(latency), 0) + 1
                reads += 1
                worst = max(worst, latency)
                if latency > self.slow_s:
                    self.log.emit(Event.SLOW_READ, image=image, fsid=fsid, path=rel, off=total,
                                  latency_s=round(latency, 4))
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
        finally:
            with self.watchdog.watching(f"close {fsid}:{rel}"):
                os.close(fd)
        if error is not None:
            self.log.emit(Event.READ_ERROR, image=image, fsid=fsid, path=rel, stage="read", off=total,
                          errno=error.errno, error=error.strerror, waited_s=round(time.monotonic() - started, 4))
            return error.errno
        self.log.emit(Event.FILE, image=image, fsid=fsid, path=rel, sha256=digest.hexdigest(),
                      bytes=total, reads=reads, max_latency_s=round(worst, 4))
        return None

    def read_image(self, image: str, round_no: int) -> None:
        fsid = round_fsid(image, self.reader_id, round_no)
        domain = round_domain(self.reader_id, round_no) if image in self.domain_images else None
        target = os.path.join(self.config.mount_dir, fsid)
        os.makedirs(target, exist_ok=True)
        try:
            with self.watchdog.watching(f"mount {fsid}") as started:
                mount_erofs(fsid, target, domain)
        except OSError as e:
            self.log.emit(Event.READ_ERROR, image=image, fsid=fsid, path="", stage="mount",
                          errno=e.errno, error=e.strerror, waited_s=round(time.monotonic() - started, 4))
            os.rmdir(target)
            time.sleep(MOUNT_RETRY_PAUSE_S)
            return
        self.log.emit(Event.MOUNTED, image=image, fsid=fsid, domain=domain,
                      latency_s=round(time.monotonic() - started, 4))
        holds = self.config.race_withdrawal and self.reader_id % 2 == 0
        withdrawals = self.withdrawals() if holds else None
        held = False
        try:
            with self.watchdog.watching(f"walk {fsid}"):
                files = files_under(target)
            for rel in files:
                if self.stop_requested():
                    return
                if (failed := self.read_file(image, fsid, target, rel)) is not None:
                    held = failed == errno.EIO and withdrawals is not None
                    return
            self.read_through.add(image)
            self.log.emit(Event.READ_THROUGH, image=image, fsid=fsid, round=round_no)
        finally:
            seen = held and self.await_withdrawal(str(withdrawals))
            began = time.time()
            with self.watchdog.watching(f"umount {fsid}") as started:
                err = umount(target)
            if err:
                self.log.emit(Event.UMOUNT_FAILED, image=image, fsid=fsid, errno=err, error=os.strerror(err))
            if held:
                self.log.emit(Event.HELD_UMOUNT, image=image, fsid=fsid, withdrawal_seen=seen, began=round(began, 6),
                              took_s=round(time.monotonic() - started, 4))
            with self.watchdog.watching(f"rmdir {fsid}"):
                os.rmdir(target)

    def withdrawals(self) -> str:
        """The daemon's withdrawing file as it is now: it changes at every withdrawal."""
        try:
            with open(self.config.withdrawing_file) as f:
                return f.read()
        except OSError:
            return ""

    def await_withdrawal(self, before: str) -> bool:
        """Until the dead cache's withdrawal begins (a third of the stall bound at most), then a
        seeded moment more; whether it began."""
        with self.watchdog.watching("the withdrawal"):
            return self._await_withdrawal(before)

    def _await_withdrawal(self, before: str) -> bool:
        deadline = time.monotonic() + self.config.stall_bound_s / 3
        while self.withdrawals() == before:
            if time.monotonic() > deadline:
                return False
            time.sleep(WITHDRAWAL_POLL_S)
        time.sleep(self.rng.uniform(0, WITHDRAWAL_SPREAD_SHARE * self.config.stall_bound_s))
        return True

    def run(self) -> int:
        self.watchdog.start()
        images = sorted(self.config.images)
        # Readers start on different images so that they do not queue behind each other.
        images = images[self.reader_id % len(images):] + images[: self.reader_id % len(images)]
        self.log.emit(Event.STARTED, pid=os.getpid())
        while not self.stop_requested():
            for image in images:
                if self.stop_requested():
                    break
                self.read_image(image, self.rounds_done)
            self.rounds_done += 1
        self.log.emit(Event.FINISHED, rounds=self.rounds_done, latency_histogram=self.latencies)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--id", type=int, required=True)
    args = parser.parse_args()
    return Reader(GuestConfig.read(args.config), args.id).run()


if __name__ == "__main__":
    sys.exit(main())
