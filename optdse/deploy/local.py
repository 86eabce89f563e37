"""The embedded default backend: replicas are optdse-serve (or tritonserver) processes on 127.0.0.1.

Each replica runs in its own cgroup with a CPU quota and a memory limit. The memory limit
holds from the replica's first instruction (a replica that cannot even load the model is
OOM-killed, and the trial records that); the CPU quota is applied once the replica is
AVAILABLE, because loading TensorFlow under a 0.1-core quota would take a minute per trial
and is not what the study measures. Where cgroups are not writable, the backend says so once
and runs without limits; every trial then records `limits_enforced=False`.

Replicas a trial no longer needs are parked, not stopped: they stay loaded but get no
requests and are not measured, and a later trial that wants more replicas takes them back
with new limits in a few milliseconds instead of starting TensorFlow again (seconds per
replica). An idle optdse-serve uses no CPU, so parked replicas do not disturb ACU; they hold
their memory, which `park_idle=False` gives back at the cost of restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from optdse import signals
from optdse.config import ServerConfig
from optdse.knobs import ServerKnobs
from optdse.deploy.base import HOST, DeployError, LoopbackReplica, ReplicaBackend, free_port, write_batching_file
from optdse.deploy.cgroups import Cgroup, CgroupDriver
from optdse.deploy.runs import Run, remove_run_groups


def serve_command() -> list[str]:
    """The installed console script beside this interpreter, or the module from a checkout."""
    script = Path(sys.executable).parent / "optdse-serve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "serving.server"]


def server_command(server: ServerConfig, model_base_path: Path, run: Run, port: int,
                   rest_port: int) -> tuple[list[str], dict[str, str] | None]:
    """The command line (and environment, None: this one) of one replica of `server`: an
    optdse-serve process, or a tritonserver with optdse's model repository for the knobs."""
    if server.server == "triton":
        from optdse.triton import install, repository
        from optdse.triton.server import command

        try:
            triton = install.find()
        except install.TritonMissing as error:
            raise DeployError("triton", str(error)) from None
        return command(triton, repository.write_repository(run, server, model_base_path), port, rest_port), \
            triton.environment()
    assert isinstance(server.knobs, ServerKnobs)
    return [*serve_command(), f"--port={port}", f"--rest_api_port={rest_port}", f"--host={HOST}",
            f"--model_name={server.model.name}", f"--model_base_path={model_base_path}",
            *server.knobs.flags(str(write_batching_file(run, server.knobs) or ""))], None


