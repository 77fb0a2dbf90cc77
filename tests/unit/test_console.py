import pytest

from harness.judge import console
from helpers import FIXTURES


def test_a_clean_boot_has_no_findings():
    text = (FIXTURES / "run-crash-5-kills" / "console.log").read_text()
    assert "Linux version 6.12" in text  # the whole log, from the first line of boot
    assert "CacheFiles: File cache on failover-harness registered" in text
    assert console.scan(text) == []


@pytest.mark.parametrize("line, kind", [
    ("[ 12.1] BUG: KASAN: slab-use-after-free in cachefiles_ondemand_daemon_read+0x5a/0x5b0", "kasan"),
    ("[ 12.1] BUG: KFENCE: use-after-free read in cachefiles_ondemand_get_fd+0x1/0x2", "kfence"),
    ("[ 12.1] WARNING: possible circular locking dependency detected", "lockdep"),
    ("[ 12.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [python3:230]", "soft-lockup"),
    ("[ 12.1] INFO: task python3:231 blocked for more than 30 seconds.", "hung-task"),
    ("[ 12.1] rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu-stall"),
    ("[ 12.1] BUG: kernel NULL pointer dereference, address: 0000000000000010", "bug"),
    ("[ 12.1] Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP", "oops"),
    ("[ 12.1] kernel BUG at fs/cachefiles/ondemand.c:123!", "oops"),
    ("[ 12.1] WARNING: CPU: 0 PID: 1 at fs/netfs/objects.c:10 netfs_free_request+0x1/0x2", "warning"),
    ("[ 12.1] Kernel panic - not syncing: Fatal exception", "panic"),
])
def test_each_kind_of_report_is_found(line, kind):
    (finding,) = console.scan("[ 1.0] harmless\n" + line + "\n")
    assert finding.kind == kind and finding.line_no == 2
    assert not finding.text.startswith("[")


def test_a_program_writing_warning_to_kmsg_is_not_a_kernel_finding():
    """Seen on a minimal Debian root: virtme-ng-init's own WARNING lands in the kernel log."""
    text = (FIXTURES / "console-minimal-root.log").read_text()
    assert 'virtme-ng-init: WARNING: failed to run: "systemd-tmpfiles"' in text
    assert console.scan(text) == []


def test_caller_ids_are_skipped():
    (finding,) = console.scan("[   12.000000] [  T230] WARNING: CPU: 1 PID: 230 at fs/netfs/x.c:1 f+0x1/0x2\n")
    assert finding.kind == "warning" and finding.text.startswith("WARNING: CPU: 1")


def test_ordinary_lines_are_not_findings():
    text = "\n".join([
        "[ 1.0] erofs: (device erofs): [deprecated] fscache-based on-demand read feature in use.",
        "[ 1.0] overlayfs: failed to set xattr on upper",
        "[ 1.0] netfs: Withdrawing cache \"failover-harness\" (0 objs)",
        "[ 1.0] ACPI: bug workaround enabled",
        "[ 1.0] reader: BUG: this is a program's line, not the kernel's",
    ])
    assert console.scan(text) == []
