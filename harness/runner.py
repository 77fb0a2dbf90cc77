"""One run, end to end: source → build → dataset → boot → services → faults → drain → judge.

The only place that knows the order of the stages. Each stage is a module of its own; what they
hand each other goes through the run directory, which is also the record of the run.
"""
from __future__ import annotations

import json
import shlex
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from guest_scripts.contract import GuestConfig, Mode
from . import __version__, proc, progress, scenarios
from .kernel import build, kconfig, series, source
from .judge import console, report
from .judge.checks import Status
from .judge.results import AnyResults, Results
from .guest import cdaemon, dataset, ssh, vm
from .errors import HarnessError, InputError, UntestableError
from .guest.faults import FaultLoop
from .guest.logs import GuestLogs
from .guest.services import GUEST_SCRIPTS, GUEST_TMP, DaemonLaunch, GuestServices
from .guest.session import GuestCommandFailed, GuestGone, GuestHung, GuestSession, Session, Transport
from .request import RunRequest, new_output_dir

BUILD_TIMEOUT_S = 3600
DEBUG_SLOWDOWN = 3  # KASAN and lockdep under TCG: every guest-side timeout this many times longer


def preflight(transport: str) -> None:
    """Every tool a run needs, checked before the first expensive step."""
    vm.vng_path()
    if transport == Transport.SSH:
        ssh.require_tools()
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
        self.config_path = self.guest_dir / "config.json"
        self.meta: dict[str, Any] = {"request": req.to_json(), "reproduce": req.reproduce(), "timing": {},
                                     "scenario": asdict(self.scenario), "crash_plan": self.crash_plan, "aborted": None}
        self.started = time.monotonic()
        self.progress = progress.Progress()
        adapter = req.adapter
        # its own log, in the log directory: the ledger's cross-check (JSON lines; `recv` with its `pid`)
        log = (adapter.log or "").removeprefix("{log_dir}/")
        self.meta["daemon"] = {"name": adapter.name, "source": adapter.source, "foreign": not adapter.ours,
                               "faults_left_out": list(req.faults_left_out),
                               "log": log if log and "{" not in log and "/" not in log else None}
        self.daemon_binary: Path | None = None  # built on the host, for an adapter with `build`

    def save_meta(self) -> None:
        (self.dir / "run.json").write_text(json.dumps(self.meta, indent=1) + "\n")

    # -- stages before the guest ---------------------------------------------------------------
    def kernel(self) -> build.BuildResult:
        req = self.req
        fragments = kconfig.flavor_fragments(req.flavor)
        self.progress.stage("source")
        started = time.monotonic()
        try:
            with source.prepare(req.cache, req.package, req.tree, req.ref, req.series, self.dir,
                                self.progress) as (src, prov):
                # download, unpack and import (once a cache), checkout, series: the source ready to build
                self.meta["timing"]["source_s"] = round(time.monotonic() - started, 1)
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

    def guest_config(self, data: dataset.Dataset, timeouts: vm.Timeouts) -> GuestConfig:
        g = self.guest_dir
        config = GuestConfig(
            mode=Mode.FAILOVER if self.scenario.failover else Mode.NO_FAILOVER,
            seed=self.req.seed,
            threads=self.scenario.threads,
            lockless=self.scenario.lockless,
            close_during_copen=self.scenario.close_during_copen,
            # a step the kills at kernel states must land in: as much slower as every guest wait
            dawdle_s=self.scenario.dawdle_s * timeouts.stall_bound / vm.Timeouts.for_accel("tcg").stall_bound,
            late_close=self.scenario.late_close,
            supervise_fds=self.scenario.supervise_fds,
            standby=self.req.daemon_restart == "standby",
            race_withdrawal=self.scenario.race_withdrawal,
            # the agent kills at kernel states, and carries out the host's kills (FaultLoop.gate_kills)
            statekill_ctl=f"{GUEST_TMP}/statekill.ctl" if self.scenario.state_kills or self.scenario.kills else "",
            withdrawing_file=f"{GUEST_TMP}/withdrawing" if self.scenario.race_withdrawal else "",
            reopen_file=f"{GUEST_TMP}/reopen" if self.scenario.umount_reopens else "",
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
        config.write(str(self.config_path))
        (self.dir / "manifest.json").write_text(json.dumps(data.manifest, indent=1, sort_keys=True))
        return config

    # -- the guest -------------------------------------------------------------------------------
    def faults(self, session: Session, logs: GuestLogs, t: vm.Timeouts, vm_started: float) -> None:
        actions = scenarios.schedule(self.scenario, self.req.seed, self.req.kill_pause(), t.recovery)
        self.progress.stage("faults", totals={"kills": self.scenario.kills, "closes": self.scenario.fd_closes,
                                                    **self.scenario.misbehaviour_totals()})
        started = time.monotonic()
        faults_log = self.dir / "faults.jsonl"
        try:
            loop = FaultLoop(session, logs, actions, self.crash_plan, t, faults_log, self.progress,
                             stop_when_decided=self.req.after_fail == "stop", gate_kills=self.scenario.kills > 0)
            self.meta["aborted"] = loop.run()
            if loop.decided_by:
                self.meta["timing"]["faults_stopped_early"] = loop.decided_by
        finally:
            self.meta["timing"]["fault_loop_s"] = round(time.monotonic() - started, 1)
            first = first_fault_at(faults_log)
            if first is not None:
                self.meta["timing"]["boot_to_first_fault_s"] = round(first - vm_started, 1)

    def in_guest(self, bzimage: Path, accel: str, config: GuestConfig, t: vm.Timeouts) -> None:
        # unwound in reverse: the ssh connection, then QEMU (reaped), then the port and the keys
        with ExitStack() as stack:
            link = stack.enter_context(ssh.link(self.dir / "ssh")) if self.req.transport == Transport.SSH else None
            spec = vm.VmSpec(bzimage, accel, (self.dir,), console_log=self.dir / "console.log",
                             ssh_port=link.port.port if link else None)
            (self.dir / "vng-command.txt").write_text(shlex.join(vm.vng_argv(spec)) + "\n")
            vm_started = time.time()  # wall clock, as faults.jsonl stamps the faults
            con = proc.Interactive(vm.console_argv(spec, self.dir / "vng.log"), self.dir / "session.log",
                                   env=vm.vng_env(), cwd=self.dir)
            stack.callback(con.close)
            console_session = GuestSession(con)
            self.progress.stage("boot")
            try:
                self.meta["timing"]["boot_s"] = round(console_session.wait_for_shell(t.boot), 1)
            except (GuestHung, GuestGone) as e:
                raise UntestableError(f"boot failed: {e}\n{console.tail(self.dir / 'console.log', 15)}") from e
            session: Session = console_session
            ssh_session: ssh.SshSession | None = None
            if link is not None:
                session = ssh_session = self.ssh_session(console_session, link, t)
                stack.callback(ssh_session.close)
            launch = self.daemon_launch(config)
            logs = GuestLogs(session, config, kill_pid_file=None if launch.ours else launch.kill_pid_file)
            services = GuestServices(session, logs, config, self.config_path, self.scenario.readers, t, launch)
            try:
                services.start()
                self.faults(session, logs, t, vm_started)
                self.progress.stage("drain")
                services.drain(decided=bool(self.meta["timing"].get("faults_stopped_early")))
            except GuestCommandFailed as e:
                # our own set-up in the guest failed (mkfs, mount, a script): no verdict on the kernel
                raise UntestableError(f"guest set-up failed: {e}") from e
            except (GuestHung, GuestGone) as e:
                # the kernel stopped answering or died under test: a finding, not an infra error
                why = str(e)
                if ssh_session is not None and ssh_session.lost and ssh_session.lost not in why:
                    why += f" ({ssh_session.lost})"  # over ssh, a closed connection is the guest gone: say so
                self.meta["aborted"] = f"guest {'hung' if isinstance(e, GuestHung) else 'gone'}: {why}"
            else:
                session.shutdown(timeout_s=min(30.0, t.command))  # all is collected: no long wait

    def daemon_launch(self, config: GuestConfig) -> DaemonLaunch:
        """The adapter's command filled in for this run (harness/daemons)."""
        adapter = self.req.adapter
        ours = adapter.ours
        values = {"binary": str(self.daemon_binary or ""), "scripts": str(GUEST_SCRIPTS),
                  "config": str(self.config_path), "cache_dir": config.cache_dir, "tag": config.tag,
                  "threads": str(self.scenario.threads), "log_dir": config.log_dir, "run_dir": GUEST_TMP}
        argv = adapter.argv(values, config.images)
        pid_file = Path(adapter.kill_pid_file.format_map(values))  # in the log directory (adapter.parse)
        return DaemonLaunch(tuple(argv), ours, pid_file, "keeper.out" if ours else "daemon.out")

    def ssh_session(self, console_session: GuestSession, link: ssh.SshLink, t: vm.Timeouts) -> ssh.SshSession:
        """The guest's sshd started over the console, its host key pinned, our key let in: the
        session everything after boot uses. A guest whose sshd never lets us in is untestable."""
        self.progress.stage("ssh")
        started = time.monotonic()
        try:
            session = ssh.open_session(console_session, link, f"{GUEST_TMP}/ssh", t.command)
        except (ssh.SshUnreachable, GuestCommandFailed, GuestHung, GuestGone) as e:
            raise UntestableError(f"ssh to the guest failed: {e}\n{console.tail(self.dir / 'console.log', 15)}") from e
        self.meta["timing"]["ssh_s"] = round(time.monotonic() - started, 1)
        return session

    def execute_judged(self) -> AnyResults:
        """`execute`, except that a run that ended without a verdict on the kernel returns the
        results `report.write_error` wrote (verdict ERROR or UNTESTABLE) instead of raising: what
        bisection and mutation testing, which run many, record and go on from."""
        try:
            return self.execute()
        except HarnessError:
            results: AnyResults = json.loads((self.dir / "results.json").read_text())
            return results

    def execute(self) -> Results:
        try:
            preflight(self.req.transport)
            built = self.kernel()
            data = dataset.build(dataset.DatasetSpec(seed=self.req.seed, images=self.scenario.images), self.req.cache)
            if self.req.adapter.build:
                self.daemon_binary = cdaemon.build_cdaemon(self.req.cache / "cdaemon")
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
            status = Status.ERROR if isinstance(e, InputError) else Status.UNTESTABLE
            report.write_error(self.dir, self.meta, status, str(e))
            raise
        finally:
            self.progress.done()
            self.meta["timing"]["total_s"] = round(time.monotonic() - self.started, 1)
            self.save_meta()
        return report.evaluate(self.dir)


def first_fault_at(faults_log: Path) -> float | None:
    """The wall-clock time of the first fault the host sent, if it sent one."""
    try:
        with open(faults_log) as f:
            first = f.readline()
    except FileNotFoundError:
        return None
    try:
        return float(json.loads(first)["t"])
    except (ValueError, KeyError, TypeError):
        return None
