"""Each class of kernel report, recognised in a console log from a kernel that really produced
it: the debug flavour with LKDTM, one crash type per boot (tests/fixtures/capture_splats.py)."""
import pytest

from harness.judge import console
from helpers import FIXTURES

SPLATS = FIXTURES / "splats"

# capture -> (LKDTM crash type provoked, kind and title of the first finding it must produce)
EXPECTED = {
    "WARNING": ("WARNING", "warning", "WARNING in lkdtm_WARNING"),
    "BUG": ("BUG", "oops", "kernel BUG in lkdtm_BUG"),
    # under KASAN the NULL dereference faults on the shadow check first: a GPF, as the kernel says
    "EXCEPTION": ("EXCEPTION", "oops", "general protection fault in lkdtm_EXCEPTION"),
    "READ_AFTER_FREE": ("READ_AFTER_FREE", "kasan", "KASAN: slab-use-after-free in lkdtm_READ_AFTER_FREE"),
    "HUNG_TASK": ("HUNG_TASK", "hung-task", "INFO: task hung in lkdtm_HUNG_TASK"),
    "SOFTLOCKUP": ("SOFTLOCKUP", "soft-lockup", "BUG: soft lockup in lkdtm_SOFTLOCKUP"),
    "RCU_STALL": ("SOFTLOCKUP", "rcu-stall", "INFO: rcu detected stall in lkdtm_SOFTLOCKUP"),
    "SPINLOCKUP": ("SPINLOCKUP", "lockdep", "WARNING: lock held when returning to user space in lkdtm_do_action"),
    "PANIC": ("PANIC", "panic", "Kernel panic: dumptest"),
}


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_each_real_splat_is_found_and_named(capture):
    lkdtm_type, kind, title = EXPECTED[capture]
    text = (SPLATS / f"{capture}.log").read_text()
    assert "lkdtm: Performing direct entry " + lkdtm_type in text  # it really was provoked
    findings = console.scan(text)
    assert findings, f"{capture}: nothing found"
    assert (findings[0].kind, findings[0].title) == (kind, title)
    assert findings[0].frames and findings[0].frames[0].startswith("lkdtm_"), findings[0].frames


def test_every_kind_of_finding_has_a_real_splat():
    kinds = {kind for _, kind, _ in EXPECTED.values()}
    assert kinds == {kind for kind, _ in console._PATTERNS} - {"kfence", "bug"}
    # kfence: KASAN stands in front of it in this flavour; "bug" (a bare BUG:) follows SPINLOCKUP:
    assert any(f.kind == "bug" for f in console.scan((SPLATS / "SPINLOCKUP.log").read_text()))


def test_a_debug_boot_alone_has_no_findings():
    """Everything before the provocation: lockdep's and KASAN's boot chatter is not a bug."""
    text = (SPLATS / "WARNING.log").read_text()
    before = text[: text.index("lkdtm: Performing direct entry")]
    assert "KASAN" in before or "kasan" in before.lower()
    assert console.scan(before) == []


def test_same_bug_same_fingerprint_different_bug_different_one():
    first = {t: console.scan((SPLATS / f"{t}.log").read_text())[0] for t in EXPECTED}
    assert len({f.fingerprint for f in first.values()}) == len(EXPECTED)
    # the same splat at another time, address and pid is the same bug
    text = (SPLATS / "WARNING.log").read_text()
    moved = text.replace("PID: ", "PID: 9").replace("0x", "0x0")
    assert console.scan(moved)[0].fingerprint == first["WARNING"].fingerprint
