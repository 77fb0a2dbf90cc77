"""Scenarios as data: which faults to inject, with what load, and what evidence proves the
failover paths ran. A run that passes its checksums without that evidence is INCONCLUSIVE.

The faults, each driven from the host at seeded moments:
- kill: SIGKILL the serving daemon; the keeper keeps the device fd, the next one writes
  `restore` (patch 5) and must receive what the dead one held;
- close: SIGUSR1 the daemon, which closes a live object's anon fd; the kernel puts the object in
  CLOSE and must send a fresh OPEN when the next READ comes (patches 1-3);
- crash points: each incarnation is told where in the protocol to SIGKILL itself;
- the misbehaviours of real daemons (`adversarial`): a live daemon writes `restore` while its
  other threads serve (restore_live), sends late answers (stale), reads the device from several
  threads with no lock between them and closes anon fds other threads use (lockless), closes a
  reopen's anon fd before or while its copen is written (close_during_copen), and writes through
  an anon fd after the CLOSE of its object's umount, racing the cache file's drop (late_close);
- cache death (`cache-death`): the keeper closes its device fd and the daemon lets its own go
  while its threads read and serve with no lock between them: the cache dies with requests queued.

Each fault's expected outcome is the verdict's: readers see no error and no stall, the kernel
refuses what it must (a late answer: EINVAL) and re-delivers what it must, and the daemon's
errors are only those its faults explain (logged as `lost` and `redundant`, checked by the judge).
A cache death is the one fault readers see: the reads and mounts waiting on that cache fail with
EIO (harness/judge/cachedeath.py says which errors a death explains), nothing hangs, and once the
keeper has bound a new cache the readers' fresh mounts read every file right again.
"""
from __future__ import annotations

import errno
import random
from dataclasses import dataclass, field, replace
from typing import Any

# re-exported: the judge takes the crash points from the scenarios
from guest_scripts.contract import CRASH_POINTS as CRASH_POINTS, UNANSWERED_POINTS as UNANSWERED_POINTS
from guest_scripts.contract import KERNEL_STATES, CrashPoint, Fault


