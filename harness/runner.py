"""One run, end to end: source → build → dataset → boot → kill loop → logs → verdict.

The only place that knows the order of the stages. Each stage is a module of its own; what they
hand each other goes through the run directory, which is also the record of the run.
"""
from __future__ import annotations

import json
import shlex
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from . import __version__, proc, progress, scenarios
from .kernel import build, kconfig, series, source
from .judge import console, report
from .guest import dataset, vm
from .errors import HarnessError, InputError, UntestableError
from .judge.evidence import read_jsonl
from .guest.session import GuestCommandFailed, GuestGone, GuestHung, GuestSession
from .request import RunRequest, new_output_dir
from guest_scripts.contract import INCARNATION, Event, GuestConfig, Mode

ROOT = Path(__file__).resolve().parent.parent
GUEST_SCRIPTS = ROOT / "guest_scripts"
GUEST_TMP = "/run/failover-harness"  # the guest's own tmpfs: the cache's ext4 image, mount points
GUEST_PYTHON = "/usr/bin/python3 -S"  # Debian's: the standard library only, no site start-up cost
BUILD_TIMEOUT_S = 3600
DEBUG_SLOWDOWN = 3  # KASAN and lockdep under TCG: every guest-side timeout this many times longer
TRACEFS = "/sys/kernel/tracing"
TRACE_EVENTS = f"{TRACEFS}/events/cachefiles/cachefiles_ondemand_*"  # the on-demand protocol's seven
TRACE_BUFFER_KB = 16384  # per CPU: a whole run's on-demand events without overrun


def preflight() -> None:
    """Every tool a run needs, checked before the first expensive step."""
    vm.vng_path()
    for tool, package in (("mkfs.erofs", "erofs-utils"), ("make", "make"), ("gcc", "gcc"), ("git", "git"),
                          ("flex", "flex"), ("bison", "bison"), ("bc", "bc")):
        proc.require_tool(tool, package)


