"""The virtme-ng command line: what makes a boot deterministic, observable and quick to end."""
from pathlib import Path

from harness.guest import vm


def argv(**kw):
    spec = vm.VmSpec(Path("/k/bzImage"), kw.pop("accel", "tcg"), (Path("/runs/r1"),), **kw)
    return vm.vng_argv(spec)


def test_tcg_and_transport_are_pinned():
    a = argv()
    assert "--disable-kvm" in a and "--force-9p" in a and "--disable-microvm" in a
    assert "--disable-kvm" not in argv(accel="kvm")
    assert "--rwdir=/runs/r1" in a


def test_a_crash_ends_qemu_and_the_console_is_whole():
    a = argv(console_log=Path("/runs/r1/console.log"))
    assert "--qemu-opts=-no-reboot -chardev file,id=fhconsole,path=/runs/r1/console.log -serial chardev:fhconsole" in a
    appended = [x.split("=", 1)[1] for x in a if x.startswith("--append=")]
    assert {"oops=panic", "panic=-1", "softlockup_panic=1", "loglevel=7", "console=ttyS1"} <= set(appended)


def test_a_comma_in_the_run_path_is_escaped_for_qemu():
    a = argv(console_log=Path("/runs/a,b/console.log"))
    assert any("path=/runs/a,,b/console.log" in x for x in a)


def test_timeouts_scale_with_the_accelerator():
    tcg, kvm = vm.Timeouts.for_accel("tcg"), vm.Timeouts.for_accel("kvm")
    assert tcg.boot == 3 * kvm.boot and tcg.stall_bound == 3 * kvm.stall_bound
    assert all(v > 0 for v in vars(kvm).values())
