"""The embedded default backend: replicas are optdse-serve processes on 127.0.0.1.

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

import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import grpc
import psutil

from optdse import signals
from optdse.config import ServerConfig
from optdse.deploy.base import DeployError, Endpoint, ReplicaChecks, ResourceSample, write_batching_file
from optdse.deploy.cgroups import Cgroup, CgroupDriver
from optdse.deploy.runs import Run, remove_run_groups
from optdse.protos import protos

HOST = "127.0.0.1"


def serve_command() -> list[str]:
    """The installed console script beside this interpreter, or the module from a checkout."""
    script = Path(sys.executable).parent / "optdse-serve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "serving.server"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_available(target: str, model: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll GetModelStatus on `target` until the model is AVAILABLE.

    Short reconnect backoff: the port opens seconds after start, and gRPC's default 1 s
    backoff after a refused connection would add up to a second to every deployment."""
    options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
               ("grpc.max_reconnect_backoff_ms", 100)]
    pb = protos()
    request = pb.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb.model_service_pb2_grpc.ModelServiceStub(channel)
        while time.monotonic() < deadline:
            if not alive():
                raise ChildProcessError(target)
            try:
                status = stub.GetModelStatus(request, timeout=1.0)
                if any(v.state == pb.status_available for v in status.model_version_status):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise TimeoutError(f"{model} on {target} not AVAILABLE after {timeout:g} s")


class StartingReplica(Protocol):
    """What `make_ready` needs of a replica, whatever runs it (process or container)."""

    name: str

    @property
    def endpoint(self) -> Endpoint: ...
    def alive(self) -> bool: ...
    def failure(self) -> DeployError: ...
    def log_tail(self, lines: int = 3) -> str: ...
    def set_limits(self, cpus: float, memory_mb: int) -> None: ...


def make_ready(replicas: Sequence[StartingReplica], server: ServerConfig, timeout: float) -> None:
    """Wait until each new replica serves `server.model`, then give it its CPU limit.

    A replica that dies while loading fails with its own reason (OOM, exited); one that
    never becomes AVAILABLE fails as a timeout with the end of its log."""
    for replica in replicas:
        try:
            wait_available(replica.endpoint.target, server.model.name, timeout, replica.alive)
        except ChildProcessError:
            raise replica.failure() from None
        except TimeoutError as error:
            raise DeployError("timeout", f"{replica.name}: {error}; log: {replica.log_tail()}") from None
        replica.set_limits(server.cpus, server.memory_mb)


class Replica:
    """One optdse-serve process, its port, its cgroup (or None) and its log."""

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
        #: optdse-serve's own command line (what a trial records), before the cgroup wrapper.
        self.command = [*serve_command(), f"--port={self.port}", f"--rest_api_port={self.rest_port}", f"--host={HOST}",
                        f"--model_name={self.model}", f"--model_base_path={model_base_path}",
                        *server.knobs.flags(str(write_batching_file(run, server.knobs) or ""))]
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
                                            start_new_session=True)
            run.record_replica(name, self.process.pid, self.port, cgroup.relative if cgroup else None)
        self._psutil = psutil.Process(self.process.pid)
        self._psutil_peak = 0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(replica=int(self.name.rsplit("-", 1)[1]), host=HOST, port=self.port, rest_port=self.rest_port)

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

    def set_limits(self, cpus: float, memory_mb: int) -> None:
        if self.cgroup is not None:
            if memory_mb != self.memory_mb:
                self.cgroup.set_memory(memory_mb)
            if cpus != self.cpus:
                self.cgroup.set_cpus(cpus)
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
            self.process.kill()
            self.process.wait()
        if self.cgroup is not None:
            self.cgroup.remove()
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