@dataclass(frozen=True)
class Needs:
    """Minimum evidence; each unmet line is a path that never ran."""

    in_flight_share: float = 0.0  # of the host's kills, those that hit a request held by the daemon
    redelivered: int = 0  # held requests received again after a restore
    fd_closes: int = 0  # anon fds the daemon closed unasked
    reopens: int = 0  # kernel trace: fd_release then open for the same object, new object id
    reads_after_reopen: int = 0  # READs delivered on a reopened object
    crash_point_hits: int = 0  # every crash point, at least this often
    deliveries: int = 1  # deliveries in the kernel's ledger (the kprobes): every scenario's
    reopen_probes: int = 0  # reopens on which the daemon asked the patch-4 question
    # reopens' copens with another task's poll(2) entry on the device's queue (copenwake.py): the
    # kernel's wake-up judged, for any daemon
    copen_sleepers: int = 0
    misbehaviours: int = 0  # each misbehaviour of the scenario's daemon ran and was decided this often
    state_kill_hits: int = 0  # every KernelState: kills the trace confirms landed in it
    # cache deaths the trace confirms (a device release, then a new bind) that failed requests
    # (queued or delivered) and after which a reader read a file right through a fresh mount
    cache_deaths: int = 0
    # umounts of mounts a death failed, held until the dead cache's withdrawal began, whose span
    # overlaps the kernel's withdrawal (its probe, entry to return)
    withdrawal_umounts: int = 0
    # Fault.KILL_WAITER: waiters whose READ the trace shows queued while no daemon served
    killed_waiters: int = 0
    # Fault.UMOUNT_REOPEN: objects whose drop (the waiter's mount gone) met their reopen work
    # running or its OPEN delivered and unanswered (reopenumount.RACED)
    reopen_umounts: int = 0
    # ... of those, drops that came after a restore had marked the reopen's OPEN again, its holder
    # dead (the points of contract.AT_RESTORE)
    restore_umounts: int = 0
    end_checked: bool = True  # the end check's re-read marked in the trace; kmemleak scanned (debug)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    kills: int = 0
    fd_closes: int = 0
    crash_point_repeats: int = 0
    failover: bool = True  # False: the device fd dies with the daemon (negative control)
    readers: int = 3
    images: int = 3
    domain_images: tuple[str, ...] = ()  # mounted with a shared domain_id per round
    threads: int = 1
    restores_live: int = 0  # Fault.RESTORE_LIVE sent by the host
    stale_answers: int = 0  # Fault.STALE sent by the host
    lockless: bool = False  # GuestConfig.lockless
    close_during_copen: float = 0.0  # GuestConfig.close_during_copen
    state_kills: int = 0  # Fault.STATE_KILL at every KernelState, this many times each
    cache_deaths: int = 0  # Fault.CACHE_DEATH sent by the host
    kill_waiters: int = 0  # Fault.KILL_WAITER sent by the host
    umount_reopens: int = 0  # Fault.UMOUNT_REOPEN sent by the host
    race_withdrawal: bool = False  # GuestConfig.race_withdrawal
    dawdle_s: float = 0.0  # GuestConfig.dawdle_s
    late_close: bool = False  # GuestConfig.late_close
    supervise_fds: bool = False  # GuestConfig.supervise_fds
    needs: Needs = field(default_factory=Needs)
    # errnos the daemon is meant to get from the kernel, its fault plan causing them: not the
    # kernel's fault, so not the daemon-errors check's (every other error the daemon logs is)
    expected_daemon_errnos: tuple[int, ...] = ()

    def with_faults(self, kills: int | None, fd_closes: int | None = None) -> "Scenario":
        """The scenario with another number of SIGKILLs or anon fd closes (None: its own)."""
        return replace(self, kills=self.kills if kills is None else kills,
                       fd_closes=self.fd_closes if fd_closes is None else fd_closes)

    def misbehaviour_totals(self) -> dict[str, int]:
        """The host's misbehaviour faults and cache deaths, by progress name."""
        return {k: n for k, n in (("live restores", self.restores_live), ("stale answers", self.stale_answers),
                                  ("cache deaths", self.cache_deaths), ("killed waiters", self.kill_waiters),
                                  ("reopen umounts", self.umount_reopens)) if n}


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("crash", "SIGKILL the daemon over and over; the keeper's fd survives, `restore` re-delivers",
             # in flight by the kernel's ledger (a kill after READ_COMPLETE and before the daemon's
             # log line is not, as the log had it): 92-98% of 50 kills at seeds 1-3, but 7 of 10
             # once (seed 1); half is the path exercised, whatever the number of kills
             kills=50, needs=Needs(in_flight_share=0.5, redelivered=1)),
    Scenario("close-fds", "the daemon closes anon fds of live objects; the kernel reopens them on READ",
             # copens of reopens with a poll(2) sleeper: 38 of 38 (ours), 10 of 19 (the C daemon's
             # threads, seed 1); asked only of a daemon whose adapter says its threads sleep in
             # poll(2) beside the one that answers (`poll_sleepers`)
             fd_closes=40, needs=Needs(fd_closes=10, reopens=10, reads_after_reopen=10, reopen_probes=5,
                                       copen_sleepers=5)),
    Scenario("combined", "kills, fd closes and restores at once; four images, two in one domain; "
             "four readers; a daemon with two threads",
             kills=25, fd_closes=30, readers=4, images=4, domain_images=("img0", "img1"), threads=2,
             needs=Needs(in_flight_share=0.6, redelivered=1, fd_closes=5, reopens=5, reads_after_reopen=5,
                         reopen_probes=3)),
    # Two readers: with three, the kernel's read() (which searches upwards from the last id it
    # delivered) starves a request that a restore marked again behind the other two readers'
    # newer requests, 30 s and more on the correct kernel (README, "What the ledger found"): a
    # finding of its own, which this scenario is not about.
    Scenario("crash-points", "each incarnation kills itself at a named protocol point, every point three times",
             crash_point_repeats=3, readers=2, needs=Needs(redelivered=1, crash_point_hits=1)),
    # The daemon misbehaves as real ones do (README, "adversarial"). Three threads read with no
    # lock of ours; closes hit fds in use; a third of the reopens lose their fd around the copen.
    # The faults are kept to what the cache's 1 GiB holds: every round writes fresh cache files,
    # and a full cache fails reads with ENOBUFS (a 10-minute run did, seed 2).
    Scenario("adversarial", "a daemon that misbehaves as real ones do: live restores, late answers, "
             "lockless threads closing fds in use, fds closed around copen; kills and closes beside; "
             "tasks waiting on a dead daemon killed",
             kills=6, fd_closes=20, restores_live=10, stale_answers=10, kill_waiters=4, umount_reopens=10,
             readers=4, images=4,
             domain_images=("img0", "img1"), threads=3, lockless=True, close_during_copen=0.3,
             state_kills=4, dawdle_s=0.05, late_close=True,
             needs=Needs(in_flight_share=0.5, redelivered=1, fd_closes=5, reopens=5, reads_after_reopen=5,
                         misbehaviours=3, state_kill_hits=3, killed_waiters=3, reopen_umounts=3,
                         restore_umounts=3)),
    # A supervisor (the keeper) keeps the daemon's anon fds across its deaths, as nydusd's does:
    # a death leaves the objects OPEN; the next incarnation takes the fds over, answers the OPENs
    # the dead one held by their msg_id, then writes `restore`, which re-delivers READs of objects
    # still OPEN. Kills at kernel states put the deaths inside an OPEN and a READ.
    Scenario("supervised", "a supervisor keeps the daemon's anon fds across its deaths: restore meets objects "
             "still OPEN, held OPENs are answered by the next incarnation; kills, closes and kills at states",
             kills=15, fd_closes=10, threads=2, supervise_fds=True, state_kills=3, dawdle_s=0.05,
             needs=Needs(in_flight_share=0.5, redelivered=1, fd_closes=3, reopens=3, misbehaviours=3,
                         state_kill_hits=3)),
    # The cache dies under a daemon whose three threads read the device with no lock between them
    # (CVE-2024-40900's shape: the last reference to the device goes while requests are queued and
    # a thread is in read()): its waiters must get EIO at once, the cache must be withdrawn (a new
    # bind with the same tag succeeds), and the readers go on with fresh mounts. The mounts a death
    # failed are kept until the dead cache's withdrawal begins, then unmounted during it
    # (CVE-2024-41057/41058's shape). Kills beside.
    Scenario("cache-death", "the cache dies with requests queued while lockless threads read: waiters get EIO, "
             "a new cache is bound, readers go on with fresh mounts; dead mounts unmounted, and fresh ones tried, "
             "as the dead cache withdraws; kills beside",
             kills=6, cache_deaths=4, threads=3, lockless=True, dawdle_s=0.05, race_withdrawal=True,
             needs=Needs(in_flight_share=0.5, redelivered=1, cache_deaths=3, withdrawal_umounts=1)),
    Scenario("no-failover", "negative control: the device fd dies with the daemon; must FAIL",
             kills=3, failover=False, expected_daemon_errnos=(errno.EIO,)),  # the cache dies: EIO, all of it
)}
DEFAULT_SCENARIO = "crash"


