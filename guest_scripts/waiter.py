"""A process that waits on a dead daemon, for the keeper to SIGKILL (Fault.KILL_WAITER).

It mounts a fresh fsid of an image while the daemon serves (the OPEN and the metadata are read
then), picks the image's largest file, prints MOUNTED and waits for a line on stdin. The keeper
kills the daemon and, before it starts the next one, sends that line: the waiter then reads the
file, whose data no cache file holds yet, so its read() queues a READ that nobody will take and
waits in cachefiles_ondemand_send_req. A kernel whose on-demand reads are killable ("cachefiles:
make on-demand read killable") lets the SIGKILL end that wait at once; one that waits
uninterruptibly keeps the task until the next daemon answers.

Standard library only; the keeper owns the mount point and unmounts it.
"""
from __future__ import annotations

import argparse
import os
import sys

from contract import WAITER_MOUNTED
from reader import files_under, mount_erofs


def largest_file(root: str) -> str:
    return max(files_under(root), key=lambda rel: (os.stat(os.path.join(root, rel)).st_size, rel))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fsid", required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    mount_erofs(args.fsid, args.target)
    path = os.path.join(args.target, largest_file(args.target))
    print(WAITER_MOUNTED, path, flush=True)
    if not sys.stdin.readline():
        return 1  # the keeper went away: nothing to wait for
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
