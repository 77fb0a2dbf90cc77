"""What crosses the guest boundary, defined once: both the guest scripts and the host import it.

Event names and fields of the guest's JSON-lines logs, the guest's configuration, the crash
points, the faults the host injects and the state files it polls. The guest runs its scripts
with `python3 -S`: the standard library only. The guest imports it as `contract`, the host as
`guest_scripts.contract`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

# The field every daemon and keeper event carries the incarnation in. Runs saved before it had
# one name in every log called it `inc` in daemon.jsonl; the host's log loader renames that.
INCARNATION: Final = "incarnation"
LEGACY_INCARNATION: Final = "inc"


class Event:
    """The `event` of a log line, by log. One name may serve two logs (`started`)."""

    # statekill.jsonl
    ARMED: Final = "armed"
    STATE_KILL: Final = "state_kill"
    # a host kill gated on a held request (HeldKill): `pid`, `gate` (KillGate), `waited_s` from
    # the arming to the kill, `killed` (False: the process was gone already), `msg_id`/`opcode`
    # of the request that made it (one it held, or the one just delivered to it)
    HELD_KILL: Final = "held_kill"

    # keeper.jsonl
    BOUND: Final = "bound"
    BIND_FAILED: Final = "bind_failed"
    # keeper: an incarnation, at its activation (`incarnation`, `pid`; `standby`: its process was
    # started ahead, GuestConfig.standby; `made`: how its process was (Made); `nice`: the niceness
    # it serves at); reader: the reader itself
    STARTED: Final = "started"
    HANDED_OVER: Final = "handed_over"  # supervise_fds: the anon fds held, given to a new incarnation
    PRUNED: Final = "pruned"  # supervise_fds: held anon fds let go, their cookies dropped
    # Fault.CACHE_DEATH: the keeper closed its device fd (and any anon fd it held) and told the
    # daemon to close its own: the last reference goes, and the cache dies with requests queued
    CACHE_DEATH: Final = "cache_death"
    # Fault.KILL_WAITER: a waiter SIGKILLed while no daemon served (`pid`, `fsid`, `waiting_in`:
    # its wchan when killed; `gone_s`: how soon it went, None if not within the keeper's bound,
    # after which the next daemon is started anyway)
    WAITER_KILLED: Final = "waiter_killed"
    # Fault.UMOUNT_REOPEN: a waiter's mount unmounted (detached, the waiter SIGKILLed) as the
    # kernel reopens its object (`pid`, `fsid`, `at`: UmountAt; `closed`: what the daemon said of
    # the object's fd (REOPEN_CLOSED or REOPEN_NONE); `reached`: the keeper saw that point before
    # it unmounted; `detached`: 0 or the umount's errno; `gone_s`: the waiter's exit; `dropped_s`:
    # its cookie dropped (NETFS_COOKIES) after it, None if not within the keeper's bound; or,
    # with no pid, `missed`: why it was not carried out)
    REOPEN_UMOUNTED: Final = "reopen_umounted"
    DIED: Final = "died"
    STOPPED: Final = "stopped"
    # GuestConfig.standby: a daemon process started ahead of the next death (`pid`; `made`: Made;
    # `fork_s`: forked, the zygote's answer came this long after the keeper asked; `why_spawned`:
    # spawned, why the zygote did not fork it). Not an incarnation: it has no number, no device
    # fd, no anon fd and no log line of its own until the keeper activates it (STARTED, `standby`
    # true), after the incarnation before it is reaped
    STANDBY: Final = "standby"
    # ... ended without ever being activated (`pid`, `why`, `signal` or `exit_code`): the keeper
    # stopping, or the standby found gone at its turn (the incarnation is then started cold)
    STANDBY_ENDED: Final = "standby_ended"
    # GuestConfig.standby: the zygote started (`pid`), the process that has imported daemon.py
    # and forks each standby ready-made (keeper.py); `pid` null: none is (`why`), every standby
    # is spawned
    ZYGOTE: Final = "zygote"
    # ... said it is imported (`pid`, `import_s`: from its start), seen as the keeper first asks
    ZYGOTE_READY: Final = "zygote_ready"
    # ... ended (`pid`, `why`, `signal` or `exit_code`): the keeper stopping, or given up (gone,
    # no answer within keeper.ZYGOTE_BOUND_S, a fork refused): that standby is spawned, and a
    # new zygote started (keeper.ZYGOTE_STARTS in all)
    ZYGOTE_ENDED: Final = "zygote_ended"
    # daemon.jsonl
    # the activation (`device_fd`, `crash_point`; `standby_wait_s`: how long the process waited
    # for it, null if it found it queued; `forked`: the process was forked by the zygote)
    FD_RECEIVED: Final = "fd_received"
    RESTORE: Final = "restore"
    SERVING: Final = "serving"
    RECV: Final = "recv"
    DONE: Final = "done"
    ERROR: Final = "error"
    EMPTY_READ: Final = "empty_read"
    CLOSE_FD: Final = "close_fd"
    CRASH_POINT: Final = "crash_point"
    PROBE: Final = "probe"  # a protocol point where the daemon asked the kernel a question
    # A READ the daemon cannot answer: its anon fd was closed by another thread while it was
    # delivered or served (Fault.CLOSE in a lockless daemon). The daemon writes `restore` for it.
    LOST: Final = "lost"
    # An answer the kernel refused because the same request, delivered again to this live daemon
    # by its own `restore`, was answered by another thread first (the host checks that it was)
    REDUNDANT: Final = "redundant"
    # supervise_fds: an anon fd the keeper held across a death, taken over by this incarnation (an
    # OPEN the dead one had not answered is answered now, by its msg_id, before the `restore`)
    INHERITED: Final = "inherited"
    # Fault.CACHE_DEATH: the daemon let its device fd go (replaced by /dev/null, so that no other
    # thread's fd number is reused under it) while its other threads poll, read and serve
    DEVICE_CLOSED: Final = "device_closed"
    # ... and, its threads done, closed its last anon fd: the last pin of the dead cache, whose
    # withdrawal then begins (GuestConfig.race_withdrawal: the held dead mounts go now)
    WITHDRAWING: Final = "withdrawing"
    # an answer refused after this daemon let the device go: the cache is dead and failed every
    # request with EIO, so a READ_COMPLETE for one is refused (EINVAL). The fault's, not an error.
    ORPHANED: Final = "orphaned"
    # Fault.UMOUNT_REOPEN: the reopen's OPEN of the object the keeper named, held unanswered
    # while the keeper unmounts its mount; then answered late (DONE if the kernel took the copen;
    # DROPPED: refused with EINVAL, the drop ended the request, as it must)
    HELD_OPEN: Final = "held_open"
    DROPPED: Final = "dropped"
    # ... at UmountAt.RESTORE: the incarnation after the holder's death waited, after its restore,
    # for the keeper's go (`waited_s`)
    RESTORE_GATE: Final = "restore_gate"
    # reader-<id>.jsonl
    MOUNTED: Final = "mounted"
    FILE: Final = "file"
    READ_ERROR: Final = "read_error"
    SLOW_READ: Final = "slow_read"
    STALL: Final = "stall"
    UMOUNT_FAILED: Final = "umount_failed"  # a plain umount failed (the mount was then detached)
    READ_THROUGH: Final = "read_through"  # every file of a mount read, none failed
    # GuestConfig.race_withdrawal: a mount its cache's death failed, held until the daemon
    # said the withdrawal begins, then unmounted (`began`: the wall clock; `took_s`)
    HELD_UMOUNT: Final = "held_umount"
    FINISHED: Final = "finished"


class Made:
    """How a daemon process was made (`made` of STANDBY and STARTED)."""

    SPAWNED: Final = "spawned"  # a Python started for it (subprocess): seconds of CPU under TCG
    FORKED: Final = "forked"  # forked by the zygote, imported already: ready in milliseconds


class Probe:
    """The questions the daemon asks the kernel at protocol points (a `probe` event's `probe`)."""

    EPOLLIN: Final = "epollin"  # patch 4: an unanswered OPEN; is the device quiet? (Daemon.probe_epollin)
    WAKEUP: Final = "wakeup"  # a reopen's copen: is a thread asleep in poll() woken? (daemon.Watcher)
    # Fault.STALE: a late copen or READ_COMPLETE for a msg_id answered before (by this incarnation
    # or a dead one) or never delivered: the kernel must refuse it (EINVAL)
    STALE: Final = "stale"
    # every delivery: a msg_id this run answered before must never be delivered again (msg_ids are
    # allocated cyclically; a reused one lets a late answer complete another request). Logged only
    # when it is.
    REUSE: Final = "reuse"
    # GuestConfig.close_during_copen: the anon fd of a reopen's OPEN closed before (or while) its
    # copen is written. The kernel must fail that OPEN and reopen the object again; a READ
    # delivered for the object whose fd was closed is one nobody can ever answer (a hung reader).
    CLOSE_COPEN: Final = "close-copen"
    # GuestConfig.late_close: a CLOSE request (its cookie withdrawn: an umount) is answered by
    # seeking and writing through the object's anon fd before closing it, until the kernel refuses
    # both with ENOBUFS (the object's cache file is gone). A write that passes the kernel's check
    # for the file just before the withdrawal drops it races that drop (CVE-2024-56549's shape);
    # another errno, or still writable a stall bound after the CLOSE, is the kernel's violation.
    LATE_WRITE: Final = "late-write"
    # GuestConfig.supervise_fds: the kernel must never hand out a second anon fd for an object
    # whose fd is held. A reopen's OPEN a dead incarnation had not answered is left unanswered by
    # the next one, whose `restore` re-delivers it while the inherited fd is open: read() must
    # refuse it with EEXIST (`refused`, then the daemon closes that fd so that the object can be
    # reopened); an OPEN delivered for a cookie whose object it holds open is the violation.
    SECOND_FD: Final = "second-fd"


class ProbeOutcome:
    """A probe event's `outcome`. epollin: QUIET held; SPIN and EARLY_READ are the kernel's
    violations; BUSY could not decide (too many requests drained). wakeup: WOKEN held; ASLEEP is
    the kernel's violation."""

    QUIET: Final = "quiet"
    SPIN: Final = "spin"  # readable, read() empty, again and again
    EARLY_READ: Final = "early-read"  # a READ of the object being opened, before its copen
    BUSY: Final = "busy"
    WOKEN: Final = "woken"
    ASLEEP: Final = "asleep"  # still asleep WAKE_BOUND_S after the copen
    REFUSED: Final = "refused"  # stale: EINVAL, as it must be; second-fd: EEXIST
    ACCEPTED: Final = "accepted"  # stale: the kernel took a late answer (it completed some other request)
    UNEXPECTED: Final = "unexpected"  # stale: refused with another errno than EINVAL; late-write: than ENOBUFS
    REUSED: Final = "reused"  # reuse: a msg_id answered before was delivered again
    REOPENED: Final = "reopened"  # close-copen: the cookie's next OPEN came, as it must
    READ_ON_CLOSED: Final = "read-on-closed"  # close-copen: a READ delivered for the closed object
    WITHDRAWN: Final = "withdrawn"  # late-write: seek and write refused with ENOBUFS, as they must be
    WRITABLE: Final = "writable"  # late-write: still accepted a stall bound after the CLOSE
    SECOND_FD: Final = "second-fd"  # second-fd: an OPEN for an object held open
    VIOLATIONS: Final = (SPIN, EARLY_READ, ASLEEP, ACCEPTED, UNEXPECTED, REUSED, READ_ON_CLOSED, WRITABLE, SECOND_FD)


class RestoreWhy:
    """Why the daemon wrote `restore` (a `restore` event's `why`)."""

    START: Final = "start"  # a new incarnation: what the dead one held
    LIVE: Final = "live"  # Fault.RESTORE_LIVE: while its other threads serve
    LOST: Final = "lost"  # READs it lost when it closed their anon fd under them (lockless)


class StaleOrigin:
    """Whose answer a late answer repeats (a stale probe's `origin`)."""

    ANSWERED: Final = "answered"  # this incarnation's
    DEAD: Final = "dead"  # a dead incarnation's (from the daemon log)
    NEVER_DELIVERED: Final = "never-delivered"  # no request has had that msg_id


class Fault:
    """What the host injects (faults.jsonl's `kind`, the schedule's actions)."""

    KILL: Final = "kill"  # SIGKILL the serving daemon
    CLOSE: Final = "close"  # SIGUSR1: the daemon closes a live object's anon fd
    AWAIT_CRASH: Final = "await_crash"  # the incarnation kills itself at its crash point
    RESTORE_LIVE: Final = "restore_live"  # a thread of the live daemon writes `restore` while others serve
    STALE: Final = "stale"  # the daemon sends late answers (Probe.STALE)
    STATE_KILL: Final = "state_kill"  # statekill.py SIGKILLs the daemon when the kernel reaches a KernelState
    # the keeper closes its device fd and tells the daemon to close its own: the cache dies with
    # requests queued (its waiters get EIO); the keeper then binds a new cache, and the readers go
    # on with fresh mounts
    CACHE_DEATH: Final = "cache_death"
    # the keeper SIGKILLs the daemon and, before it starts the next one, a process reading data
    # nobody can serve now (waiter.py), and waits for that process to go: killable, it goes at
    # once; uninterruptible, only once the next daemon answers its READ (Event.WAITER_KILLED)
    KILL_WAITER: Final = "kill_waiter"
    # the keeper has a waiter mount a fresh fsid, the daemon close that object's anon fd and hold
    # its next OPEN (the reopen's), lets the waiter read (its READ finds the object closed: the
    # kernel's reopen work starts) and unmounts the mount (detached; the waiter SIGKILLed) at a
    # UmountAt point; the object's drop must end the reopen's OPEN and wait for the reopen work
    # (harness/judge/reopenumount.py), and the held copen, late, is refused
    UMOUNT_REOPEN: Final = "umount_reopen"


class UmountAt:
    """Fault.UMOUNT_REOPEN: where the keeper unmounts, taken in turn (UMOUNT_AT)."""

    # the waiter's READ queued on the closed object (its wchan), the umount of a mount with a
    # request pending: the READ ends with the waiter (EINTR), mostly before any daemon thread has
    # passed it over, so the drop meets no reopen work
    READ: Final = "read"
    OPEN: Final = "open"  # the reopen's OPEN delivered and held by the daemon: the work waits on its copen
    # the reopen's OPEN held, the daemon that holds it SIGKILLed, and the mount unmounted as the
    # next incarnation's `restore` has marked that OPEN new again: the incarnation waits after its
    # restore (REOPEN_RESTORED) until the keeper lets it go on and SIGKILLs the waiter at once: the
    # drop comes as the incarnation starts its threads (it won 6 of 6 at seed 1: cancelled the
    # OPEN before any read() took it) ...
    RESTORE: Final = "restore"
    # ... or once the incarnation says it serves, its threads reading: a read() takes the restored
    # OPEN before the drop ends it, or the drop wins; the race of "cachefiles: fix
    # slab-use-after-free in cachefiles_ondemand_daemon_read()" (CVE-2024-39510) with the drop as
    # the request's completer
    REDELIVER: Final = "redeliver"


AT_RESTORE: Final = (UmountAt.RESTORE, UmountAt.REDELIVER)  # the holder killed, the next one restores
# the reopen work is what the rule judges: OPEN, RESTORE and REDELIVER meet it, READ mostly not
# (10 faults in `adversarial`: OPEN 2, RESTORE 3, READ 2, REDELIVER 3; a fault at a restore is lost
# when other faults kill the daemons it waits for: 2 of 4 at seed 1, before its waits were longer)
UMOUNT_AT: Final = (UmountAt.OPEN, UmountAt.RESTORE, UmountAt.READ, UmountAt.REDELIVER, UmountAt.REDELIVER,
                    UmountAt.RESTORE)


class KernelState:
    """Where the kernel's own trace says the protocol is when statekill.py kills the daemon: each
    is seen live on a tracefs instance of its own (the run's trace keeps every event) and
    confirmed afterwards from the run's trace (harness/judge/statekills.py)."""

    DELIVERED_OPEN: Final = "delivered-open"  # an OPEN just handed to the daemon (`deliver`), not answered
    DELIVERED_READ: Final = "delivered-read"  # a READ just handed to the daemon, not answered
    DATA_WRITTEN: Final = "data-written"  # the daemon wrote through an anon fd (`fd_write`); no READ_COMPLETE yet
    REOPENING: Final = "reopening"  # an OPEN re-opening an object whose anon fd was released, not answered
    RESTORING: Final = "restoring"  # the daemon entered `restore` (the kprobe); nothing delivered to it since


KERNEL_STATES: Final = (KernelState.DELIVERED_OPEN, KernelState.DELIVERED_READ, KernelState.DATA_WRITTEN,
                        KernelState.REOPENING, KernelState.RESTORING)
STATEKILL_LOG: Final = "statekill.jsonl"  # in the log directory: what statekill.py armed and killed


class KillGate:
    """How a host kill (Fault.KILL) the state-kill agent carried out met its target. A timer kill
    that lands while the daemon holds nothing tests nothing of a failover: the host picks the
    moment (the scenario's seeded pause) and the agent, armed with `HeldKill.arm(pid, bound_s)`,
    kills at once if the kernel's trace shows `pid` holding a request (delivered by its read(),
    not yet answered), else when the next request is delivered to it, else at the bound."""

    HELD: Final = "held"  # it held a request when armed: killed at once, at the timer's point
    DELIVERY: Final = "delivery"  # it held none; killed as the next request was delivered to it
    TIMEOUT: Final = "timeout"  # nothing was delivered to it within the bound: killed idle


class HeldKill:
    """The arming word for a gated kill, written to GuestConfig.statekill_ctl (one word, as a
    KernelState is): `held:PID:BOUND_S`."""

    PREFIX: Final = "held"

    @staticmethod
    def arm(pid: int, bound_s: float) -> str:
        return f"{HeldKill.PREFIX}:{pid}:{bound_s:g}"

    @staticmethod
    def parse(word: str) -> tuple[int, float] | None:
        """(pid, bound in seconds) of an arming word; None if it is not one."""
        parts = word.split(":")
        if len(parts) != 3 or parts[0] != HeldKill.PREFIX:
            return None
        try:
            pid, bound_s = int(parts[1]), float(parts[2])
        except ValueError:
            return None
        return (pid, bound_s) if pid > 0 and bound_s >= 0 else None


# The signal the host sends the serving daemon for each fault it injects by signal. Real-time
# signals by name, as the guest shell's `kill` takes them.
FAULT_SIGNALS: Final = {Fault.KILL: "KILL", Fault.CLOSE: "USR1", Fault.RESTORE_LIVE: "RTMIN+1",
                        Fault.STALE: "RTMIN+2"}
# ... and the keeper, for the faults it starts: it passes Fault.CACHE_DEATH on to the daemon;
# Fault.KILL_WAITER it carries out itself
KEEPER_SIGNALS: Final = {Fault.CACHE_DEATH: "USR2", Fault.KILL_WAITER: "USR1", Fault.UMOUNT_REOPEN: "RTMIN+4"}
WAITER_MOUNTED: Final = "mounted"  # waiter.py -> keeper: mounted, path of the file it will read
# where a waiter waits on its READ: cachefiles_ondemand_send_req, inlined (6.12's wchan names
# cachefiles_ondemand_init_read_req, the symbol before it)
WAITER_WCHAN_PREFIX: Final = "cachefiles_ondemand_"
CACHE_DEATH_RT_OFFSET: Final = 3  # keeper -> daemon, SIGRTMIN + this: let the device fd go
# host -> keeper and keeper -> daemon, SIGRTMIN + this: Fault.UMOUNT_REOPEN (the daemon closes the
# fd of the cookie named in GuestConfig.reopen_file and holds its next OPEN while that file is there)
UMOUNT_REOPEN_RT_OFFSET: Final = 4
# the daemon -> the keeper, in GuestConfig.reopen_state_file: the fd closed (`closed <object_id>`),
# no live object of that cookie (`none`), the reopen's OPEN held (`held <msg_id>`); UmountAt.RESTORE:
# an incarnation has written `restore` and waits before it reads (`restored <pid>`) until the
# keeper's file no longer names a point of AT_RESTORE
REOPEN_CLOSED: Final = "closed"
REOPEN_NONE: Final = "none"
REOPEN_HELD: Final = "held"
REOPEN_RESTORED: Final = "restored"
# where a kernel's fscache lists its cookies: the debug id, the volume's, three counts, the state
# (one of "-LCAIFUWRD": D is dropped, the withdrawal, and so the drop of its object, done), the
# flags and the key in hex (an EROFS blob's: its fsid). A dropped cookie may stay listed while
# something pins its object (the anon fd of a held OPEN does).
NETFS_COOKIES: Final = "/proc/fs/netfs/cookies"
COOKIE_DROPPED: Final = "D"


def cookie_states(cookies: str, fsid: str) -> list[str]:
    """The state of each cookie NETFS_COOKIES' text lists for `fsid` (its key in hex)."""
    key = fsid.encode().hex()
    return [f[5] for row in cookies.splitlines() if len(f := row.split()) > 7 and f[7].rstrip(",") == key]


def cookie_dropped_only(cookies: str, fsid: str) -> bool:
    """Whether NETFS_COOKIES' text, read whole (its header first), lists the cookie of `fsid` as
    dropped and none of that key live (a new mount of the same blob keeps the old one's fd)."""
    states = cookie_states(cookies, fsid) if cookies.startswith("COOKIE") else []
    return bool(states) and all(s == COOKIE_DROPPED for s in states)


def cookie_live(cookies: str, fsid: str) -> bool:
    """Whether NETFS_COOKIES' text lists the cookie of `fsid` not yet dropped."""
    return any(s != COOKIE_DROPPED for s in cookie_states(cookies, fsid))


class CrashPoint:
    """Where an incarnation can be told to die (GuestConfig.crash_plan)."""

    OPEN_BEFORE_COPEN: Final = "open_before_copen"  # read an OPEN, not answered
    COPEN_BEFORE_USE: Final = "copen_before_use"  # answered the OPEN, never used the anon fd
    READ_RECEIVED: Final = "read_received"  # read a READ, nothing written
    READ_BEFORE_COMPLETE: Final = "read_before_complete"  # data written through the anon fd, READ_COMPLETE not sent
    READ_AFTER_COMPLETE: Final = "read_after_complete"  # READ_COMPLETE sent, not yet logged as done
    AFTER_RESTORE: Final = "after_restore"  # `restore` written, nothing served yet
    CLOSE_FD: Final = "close_fd"  # closing an anon fd on a CLOSE request


CRASH_POINTS: Final = (  # in protocol order
    CrashPoint.OPEN_BEFORE_COPEN, CrashPoint.COPEN_BEFORE_USE, CrashPoint.READ_RECEIVED,
    CrashPoint.READ_BEFORE_COMPLETE, CrashPoint.READ_AFTER_COMPLETE, CrashPoint.AFTER_RESTORE,
    CrashPoint.CLOSE_FD,
)
# Dying at these, the daemon holds a request the kernel has no answer for: `restore` must
# deliver it again. At the others the kernel already has its answer (or there is none to give).
UNANSWERED_POINTS: Final = (CrashPoint.OPEN_BEFORE_COPEN, CrashPoint.READ_RECEIVED, CrashPoint.READ_BEFORE_COMPLETE)


class Mode:
    FAILOVER: Final = "failover"
    NO_FAILOVER: Final = "no_failover"  # the device fd dies with the daemon (negative control)


@dataclass(frozen=True)
class GuestConfig:
    """config.json: what the keeper, the daemon and the readers are told."""

    mode: str  # Mode
    images: dict[str, str]  # image name -> its blob's path
    cache_dir: str
    mount_dir: str
    log_dir: str
    keeper_log: str
    daemon_log: str
    keeper_state_file: str
    daemon_state_file: str
    stop_file: str
    stall_bound_s: float
    seed: int = 0
    threads: int = 1
    # incarnation (a string, as JSON keys it) -> the crash point where it dies
    crash_plan: dict[str, str] = field(default_factory=dict)
    domain_images: tuple[str, ...] = ()  # mounted with a shared domain_id per round
    tag: str = "failover-harness"
    read_delay_s: float = 0.0
    slow_read_s: float = 1.0
    restart_delay_s: float = 0.0
    # standby: the keeper starts the next incarnation's process while the current one serves
    # (imported, niced, blocked on its socket), and a death costs a hand-over and a `restore`
    # instead of a Python start. It learns its incarnation number with the device fd, in one
    # message sent only after the incarnation before it is reaped (keeper.send_activation).
    # False: each incarnation is started at the death, cold (RunRequest.daemon_restart "cold").
    standby: bool = True
    # The misbehaviours of a daemon that real ones have (scenario `adversarial`):
    # lockless: the serving threads read /dev/cachefiles with no lock of ours between them, and a
    # Fault.CLOSE closes an anon fd whether or not another thread is using it;
    lockless: bool = False
    # close_during_copen: the share of the reopens this incarnation can tell whose anon fd it closes
    # before (or, every other time, while) writing the copen
    close_during_copen: float = 0.0
    # dawdle_s: the daemon pauses this long before a copen and between a READ's data write and its
    # READ_COMPLETE (as one doing I/O does), so that a kill at a KernelState lands inside the step
    dawdle_s: float = 0.0
    # statekill_ctl: the FIFO statekill.py reads the state to kill at, or a gated kill
    # (HeldKill), from ("" : no agent)
    statekill_ctl: str = ""
    # late_close: the anon fd of an object a CLOSE request names is sought and written through
    # until the kernel refuses both, then closed (Probe.LATE_WRITE), as a daemon does whose
    # prefetch thread still holds the fd when the umount comes
    late_close: bool = False
    # supervise_fds: the keeper holds every anon fd beside the daemon, across its deaths, and
    # hands them to the next incarnation (keeper.HeldFds); Probe.SECOND_FD
    supervise_fds: bool = False
    # race_withdrawal: the even readers keep a mount a cache death failed until the daemon
    # closes its last anon fd (the dead cache's withdrawal begins), then unmount it a seeded
    # moment later, racing the withdrawal of its volume and cookies (CVE-2024-41058's shape); the
    # odd ones unmount at once, as the death's flush goes on, and go on mounting, failing until
    # the new cache is bound: cookies looked up as the cache withdraws (CVE-2024-41057's shape)
    race_withdrawal: bool = False
    # rewritten by the daemon as it closes its last anon fd after a cache death, polled by the
    # readers: on the guest's own tmpfs, not in the log directory. Polling a file that is replaced
    # as it is read over the 9p root hung a reader in netfs_retry_reads (cache-death seed 1, 2 of 13
    # runs), a hang of the guest's transport, not of the kernel under test.
    withdrawing_file: str = ""
    # Fault.UMOUNT_REOPEN, on the guest's tmpfs: the keeper writes the cookie (fsid) there, and on
    # a second line its UmountAt (of AT_RESTORE) once the incarnation that holds the OPEN is to die,
    # and removes it to end the hold; the daemon answers in reopen_state_file
    reopen_file: str = ""

    @property
    def reopen_state_file(self) -> str:
        return self.reopen_file + ".state"

    @property
    def end_check_file(self) -> str:
        """Created by the end check before its re-read: from then on the daemon asks no probes."""
        return self.stop_file + ".end-check"

    def crash_point(self, incarnation: int) -> str | None:
        return self.crash_plan.get(str(incarnation))

    def reader_log(self, reader_id: int) -> str:
        return f"{self.log_dir}/reader-{reader_id}.jsonl"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "domain_images": list(self.domain_images)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GuestConfig":
        return cls(**{**data, "domain_images": tuple(data.get("domain_images", ()))})

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def read(cls, path: str) -> "GuestConfig":
        with open(path) as f:
            return cls.from_json(json.load(f))


# State files the host polls, each replaced whole (eventlog.write_atomically).
KEEPER_BOUND: Final = "bound\n"  # keeper.state: /dev/cachefiles is bound
# in the log directory: the pid of the incarnation the keeper started last, rewritten as it starts
# each (the kill target harness/daemons/python.toml names: a pid file, as for any daemon); with
# GuestConfig.standby, as it activates each: a standby waiting is never named there
DAEMON_PID_FILE: Final = "daemon.pid"


def daemon_serving(incarnation: int, pid: int) -> str:
    """daemon.state: the incarnation that last said it is serving."""
    return f"{incarnation} serving {pid}\n"


def parse_daemon_state(text: str) -> tuple[int, int] | None:
    """(incarnation, pid) from daemon.state; None if it says nothing of one serving."""
    try:
        incarnation, what, pid = text.split()
        return (int(incarnation), int(pid)) if what == "serving" else None
    except ValueError:
        return None


END_OF_RUN_FILE: Final = "end.json"  # in the log directory: endcheck.py's EndOfRun
KMEMLEAK_FILE: Final = "kmemleak.txt"  # in the log directory: the debug flavour's leak report, whole
# Written to trace_marker by the keeper after each bind, `failover_clock_ms=<time.time() in ms>`:
# the trace's clock against the guest's wall clock, which the guest's logs are stamped with (the
# cache-death judge puts the readers' errors and mounts on the kernel's clock with it).
CLOCK_MARK: Final = "failover_clock_ms"
# keeper: `waiter_go=<pid>` just before it lets a waiter read (Fault.KILL_WAITER; the daemon is
# dead by then): the waiter's first READ after it is the one no daemon can take
WAITER_GO_MARK: Final = "waiter_go"
# keeper: `reopen_go=<pid>` just before it lets a Fault.UMOUNT_REOPEN waiter read (its object's
# anon fd is closed by then): the waiter's first READ after it is the one that finds it closed
REOPEN_GO_MARK: Final = "reopen_go"
TRACE_MARKER: Final = "/sys/kernel/tracing/trace_marker"
# Written to trace_marker around the re-read (`failover_reread=1` before, `=0` after): the
# kernel's trace then shows which requests the re-read caused.
REREAD_MARK: Final = "failover_reread"


def round_fsid(image: str, reader_id: int, round_no: int) -> str:
    """Each reader's round mounts every image under a fsid of its own: a cache file of its own."""
    return f"{image}.{reader_id}x{round_no}"


def round_domain(reader_id: int, round_no: int) -> str:
    """The shared domain_id of a round's domain images."""
    return f"dom{reader_id}x{round_no}"


def reread_rounds(reader_events: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Whose cache files the end check reads back: image -> (reader, round) of the first mount of
    it that read every file (Event.READ_THROUGH), while the failovers were under way. A cache death
    cuts rounds short: an image no reader read through is not read back."""
    rounds: dict[str, tuple[float, int, int]] = {}
    for e in reader_events:
        if e.get("event") == Event.READ_THROUGH and "round" in e:
            image, at = str(e.get("image")), float(e.get("t", 0))
            if image not in rounds or at < rounds[image][0]:
                rounds[image] = (at, int(e.get("reader", 0)), int(e["round"]))
    return {image: (reader, round_no) for image, (_, reader, round_no) in rounds.items()}


@dataclass(frozen=True)
class EndOfRun:
    """What the end of a run left behind (endcheck.py writes it, the host judges it)."""

    failed_umounts: dict[str, str]  # mount point -> what went wrong (failed, or did not return)
    keeper_exited: bool  # closing /dev/cachefiles (the cache withdrawn) finished
    device_reopen_error: str | None  # opening /dev/cachefiles again failed: why
    d_state: list[str]  # tasks left in D state: "comm[pid] in wchan"
    # after drop_caches, every image's first-round fsid mounted again, each file read:
    # image -> path -> sha256 (the host compares them with the dataset's)
    reread: dict[str, dict[str, str]] = field(default_factory=dict)
    reread_errors: list[str] = field(default_factory=list)  # a mount, read or umount of it that failed
    leaks: list[str] | None = None  # kmemleak's unreferenced objects, one line each; None: no kmemleak

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EndOfRun":
        leaks = data.get("leaks")
        return cls(failed_umounts=dict(data.get("failed_umounts", {})), keeper_exited=bool(data.get("keeper_exited")),
                   device_reopen_error=data.get("device_reopen_error"), d_state=list(data.get("d_state", [])),
                   reread={str(i): dict(f) for i, f in dict(data.get("reread", {})).items()},
                   reread_errors=list(data.get("reread_errors", [])),
                   leaks=None if leaks is None else list(leaks))

    def findings(self) -> list[str]:
        out = [f"{point}: {why}" for point, why in sorted(self.failed_umounts.items())]
        if not self.keeper_exited:
            out.append("the keeper never exited after closing /dev/cachefiles (the cache was never withdrawn)")
        if self.device_reopen_error:
            out.append(f"/dev/cachefiles could not be opened again: {self.device_reopen_error}")
        out += [f"kmemleak: {leak}" for leak in self.leaks or []]
        out += [f"task left in D state: {t}" for t in self.d_state]
        return out