# Each fault the host sends: the Scenario field that counts it, and the evidence (Needs) only it
# brings about. A daemon that does not take a fault (its adapter, harness/daemons) runs the
# scenario without it, and without that evidence; the report says which faults ran.
FAULT_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    Fault.KILL: ("kills", ("in_flight_share", "redelivered")),
    Fault.CLOSE: ("fd_closes", ("fd_closes", "reopens", "reads_after_reopen", "copen_sleepers")),
    Fault.RESTORE_LIVE: ("restores_live", ()),
    Fault.STALE: ("stale_answers", ()),
    Fault.STATE_KILL: ("state_kills", ("state_kill_hits",)),
    Fault.CACHE_DEATH: ("cache_deaths", ("cache_deaths", "withdrawal_umounts")),
    Fault.KILL_WAITER: ("kill_waiters", ("killed_waiters",)),
    Fault.UMOUNT_REOPEN: ("umount_reopens", ("reopen_umounts", "restore_umounts")),
    Fault.AWAIT_CRASH: ("crash_point_repeats", ("crash_point_hits",)),
}
# What only our daemon does: its misbehaviours and probes (GuestConfig's flags, its log's probes)
OUR_DAEMON_ONLY = {"lockless": False, "close_during_copen": 0.0, "dawdle_s": 0.0, "late_close": False,
                   "supervise_fds": False}