class LocalBackend(ReplicaChecks):
    """Replicas as local processes; see the module docstring for the limits' timing and parking."""

    name = "local"

    def __init__(self, model_base_path: Path, warn: Callable[[str], None] = print,
                 ready_timeout: float = 180.0, park_idle: bool = True) -> None:
        self.model_base_path = model_base_path
        self.ready_timeout = ready_timeout
        self.park_idle = park_idle
        self.run = Run.start()
        self.driver, why_not = CgroupDriver.detect()
        self.limits_enforced = self.driver is not None
        self.accounting = f"cgroup v{self.driver.version}" if self.driver else "psutil"
        if self.driver is None:
            warn(f"cgroups are not writable ({why_not}): replicas run WITHOUT CPU or memory limits, "
                 "and ACU comes from psutil")
        self.replicas: list[Replica] = []  # deployed: they get the load and are measured
        self.parked: list[Replica] = []    # loaded and idle, kept for a later trial (same model)
        self.current: ServerConfig | None = None
        self._next_index = 0
        self._killed: set[str] = set()  # by kill_replica, not yet dropped by check

    def apply(self, server: ServerConfig) -> list[Endpoint]:
        self._drop_killed()
        if self.current is not None and (self.current.model, self.current.knobs) != (server.model, server.knobs):
            self._stop_all()  # a replica's model and knobs are its command line: start afresh
        if len(self.replicas) > server.replicas:
            surplus = self.replicas[server.replicas:]
            del self.replicas[server.replicas:]
            self._park(surplus)
        while len(self.replicas) < server.replicas and self.parked:
            replica = self.parked.pop()
            if replica.alive():
                self.replicas.append(replica)
            else:
                replica.stop()
        for replica in list(self.replicas):
            try:
                replica.set_limits(server.cpus, server.memory_mb)
            except OSError:
                # The kernel refuses a memory limit below what the replica uses now (EBUSY):
                # start it afresh under the new limit instead.
                self._drop([replica])
        self._start(server, server.replicas - len(self.replicas))
        self.current = server
        self.check()
        return [replica.endpoint for replica in self.replicas]

    def _park(self, replicas: list[Replica]) -> None:
        if self.park_idle:
            self.parked.extend(replicas)
        else:
            stop_replicas(replicas)

    def _start(self, server: ServerConfig, count: int) -> None:
        started = []
        try:
            for _ in range(count):
                name = f"replica-{self._next_index}"
                self._next_index += 1
                cgroup = self.driver.group(self.run.run_id, name) if self.driver else None
                started.append(Replica(name, server, self.model_base_path, cgroup, self.run))
            make_ready(started, server, self.ready_timeout)
        except BaseException:
            stop_replicas(started)
            raise
        self.replicas.extend(started)

    def replica_ids(self) -> tuple[str, ...]:
        return tuple(str(r.process.pid) for r in self.replicas)

    @property
    def server_command(self) -> str:
        """The first replica's command line, as run (the others differ only in their ports)."""
        return shlex.join(self.replicas[0].command) if self.replicas else ""

    def usage(self) -> ResourceSample:
        now = time.perf_counter()
        return ResourceSample(time=now,
                              cpu_seconds=tuple(r.cpu_seconds() for r in self.replicas),
                              memory_bytes=tuple(r.memory_bytes() for r in self.replicas))

    def memory_peaks(self) -> tuple[int, ...]:
        return tuple(r.memory_peak() for r in self.replicas)

    def reset_peaks(self) -> None:
        for replica in self.replicas:
            if replica.cgroup is not None:
                replica.cgroup.reset_peak()

    def _drop(self, replicas: list[Replica]) -> None:
        replicas = list(replicas)
        stop_replicas(replicas)  # together: one grace period; each reaped, its cgroup removed
        for replica in replicas:
            self.replicas.remove(replica)

    def _stop_all(self) -> None:
        replicas, self.replicas, self.parked = self.replicas + self.parked, [], []
        stop_replicas(replicas)
        self.current = None

    def close(self) -> None:
        try:
            self._stop_all()
        finally:
            if self.driver is not None:
                # Also groups of a replica interrupted between its mkdir and its start.
                remove_run_groups(self.driver, self.run.run_id)
            self.run.finish()


__all__ = ["LocalBackend", "Replica", "StartingReplica", "make_ready", "free_port", "serve_command", "stop_replicas", "wait_available"]
