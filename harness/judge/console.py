"""The kernel console of a boot, scanned for the reports a kernel makes when it is in trouble.

Each finding gets a title in the manner of syzkaller ("KASAN: slab-use-after-free in f",
"WARNING in f", "INFO: task hung in f") and a fingerprint made of the top stack frames that are
not generic (reporting, exception entry, syscall plumbing), so that the same bug seen twice has
the same name and a different one does not.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# (kind, pattern): the first pattern that matches a message names it. Order matters: a KASAN
# report also starts with "BUG:", and it should be called what it is. Every pattern is anchored
# at the start of the message: the kernel starts its reports there, while a program writing to
# /dev/kmsg starts with its own name ("virtme-ng-init: WARNING: failed to run ..." is not ours).
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(p)) for kind, p in (
        ("kasan", r"^BUG: KASAN: "),
        ("kfence", r"^BUG: KFENCE: "),
        ("lockdep", r"^WARNING: (possible circular locking|possible recursive locking|inconsistent lock state"
                    r"|suspicious RCU usage|lock held when returning to user space|bad unlock balance)"),
        ("soft-lockup", r"^watchdog: BUG: soft lockup"),
        ("hung-task", r"^INFO: task .+ blocked for more than \d+ seconds"),
        ("rcu-stall", r"^rcu: INFO: rcu_\w+ (self-)?detected stalls?"),
        ("bug", r"^BUG: "),
        ("oops", r"^(Oops: |general protection fault|kernel BUG at )"),
        ("warning", r"^WARNING: "),
        ("panic", r"^Kernel panic - not syncing"),
    )
)
# "[   12.345678] " and, with CONFIG_PRINTK_CALLER, "[    T123] " after it
_PREFIX = re.compile(r"^\[\s*\d+\.\d+\]\s*(?:\[\s*[TC]\d+\]\s*)?")
_RIP = re.compile(r"^RIP: \w+:(?P<func>[\w.]+)\+0x")
_FRAME = re.compile(r"^(?P<unsure>\? )?(?P<func>[\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
_LOCK_SITE = re.compile(r"^#\d+: .*, at: (?P<func>[\w.]+)\+0x")  # lockdep's held locks, where taken
_END = re.compile(r"^(</TASK>|---\[ end trace|---\[ end Kernel panic)")
# frames every report of a kind has: they say how it was reported, not where the bug is
_GENERIC = re.compile(
    r"^(dump_stack\w*|show_stack|print_report|print_address_description\w*|kasan_\w+|__kasan_\w+|__asan_\w+"
    r"|check_\w+_object|__warn|warn_slowpath\w*|report_bug|handle_bug|exc_\w+|asm_exc_\w+|asm_sysvec_\w+"
    r"|sysvec_\w+|__sysvec_\w+|irq_exit\w*|__irq_exit\w*|__do_softirq|handle_softirq\w*"
    r"|do_syscall_64|entry_SYSCALL\w*|x64_sys_call|__x64_sys_\w+|__do_sys_\w+|__se_sys_\w+|ksys_\w+"
    r"|vfs_write|vfs_read|full_proxy_write|full_proxy_read|new_sync_\w+|ret_from_fork\w*|kthread"
    r"|worker_thread|process_one_work|panic|vpanic|oops_end|die|die_addr|__die\w*|do_trap|do_error_trap"
    r"|page_fault_oops|kernel_fault\w*|no_context|__bad_area\w*|bad_area\w*|do_user_addr_fault|do_kern_addr_fault"
    r"|watchdog_timer_fn|__hrtimer_run_queues|hrtimer_interrupt|__schedule|schedule|schedule_\w+"
    r"|__pfx_\w+|lock_acquire|_raw_spin_lock\w*|rcu_\w+|print_circular_bug|check_noncircular|__lock_acquire"
    r"|validate_chain|check_prev_add|lockdep_\w+|debug_check_no_locks_held|preempt_count_\w+)$"
)
FRAMES_IN_FINGERPRINT = 3


@dataclass(frozen=True)
class Finding:
    kind: str
    line_no: int  # 1-based, in console.log
    text: str  # the report's first line, without its timestamp
    title: str  # what the bug is called: same bug, same title
    frames: tuple[str, ...]  # the top non-generic frames, innermost first
    fingerprint: str  # short and stable: kind, title and frames, hashed


def _message(raw: str) -> str:
    return _PREFIX.sub("", raw.rstrip())


def _kind(message: str) -> str | None:
    return next((kind for kind, pattern in _PATTERNS if pattern.search(message)), None)


def _func(text: str) -> str | None:
    m = re.search(r"([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+", text)
    return m.group(1) if m else None


def _frames(block: list[str]) -> tuple[str | None, list[str]]:
    """The RIP's function and the call trace's reliable, non-generic frames."""
    rip = None
    frames: list[str] = []
    for line in block:
        line = line.strip()
        if m := _RIP.match(line):
            rip = rip or m.group("func")
        elif ((m := _FRAME.match(line)) and not m.group("unsure") or (m := _LOCK_SITE.match(line))) \
                and not _GENERIC.match(m.group("func")):
            if m.group("func") not in frames:
                frames.append(m.group("func"))
    if rip and not _GENERIC.match(rip):
        frames = [rip] + [f for f in frames if f != rip]
    return rip, frames


def _title(kind: str, first: str, rip: str | None, frames: list[str]) -> str:
    where = frames[0] if frames else (rip or "?")
    if kind in ("kasan", "kfence"):
        m = re.match(r"BUG: (KASAN|KFENCE): ([\w-]+(?: \w+)?) in ", first)
        what = f"{m.group(1)}: {m.group(2)}" if m else first
        return f"{what} in {_func(first) or where}"
    if kind == "warning":
        at = re.match(r"WARNING: CPU: \d+ PID: \d+ at \S+ (\S+)", first)
        return f"WARNING in {_func(at.group(1)) if at else where}"
    if kind == "lockdep":
        return f"{first.rstrip('!. ')} in {where}"
    if kind == "hung-task":
        return f"INFO: task hung in {where}"
    if kind == "soft-lockup":
        return f"BUG: soft lockup in {where}"
    if kind == "rcu-stall":
        return f"INFO: rcu detected stall in {where}"
    if kind == "panic":
        return "Kernel panic: " + first.split("not syncing:", 1)[-1].strip()
    if kind == "oops" and first.startswith("kernel BUG at "):
        return f"kernel BUG in {where}"
    if kind == "oops":
        # "Oops: general protection fault, maybe for address ...": the fault is the name
        what = re.split(r"[,:]", first.removeprefix("Oops: "), maxsplit=1)[0].strip()
        return f"{what} in {where}"
    return f"{first.split(',')[0]} in {where}"  # BUG: kernel NULL pointer dereference, ...


# "kernel BUG at f.c:1!" or "BUG: kernel NULL pointer dereference" is followed, a few lines on,
# by the "Oops: ..." line of the same report: that line continues the report, it is not another
CONTINUATION_WINDOW = 6


def _starts(messages: list[str]) -> list[tuple[int, str]]:
    starts: list[tuple[int, str]] = []
    for n, message in enumerate(messages):
        kind = _kind(message)
        if kind is None:
            continue
        if (message.startswith("Oops: ") and starts and starts[-1][1] in ("bug", "oops")
                and n - starts[-1][0] <= CONTINUATION_WINDOW):
            continue
        starts.append((n, kind))
    return starts


def scan(text: str) -> list[Finding]:
    messages = [_message(raw) for raw in text.splitlines()]
    starts = _starts(messages)
    findings = []
    for i, (n, kind) in enumerate(starts):
        limit = starts[i + 1][0] if i + 1 < len(starts) else len(messages)
        block = []
        for m in messages[n + 1:min(limit, n + 120)]:
            if _END.match(m):
                break
            block.append(m)
        rip, frames = _frames(block)
        title = _title(kind, messages[n], rip, frames)
        top = tuple(frames[:FRAMES_IN_FINGERPRINT])
        digest = hashlib.sha1(f"{kind}|{title}|{'|'.join(top)}".encode()).hexdigest()[:12]
        findings.append(Finding(kind, n + 1, messages[n][:300], title, top, digest))
    return findings


def scan_file(path: Path) -> list[Finding]:
    try:
        return scan(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