OUR_DAEMON_NEEDS = ("reopen_probes", "misbehaviours")


def for_daemon(scenario: Scenario, supported: frozenset[str], ours: bool,
               poll_sleepers: bool = True) -> tuple[Scenario, tuple[str, ...]]:
    """The scenario as a daemon taking `supported` faults runs it, and the faults it leaves out
    (those the scenario sends). Another daemon than ours has none of our daemon's misbehaviours
    and probes either: the scenario's faults and the kernel decide. A daemon with no thread
    asleep in poll(2) on the device while another answers (one thread; epoll) gives a reopen's
    copen nobody to wake: the kernel's wake-up is judged where it shows, not asked for."""
    fields: dict[str, Any] = {}
    needs: dict[str, Any] = {}
    dropped = []
    for fault, (count, evidence) in FAULT_FIELDS.items():
        if getattr(scenario, count) and fault not in supported:
            dropped.append(fault)
            fields[count] = 0
            needs.update({n: type(getattr(scenario.needs, n))(0) for n in evidence})
    if not ours:
        fields.update(OUR_DAEMON_ONLY)
        needs.update({n: 0 for n in OUR_DAEMON_NEEDS})
    if not poll_sleepers:
        needs["copen_sleepers"] = 0
    return replace(scenario, **fields, needs=replace(scenario.needs, **needs)), tuple(dropped)


def expected_daemon_errnos(recorded: dict[str, Any]) -> frozenset[int]:
    """The errnos a scenario as run.json records it expects the daemon to get. A run recorded
    before scenarios named them takes them from the scenario of its name as defined now."""
    if "expected_daemon_errnos" in recorded:
        return frozenset(recorded["expected_daemon_errnos"])
    known = SCENARIOS.get(recorded.get("name", ""))
    return frozenset(known.expected_daemon_errnos if known else ())


@dataclass(frozen=True)
class Action:
    kind: str  # a Fault
    delay_s: float  # after the daemon is serving (kill, close) or the wait's bound (await_crash)
    state: str | None = None  # Fault.STATE_KILL: the KernelState to kill at


def crash_plan(scenario: Scenario, seed: int) -> dict[str, str]:
    """Incarnation number (as the daemon's config keys it) -> the point where it dies.

    `after_restore` is never given to the first incarnation, which writes no `restore`."""
    points = [p for p in CRASH_POINTS for _ in range(scenario.crash_point_repeats)]
    random.Random(f"{seed}/crash-plan").shuffle(points)
    if points and points[0] == CrashPoint.AFTER_RESTORE:
        swap = next(i for i, p in enumerate(points) if p != CrashPoint.AFTER_RESTORE)
        points[0], points[swap] = points[swap], points[0]
    return {str(i + 1): p for i, p in enumerate(points)}


def schedule(scenario: Scenario, seed: int, interval_s: tuple[float, float], crash_wait_s: float) -> list[Action]:
    """The host's faults in order, with seeded delays: kills and closes shuffled together."""
    rng = random.Random(f"{seed}/schedule")
    kinds = ([Fault.KILL] * scenario.kills + [Fault.CLOSE] * scenario.fd_closes
             + [Fault.RESTORE_LIVE] * scenario.restores_live + [Fault.STALE] * scenario.stale_answers
             + [Fault.CACHE_DEATH] * scenario.cache_deaths + [Fault.KILL_WAITER] * scenario.kill_waiters
             + [Fault.UMOUNT_REOPEN] * scenario.umount_reopens)
    rng.shuffle(kinds)
    actions = [Action(k, rng.uniform(*interval_s)) for k in kinds]
    if scenario.state_kills:
        # after the others' draws: the schedules of scenarios without them stay as they were
        states = [Action(Fault.STATE_KILL, rng.uniform(*interval_s), s)
                  for s in KERNEL_STATES for _ in range(scenario.state_kills)]
        for a in states:
            actions.insert(rng.randrange(len(actions) + 1), a)
    actions += [Action(Fault.AWAIT_CRASH, crash_wait_s) for _ in crash_plan(scenario, seed)]
    return actions
