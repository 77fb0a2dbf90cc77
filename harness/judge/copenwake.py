"""A reopen's copen wakes the daemon's poll(2) sleepers: judged from the kernel's trace, for any daemon.

"cachefiles: resend an open request if the read request's object is closed" leaves the READ that
found its object closed queued while the object is REOPENING (no EPOLLIN for it, patch 4) and
has the reopen's `copen` wake the device's poll queue once the object is OPEN, so that a daemon
thread asleep in poll() takes that READ. A kernel that skips the wake-up leaves a daemon whose
copen-writing thread is not the one asleep in poll() stalled until some other request wakes it.
Our daemon asks it with a probe (probes.py, `wakeup`); another daemon cannot be asked, and a
busy one hides the bug (its threads are woken by the next request). The kernel says it exactly:

- `pollwait` (__pollwait: a poll(2)/select(2) entry put on a file's wait queue, with the caller's
  struct poll_wqueues), completed by the poller's `dev_polled` (cachefiles_daemon_poll returned:
  the entry is on the device's queue); `poll_free` (poll_freewait entered: the poll is over,
  its entries about to be taken off);
- `dev_write` (cachefiles_daemon_write entered: which device file, so which cache, a command
  goes to), then the `copen` tracepoint and the `copened` return in the same task;
- `pollwake` (the wake function of every poll(2) entry a wake-up on its queue calls, in the
  waker's task: which poll_wqueues, which queue; the wake-up's key and the entry's events, since
  a key that misses them returns without waking).

So at each copen of a reopened object: every poll(2) entry of another task on the same device
file, on the queue before the copen and not yet being taken off when the copen returned, must see
`pollwake` from the copen's task between its `copen` and its return. No time bound: the wake-up
is in the copen's own call. epoll(7) entries are not judged (their wake function is another),
nor a copen with no poll(2) entry on its device (nothing to wake: not decided). What the trace
cannot tell: a wake-up made too early inside the same call (before the object is marked OPEN).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .trace import Reopens, TraceEvent


@dataclass(frozen=True)
class Entry:
    """A poll(2) entry on a device file's wait queue."""
    pwq: int  # struct poll_wqueues of the poll() call
    wq: int  # the wait queue head (the cache's daemon_pollwq)
    pid: int  # the task asleep in poll()


@dataclass
class CopenWake:
    ts: float  # the `copen` tracepoint
    pid: int  # the task that wrote it
    o: int  # the object's debug id
    msg_id: int
    sleepers: list[Entry] = field(default_factory=list)  # on the queue through the copen
    woken: set[tuple[int, int]] = field(default_factory=set)  # (pwq, wq) its task woke before its return
    returned: bool = False  # `copened` seen: the window closed

    @property
    def decided(self) -> bool:
        return self.returned and bool(self.sleepers)

    @property
    def missed(self) -> list[Entry]:
        return [s for s in self.sleepers if (s.pwq, s.wq) not in self.woken] if self.decided else []

    def describe(self) -> str:
        pids = ", ".join(str(s.pid) for s in self.missed)
        return (f"the copen of reopened object {self.o:08x} (msg_id {self.msg_id}, task {self.pid}) at {self.ts:.6f} woke "
                f"{len(self.sleepers) - len(self.missed)} of the {len(self.sleepers)} poll(2) sleeper(s) on its device: "
                f"not task(s) {pids}")


def judge(events: list[TraceEvent], complete: bool = True) -> tuple[CopenWake, ...]:
    """Every copen of a reopened object (trace.Reopens' pairing), with the poll(2) sleepers it
    had to wake and those it did. An incomplete trace (lost events) decides nothing: a lost
    `pollwake` would be a miss."""
    if not complete:
        return ()
    reopens = Reopens()
    reopened: dict[int, bool] = {}  # o -> its last `open` was a reopen
    device_of: dict[int, int] = {}  # task -> the device file of its current write()
    pending: dict[int, tuple[int, Entry]] = {}  # task -> (file, entry): pollwait seen, its poll not yet returned
    on_queue: dict[int, list[tuple[int, Entry]]] = {}  # pwq -> (file, entry) on a device's queue
    open_copens: dict[int, CopenWake] = {}  # task -> its copen not yet returned
    judged: list[CopenWake] = []
    for e in events:
        f = e.fields
        reopen = reopens.feed(e)
        if e.event == "open" and "o" in f:
            reopened[f["o"]] = reopen is not None
        elif e.event == "dev_write":
            device_of[e.pid] = f.get("file", 0)
        elif e.event == "pollwait":
            # any file's: a device's is followed by its `dev_polled` in the same task at once (the
            # call it was made in); another file's may be taken by a later device poll that put
            # no entry of its own (poll()'s passes after the first), and is then kept under its
            # own file, which no copen's device is
            pending[e.pid] = (f.get("file", 0), Entry(f.get("pwq", 0), f.get("wq", 0), e.pid))
        elif e.event == "dev_polled" and e.pid in pending:
            file, entry = pending.pop(e.pid)
            on_queue.setdefault(entry.pwq, []).append((file, entry))
        elif e.event == "poll_free":
            pwq = f.get("pwq", 0)
            on_queue.pop(pwq, None)
            # being taken off as a copen runs: whether the wake-up found it is not knowable
            for c in open_copens.values():
                c.sleepers = [s for s in c.sleepers if s.pwq != pwq or (s.pwq, s.wq) in c.woken]
        elif e.event == "copen" and reopened.get(f.get("o", -1)):
            device = device_of.get(e.pid)
            c = CopenWake(e.ts, e.pid, f["o"], f.get("mid", -1))
            c.sleepers = [entry for entries in on_queue.values() for file, entry in entries
                          if file == device and entry.pid != e.pid]
            open_copens[e.pid] = c
            judged.append(c)
        elif e.event == "pollwake" and e.pid in open_copens and _wakes(f.get("key", 0), f.get("ekey", 0)):
            open_copens[e.pid].woken.add((f.get("pwq", 0), f.get("wq", 0)))
        elif e.event == "copened" and e.pid in open_copens:
            open_copens.pop(e.pid).returned = True
    return tuple(judged)


def _wakes(key: int, events: int) -> bool:
    """pollwake (fs/select.c): a wake-up whose key (its poll events; 0 for any) misses the entry's
    events returns without waking the poller."""
    return key == 0 or bool(key & events)