class Run:
    def __init__(self, req: RunRequest, command_line: list[str] | None = None) -> None:
        self.req = req
        self.command_line = command_line if command_line is not None else shlex.split(req.reproduce())
        self.scenario = req.plan
        self.crash_plan = scenarios.crash_plan(self.scenario, req.seed)
        self.dir = new_output_dir(req.output, f"{req.scenario}-seed{req.seed}")
        self.guest_dir = self.dir / "guest"
        self.guest_dir.mkdir()
        self.meta: dict = {"request": req.to_json(), "reproduce": req.reproduce(), "timing": {},
                           "scenario": asdict(self.scenario), "crash_plan": self.crash_plan, "aborted": None}
        self.started = time.monotonic()
        self.progress = progress.Progress()
        self.console: proc.Interactive | None = None  # QEMU's console while the guest runs

    def save_meta(self) -> None:
        (self.dir / "run.json").write_text(json.dumps(self.meta, indent=1) + "\n")

    # -- stages before the guest ---------------------------------------------------------------
    def kernel(self) -> build.BuildResult:
        req = self.req
        fragments = kconfig.flavor_fragments(req.flavor)
        self.progress.stage("source")
        try:
            with source.prepare(req.cache, req.package, req.tree, req.ref, req.series, self.dir) as (src, prov):
                self.meta["provenance"] = prov.to_json()
                self.progress.stage("build", detail=str(src.tree))
                result = build.build(build.BuildRequest(src, fragments, req.cache, req.jobs, BUILD_TIMEOUT_S,
                                                        on_line=self.progress.build_output), self.dir)
        except series.SeriesError as e:
            self.meta["provenance"] = {"patches": [p.to_json() for p in e.results]}
            raise
        self.meta["provenance"].update(config_hash=result.config_hash, harness_version=__version__,
                                       command_line=self.command_line)
        self.meta["kernel"] = {"source": src.identity, "version": src.version, "tree": str(src.tree), "flavor": req.flavor,
                               "commit": src.commit, "config_hash": result.config_hash,
                               "build_key": result.key, "build_dir": str(result.build_dir),
                               "bzimage": str(result.bzimage)}
        self.meta["timing"].update(build_s=round(result.seconds, 1), build_reused=result.reused)
        return result

    def guest_config(self, data: dataset.Dataset, timeouts: vm.Timeouts) -> Path:
        g = self.guest_dir
        config = GuestConfig(
            mode=Mode.FAILOVER if self.scenario.failover else Mode.NO_FAILOVER,
            seed=self.req.seed,
            threads=self.scenario.threads,
            crash_plan=self.crash_plan,
            domain_images=self.scenario.domain_images,
            cache_dir=f"{GUEST_TMP}/cache",
            images={name: str(path) for name, path in data.images.items()},
            read_delay_s=self.req.read_delay_ms / 1000,
            stall_bound_s=timeouts.stall_bound,
            mount_dir=f"{GUEST_TMP}/mnt",
            log_dir=str(g),
            keeper_log=str(g / "keeper.jsonl"),
            daemon_log=str(g / "daemon.jsonl"),
            keeper_state_file=str(g / "keeper.state"),
            daemon_state_file=str(g / "daemon.state"),
            stop_file=str(g / "stop"),
        )
        path = g / "config.json"
        config.write(str(path))
        (self.dir / "manifest.json").write_text(json.dumps(data.manifest, indent=1, sort_keys=True))
        return path

    # -- the guest -------------------------------------------------------------------------------
    def wait_until(self, what: str, predicate, timeout_s: float) -> None:
        """Poll the guest's logs; a guest that died meanwhile (a panic) ends the wait at once."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.console is not None and not self.console.alive():
                raise GuestGone(f"the guest exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise GuestHung(f"{what}: not within {timeout_s:.0f}s")
            time.sleep(0.1)

    def daemon_state(self) -> tuple[int, int] | None:
        """(incarnation, pid) of the daemon that last said it is serving."""
        try:
            inc, what, pid = (self.guest_dir / "daemon.state").read_text().split()
        except (OSError, ValueError):
            return None
        return (int(inc), int(pid)) if what == "serving" else None

    def wait_for_incarnation(self, incarnation: int, timeout_s: float) -> tuple[int, int]:
        """(incarnation, pid) once incarnation `incarnation` (or a later one) is serving."""
        def serving() -> bool:
            state = self.daemon_state()
            return state is not None and state[0] >= incarnation
        self.wait_until(f"daemon incarnation {incarnation} serving", serving, timeout_s)
        return self.daemon_state()  # type: ignore[return-value]  # the file is only ever replaced

    def answered_by(self, incarnation: int) -> bool:
        return any(e.get("event") == Event.DONE and e.get(INCARNATION) == incarnation
                   for e in read_jsonl(self.guest_dir / "daemon.jsonl"))

    def reader_events(self) -> Counter[str]:
        """How many events of each kind the readers have logged so far: one pass over the logs."""
        return Counter(e.get("event") for p in self.guest_dir.glob("reader-*.jsonl") for e in read_jsonl(p))

    def start_services(self, session: GuestSession, config: Path, t: vm.Timeouts) -> None:
        py = GUEST_PYTHON
        g = shlex.quote(str(self.guest_dir))
        scripts = shlex.quote(str(GUEST_SCRIPTS))
        session.check(f"mkdir -p {GUEST_TMP}/mnt {GUEST_TMP}/cache && truncate -s 1G {GUEST_TMP}/cache.img"
                      f" && mkfs.ext4 -q -F {GUEST_TMP}/cache.img && mount -o loop {GUEST_TMP}/cache.img {GUEST_TMP}/cache",
                      t.command)
        # the kernel's own account of every request: on before the first one
        session.check(f"echo {TRACE_BUFFER_KB} >{TRACEFS}/buffer_size_kb && for e in {TRACE_EVENTS}; do echo 1 >$e/enable; done",
                      t.command)
        session.check(f"{py} {scripts}/keeper.py --config {shlex.quote(str(config))} >{g}/keeper.out 2>&1 &"
                      f" echo $! >{g}/keeper.pid", t.command)
        self.wait_until("the keeper binding /dev/cachefiles",
                        lambda: (self.guest_dir / "keeper.state").exists(), t.command)
        self.wait_for_incarnation(1, t.recovery)
        for i in range(self.scenario.readers):
            session.check(f"{py} {scripts}/reader.py --config {shlex.quote(str(config))} --id {i}"
                          f" >{g}/reader-{i}.out 2>&1 &", t.command)
        self.wait_until("the readers' first mount", lambda: self.reader_events()["mounted"] > 0, t.command)

    def record_fault(self, **fields) -> None:
        with open(self.dir / "faults.jsonl", "a") as f:
            f.write(json.dumps({**fields, "t": time.time()}) + "\n")

    def died(self, incarnation: int) -> bool:
        return any(e.get("event") == "died" and e.get("incarnation") == incarnation
                   for e in read_jsonl(self.guest_dir / "keeper.jsonl"))

    def await_crash(self, session: GuestSession, incarnation: int, timeout_s: float, t: vm.Timeouts) -> None:
        point = self.crash_plan[str(incarnation)]
        try:
            self.wait_until(f"incarnation {incarnation} dying at {point}", lambda: self.died(incarnation), timeout_s)
        except GuestHung:  # its point never came: end it, and the report says so
            inc, pid = self.wait_for_incarnation(incarnation, t.recovery)
            session.run(f"kill -KILL {pid}", t.command)
            self.record_fault(kind="kill", pid=pid, incarnation=inc, why=f"crash point {point} not reached")
            self.wait_until(f"incarnation {incarnation} reaped", lambda: self.died(incarnation), t.recovery)

    def fault_loop(self, session: GuestSession, t: vm.Timeouts) -> None:
        """The scenario's faults, in their seeded order, each on the daemon then serving."""
        actions = scenarios.schedule(self.scenario, self.req.seed, self.req.kill_interval_s, t.recovery)
        self.progress.stage("faults", totals={"kills": self.scenario.kills, "closes": self.scenario.fd_closes})
        incarnation = 1
        started = time.monotonic()
        try:
            for index, action in enumerate(actions):
                if self.reader_events()["stall"]:
                    self.meta["aborted"] = "a reader stalled; the faults stopped early"
                    return
                if action.kind == "await_crash":
                    # incarnation `index + 1` kills itself at its point, maybe before it ever serves
                    self.await_crash(session, index + 1, action.delay_s, t)
                    incarnation = index + 2
                    continue
                inc, pid = self.wait_for_incarnation(incarnation, t.recovery)
                time.sleep(action.delay_s)
                # the pid we waited for: if it died by itself meanwhile, the fault misses, and says so
                signal = "KILL" if action.kind == "kill" else "USR1"
                r = session.run(f"kill -{signal} {pid}", t.command)
                self.record_fault(index=index, kind=action.kind, pid=pid, incarnation=inc, status=r.status)
                self.progress.count("kills" if action.kind == "kill" else "closes")
                self.progress.set("served", sum(e.get("event") == "done" for e in read_jsonl(self.guest_dir / "daemon.jsonl")))
                incarnation = inc + 1 if action.kind == "kill" else inc
            if incarnation > 1:
                # the last death must be recovered from too: an answer from the next incarnation
                self.wait_until(f"incarnation {incarnation} answering", lambda: self.answered_by(incarnation),
                                t.recovery)
        except GuestHung as e:
            self.meta["aborted"] = str(e)
        finally:
            self.meta["timing"]["fault_loop_s"] = round(time.monotonic() - started, 1)

    def drain(self, session: GuestSession, t: vm.Timeouts) -> None:
        """Readers finish the file they are on (and their first full round); then all stops."""
        self.progress.stage("drain")
        g = shlex.quote(str(self.guest_dir))
        session.check(f"touch {g}/stop", t.command)
        try:
            # a reader reported stuck will not finish: no use waiting the whole drain for it
            def done() -> bool:
                events = self.reader_events()
                return events["finished"] >= self.scenario.readers or events["stall"] > 0
            self.wait_until("the readers finishing", done, t.drain)
        except GuestHung:
            pass  # stuck readers: the report says so; kill them so that the guest can stop
        session.run("pkill -KILL -f guest_scripts/reader.py; "
                    f"kill -TERM $(cat {g}/keeper.pid) 2>/dev/null; sleep 1", t.command)
        session.run(f"pkill -KILL -f guest_scripts/ ; umount -l {GUEST_TMP}/mnt/* 2>/dev/null; true", t.command)
        session.run(f"echo 0 >{TRACEFS}/tracing_on; cat {TRACEFS}/trace >{g}/trace.txt;"
                    f" cat {TRACEFS}/per_cpu/cpu*/stats >{g}/trace-stats.txt", t.command)

    def in_guest(self, bzimage: Path, accel: str, config: Path, t: vm.Timeouts) -> None:
        spec = vm.VmSpec(bzimage, accel, (self.dir,), console_log=self.dir / "console.log")
        (self.dir / "vng-command.txt").write_text(shlex.join(vm.vng_argv(spec)) + "\n")
        con = self.console = proc.Interactive(vm.console_argv(spec, self.dir / "vng.log"), self.dir / "session.log",
                                              env=vm.vng_env(), cwd=self.dir)
        try:
            session = GuestSession(con)
            self.progress.stage("boot")
            try:
                self.meta["timing"]["boot_s"] = round(session.wait_for_shell(t.boot), 1)
            except (GuestHung, GuestGone) as e:
                raise UntestableError(f"boot failed: {e}\n{console.tail(self.dir / 'console.log', 15)}") from e
            try:
                self.start_services(session, config, t)
                self.fault_loop(session, t)
                self.drain(session, t)
            except GuestCommandFailed as e:
                # our own set-up in the guest failed (mkfs, mount, a script): no verdict on the kernel
                raise UntestableError(f"guest set-up failed: {e}") from e
            except (GuestHung, GuestGone) as e:
                # the kernel stopped answering or died under test: a finding, not an infra error
                self.meta["aborted"] = f"guest {'hung' if isinstance(e, GuestHung) else 'gone'}: {e}"
            else:
                session.shutdown(timeout_s=min(30.0, t.command))  # all is collected: no long wait
        finally:
            con.close()
            self.console = None

    def execute_judged(self) -> dict:
        """`execute`, except that a run that ended without a verdict on the kernel returns the
        results `report.write_error` wrote (verdict ERROR or UNTESTABLE) instead of raising: what
        bisection and mutation testing, which run many, record and go on from."""
        try:
            return self.execute()
        except HarnessError:
            return json.loads((self.dir / "results.json").read_text())

    def execute(self) -> dict:
        try:
            preflight()
            built = self.kernel()
            data = dataset.build(dataset.DatasetSpec(seed=self.req.seed, images=self.scenario.images), self.req.cache)
            accel = self.req.accel
            if accel == "auto":
                accel = vm.probe_accel(built.bzimage, self.req.cache, self.dir / "kvm-probe.log")
            self.meta["accel"] = accel
            t = vm.Timeouts.for_accel(accel).scaled(DEBUG_SLOWDOWN if self.req.flavor == "debug" else 1)
            self.meta["timeouts"] = asdict(t)
            config = self.guest_config(data, t)
            self.save_meta()
            self.in_guest(built.bzimage, accel, config, t)
        except HarnessError as e:
            status = "ERROR" if isinstance(e, InputError) else "UNTESTABLE"
            report.write_error(self.dir, self.meta, status, str(e))
            raise
        finally:
            self.progress.done()
            self.meta["timing"]["total_s"] = round(time.monotonic() - self.started, 1)
            self.save_meta()
        return report.evaluate(self.dir)