class Replica(LoopbackReplica):
    """One server process (optdse-serve or tritonserver), its ports, its cgroup (or None) and its log."""

    def __init__(self, name: str, server: ServerConfig, model_base_path: Path, cgroup: Cgroup | None,
                 run: Run) -> None:
        self.name, self.model, self.cgroup, self.run = name, server.model.name, cgroup, run
        self.port = free_port()
        # REST is always on: the protocol is a client parameter, so a replica (parked ones
        # too) must serve whichever the next trial speaks; an idle listener costs next to no
        # CPU. The gRPC port is not bound yet, so free_port() could hand it out again.
        self.rest_port = next(port for port in iter(free_port, None) if port != self.port)
        self.memory_mb = server.memory_mb
        self.cpus: float | None = None
        self.log_path = run.directory / f"{name}.log"
        #: The server's own command line (what a trial records), before the cgroup wrapper.
        self.command, environment = server_command(server, model_base_path, run, self.port, self.rest_port)
        memory_mb, command = server.memory_mb, self.command
        if cgroup is not None:
            cgroup.create()
            cgroup.set_cpus(None)
            cgroup.set_memory(memory_mb)
            command = cgroup.wrap(command)
        # Started and recorded, or neither: a replica nobody recorded is one nobody stops.
        with signals.atomic(), self.log_path.open("wb") as log:
            # A session of its own: Ctrl-C in the terminal reaches optdse, which stops the
            # replicas in order, rather than every replica at once mid-trial.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=environment)
            run.record_replica(name, self.process.pid, self.port, cgroup.relative if cgroup else None)
        self._psutil = psutil.Process(self.process.pid)
        self._psutil_peak = 0

    @property
    def id(self) -> str:
        return str(self.process.pid)

    def alive(self, fresh: bool = True) -> bool:
        """Whether the process runs (always a fresh answer: a poll is cheap)."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, by the pid this backend started (the chaos option)."""
        self.process.kill()

    def failure(self) -> DeployError:
        """Why this replica is dead, as precisely as the kernel tells."""
        code = self.process.poll()
        if self.cgroup is not None and self.cgroup.oom_kills() > 0:
            return DeployError("OOM", f"{self.name} was killed by its {self.memory_mb} MB memory limit "
                                      f"(exit {code})")
        if code == 97:
            return DeployError("limits", f"{self.name} could not join its cgroup {self.cgroup and self.cgroup.relative}")
        return DeployError("exited", f"{self.name} exited with {code}: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        if self.cgroup is not None:
            return self.cgroup.cpu_seconds()
        try:
            times = self._psutil.cpu_times()
            return times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            return 0.0

    def memory_bytes(self) -> int:
        if self.cgroup is not None:
            return self.cgroup.memory_bytes()
        try:
            rss = int(self._psutil.memory_info().rss)
        except psutil.Error:
            return 0
        self._psutil_peak = max(self._psutil_peak, rss)
        return rss

    def memory_peak(self) -> int:
        peak = self.cgroup.memory_peak() if self.cgroup is not None else None
        return peak if peak is not None else self._psutil_peak

    def reset_peak(self) -> None:
        if self.cgroup is not None:
            self.cgroup.reset_peak()

    def set_limits(self, cpus: float, memory_mb: int) -> None:
        if self.cgroup is not None:
            try:
                if memory_mb != self.memory_mb:
                    self.cgroup.set_memory(memory_mb)
                if cpus != self.cpus:
                    self.cgroup.set_cpus(cpus)
            except OSError as error:  # EBUSY: a memory limit below what the replica uses now
                raise DeployError("limits", f"{self.name}: the kernel refused {cpus:g} cores / {memory_mb} MB "
                                            f"({error})") from None
        self.cpus, self.memory_mb = cpus, memory_mb

    def terminate(self) -> None:
        """Ask the replica to stop (SIGTERM: the server drains), first lifting its CPU quota so
        a replica limited to a tenth of a core does not take seconds to exit."""
        if self.process.poll() is None:
            if self.cgroup is not None:
                try:
                    self.cgroup.set_cpus(None)
                except OSError:
                    pass
            self.process.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        """Wait until `deadline` (time.monotonic) for the exit, SIGKILL after; remove the cgroup."""
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # The whole process group: a server's own children (Triton's backend stubs) too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.cgroup is not None:
            # What the server started may outlive it (Triton's backend stubs, when it was stopped
            # while they loaded): everything in the group is this replica's, so it goes too.
            for pid in self.cgroup.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.cgroup.remove()
        else:  # its process group, which it leads (start_new_session) and its children joined
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.run.forget_replica(self.name)

    def stop(self, grace: float = 10.0) -> None:
        stop_replicas([self], grace)


def stop_replicas(replicas: list[Replica], grace: float = 10.0) -> None:
    """Stop replicas together: all are signalled first, then all share one grace period."""
    for replica in replicas:
        replica.terminate()
    deadline = time.monotonic() + grace
    for replica in replicas:
        replica.reap(deadline)


class LocalBackend(ReplicaBackend):
    """Replicas as local processes; see the module docstring for the limits' timing and parking."""

    name = "local"

    def __init__(self, model_base_path: Path, warn: Callable[[str], None] = print,
                 ready_timeout: float = 180.0, park_idle: bool = True) -> None:
        super().__init__(ready_timeout, park_idle)
        self.model_base_path = model_base_path
        self.run = Run.start()
        self.driver, why_not = CgroupDriver.detect()
        self.limits_enforced = self.driver is not None
        self.accounting = f"cgroup v{self.driver.version}" if self.driver else "psutil"
        if self.driver is None:
            warn(f"cgroups are not writable ({why_not}): replicas run WITHOUT CPU or memory limits, "
                 "and ACU comes from psutil")

    def _new_replica(self, name: str, server: ServerConfig) -> Replica:
        cgroup = self.driver.group(self.run.run_id, name) if self.driver else None
        return Replica(name, server, self.model_base_path, cgroup, self.run)

    def _stop(self, replicas: list[Replica]) -> None:
        stop_replicas(replicas)  # together: one grace period; each reaped, its cgroup removed

    def _clean_up(self) -> None:
        if self.driver is not None:
            # Also groups of a replica interrupted between its mkdir and its start.
            remove_run_groups(self.driver, self.run.run_id)


__all__ = ["LocalBackend", "Replica", "serve_command", "stop_replicas"]
