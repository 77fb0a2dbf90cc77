"""A guest that stops answering is reported as a hang within the phase's timeout, and QEMU and
everything under it are gone afterwards. The guest is frozen the bluntest way: SIGSTOP to QEMU."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.kernel import build, kconfig, source
from harness import proc
from harness.guest import vm
from harness.guest.session import GuestHung, GuestSession
from harness.request import default_cache
from helpers import ROOT

pytestmark = pytest.mark.vm


def group_members(pgid: int) -> dict[int, str]:
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            members[int(stat.parent.name)] = comm
    return members


def test_a_frozen_guest_is_a_hang_and_leaves_nothing_behind(tmp_path):
    cache = default_cache()
    fragments = kconfig.flavor_fragments("plain")
    req = build.BuildRequest(source.debian_package(cache), fragments, cache, jobs=os.cpu_count() or 2, timeout_s=3600)
    bzimage = build.build(req, tmp_path).bzimage  # the plain kernel, built once for the suite
    spec = vm.VmSpec(bzimage, "tcg", (tmp_path,), console_log=tmp_path / "console.log")
    con = proc.Interactive(vm.console_argv(spec, tmp_path / "vng.log"), tmp_path / "session.log", env=vm.vng_env())
    pgid = con.pid
    try:
        session = GuestSession(con)
        session.wait_for_shell(vm.Timeouts.for_accel("tcg").boot)
        assert session.run("echo alive", timeout_s=30).output.endswith("alive")
        (qemu,) = [pid for pid, comm in group_members(pgid).items() if comm.startswith("qemu-system")]
        os.kill(qemu, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(GuestHung, match="no answer within 10s"):
            session.run("echo still there", timeout_s=10)
        assert time.monotonic() - started < 15
    finally:
        con.close()
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(pgid) == {}, "QEMU or vng outlived the session"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_takes_qemu_with_it(default_run, tmp_path, sig):
    """Ctrl-C, or a CI runner's SIGTERM, in the middle of a boot: exit 130, no QEMU left."""
    child = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--output", str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*/console.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (run_dir,) = [p.parent for p in tmp_path.glob("*/console.log")]
    time.sleep(2)  # QEMU is up and booting
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "interrupted" in err
    assert processes_mentioning(str(run_dir)) == [], "processes of the interrupted run are still alive"


def processes_mentioning(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and \
                    cmdline.parent.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found
