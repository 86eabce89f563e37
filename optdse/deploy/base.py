"""The contract every backend (local, docker, swarm) fulfils, and what they share.

The study loop calls `apply` once per trial with the server side of the configuration; a
backend reuses what is running when nothing server-side changed, rewrites limits in place
when only CPU/memory changed, and adds or removes replicas when only the count changed.
It never knows about Optuna.
"""

from __future__ import annotations

import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import grpc
import psutil

from optdse.config import ServerConfig
from optdse.deploy.runs import Run
from optdse.knobs import ServerKnobs
from optdse.protos import protos

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Endpoint:
    """Where one replica's gRPC API (`port`) and REST API (`rest_port`, None where the
    backend opens none) listen; always loopback here."""

    replica: int
    host: str
    port: int
    rest_port: int | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def target_for(self, protocol: str) -> str:
        """host:port of the API the load generator speaks; a DeployError if this replica has
        no REST port, so a REST study fails as a trial with a reason, not in the client."""
        if protocol == "grpc":
            return self.target
        if self.rest_port is None:
            raise DeployError("rest", f"replica {self.replica} on {self.host} has no REST port; "
                                      "this backend serves gRPC only")
        return f"{self.host}:{self.rest_port}"


@dataclass(frozen=True)
class ResourceSample:
    """Cumulative CPU seconds and current memory of each replica at one instant.

    `time` is `time.perf_counter()` in the sampling process; on Linux that is CLOCK_MONOTONIC,
    shared by all processes, so it lines up with the load generator's request timestamps.
    """

    time: float
    cpu_seconds: tuple[float, ...]
    memory_bytes: tuple[int, ...]
    nodes: tuple[str, ...] = ()  # the host of each replica (swarm); empty: all on this host


def beyond_host(cpus: float, memory_mb: float, cpus_label: str = "--cpus",
                memory_label: str = "--memory") -> list[str]:
    """One-line warnings for per-replica limits larger than this host ("--cpus 50 is more
    than this host's 2 cores ..."): such a limit never binds here, so configurations that
    differ only above it measure the same. Users may mean bigger hosts (swarm nodes), so
    these are warnings, not errors."""
    why = "the limit cannot bind here (fine if replicas run on bigger swarm nodes)"
    warnings = []
    cores = psutil.cpu_count() or 1
    if cpus > cores:
        warnings.append(f"{cpus_label} {cpus:g} is more than this host's {cores} cores: {why}")
    memory = psutil.virtual_memory().total / 2**20
    if memory_mb > memory:
        warnings.append(f"{memory_label} {memory_mb:.0f} MB is more than this host's {memory:.0f} MB: {why}")
    return warnings


def write_batching_file(run: Run, knobs: ServerKnobs) -> Path | None:
    """The batching parameters file `knobs` need (None: they need none), written in the run's
    directory under a name unique to its content, so replicas of one setting share it and it
    goes with the run."""
    text = knobs.batching_file()
    if text is None:
        return None
    path = run.directory / knobs.batching_file_name()
    if not path.exists():
        path.write_text(text)
    return path


class DeployError(RuntimeError):
    """A configuration could not be deployed or a replica died; `reason` is a short tag
    (OOM, exited, timeout, limits) recorded with the failed trial."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


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


def make_ready(replicas: Sequence[ReplicaHandle], server: ServerConfig, timeout: float) -> None:
    """Wait until each new replica serves `server.model`, then give it its CPU limit.

    A replica that dies while loading fails with its own reason (OOM, exited); one that
    never becomes AVAILABLE fails as a timeout with the end of its log."""
    for replica in replicas:
        try:
            if server.server == "triton":  # the Open Inference Protocol's ready endpoint
                from optdse.triton.server import wait_ready

                wait_ready(replica.endpoint.rest_port, server.model.name, timeout, replica.alive)
            else:
                wait_available(replica.endpoint.target, server.model.name, timeout, replica.alive)
        except ChildProcessError:
            raise replica.failure() from None
        except TimeoutError as error:
            raise DeployError("timeout", f"{replica.name}: {error}; log: {replica.log_tail()}") from None
        replica.set_limits(server.cpus, server.memory_mb)


class LoopbackReplica:
    """What a replica on this host's loopback has, whatever runs it: its name (replica-N) and
    its gRPC and REST ports."""

    name: str
    port: int
    rest_port: int

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(replica=int(self.name.rsplit("-", 1)[1]), host=HOST, port=self.port, rest_port=self.rest_port)


class ReplicaHandle(Protocol):
    """One replica as `ReplicaBackend` handles it, whatever runs it (a process, a container)."""

    name: str
    command: list[str]  # the server's command line, exactly as run

    @property
    def id(self) -> str: ...  # pid or container id: unchanged means reused
    @property
    def endpoint(self) -> Endpoint: ...
    def alive(self, fresh: bool = True) -> bool: ...
    def failure(self) -> DeployError: ...
    def kill(self) -> None: ...
    def log_tail(self, lines: int = 3) -> str: ...
    def set_limits(self, cpus: float, memory_mb: int) -> None: ...
    def cpu_seconds(self) -> float: ...
    def memory_bytes(self) -> int: ...
    def memory_peak(self) -> int: ...
    def reset_peak(self) -> None: ...


class Backend(ABC):
    """What the study loop needs of wherever replicas run (local, docker, swarm)."""

    name: ClassVar[str]
    #: False when limits could not be applied (e.g. cgroups not writable); recorded per trial.
    limits_enforced: bool
    #: How ACU is read: "cgroup v1", "cgroup v2", "psutil", ...
    accounting: str
    #: This run's record (optdse/deploy/runs.py), where helpers such as the network relay are noted too.
    run: Run

    @abstractmethod
    def apply(self, server: ServerConfig) -> list[Endpoint]:
        """Make the deployment match `server`; return its endpoints once every replica is ready."""

    @property
    @abstractmethod
    def server_command(self) -> str:
        """The server command line of the first replica, exactly as run ("" before the first apply)."""

    @abstractmethod
    def replica_ids(self) -> tuple[str, ...]:
        """Identity of each running replica (pid, container id): unchanged means reused."""

    @abstractmethod
    def usage(self) -> ResourceSample:
        """CPU and memory of the current replicas now (cheap: called several times a second)."""

    @abstractmethod
    def memory_peaks(self) -> tuple[int, ...]:
        """Peak memory (bytes) of each replica since it was deployed or since `reset_peaks`."""

    @abstractmethod
    def reset_peaks(self) -> None: ...

    @abstractmethod
    def check(self) -> list[str]:
        """Raise DeployError if a replica died (with the reason, e.g. OOM); replicas killed by
        `kill_replica` are dropped instead (the next `apply` replaces them) and their names returned."""

    @abstractmethod
    def kill_replica(self) -> str:
        """Kill the last replica now, without warning (the chaos option); return its name."""

    @abstractmethod
    def close(self) -> None:
        """Stop and remove everything this backend started. Safe to call twice."""


class ReplicaBackend(Backend):
    """The lifecycle of backends whose replicas are separate objects with limits of their own
    (local processes, docker containers), written once: reuse what runs, resize in place,
    scale by starting or parking replicas, restart all when the model or the server's knobs
    change (they are its command line). A subclass says how to start one replica
    (`_new_replica`), stop some (`_stop`) and what else its close removes (`_clean_up`).

    Replicas a trial no longer needs are parked when `park_idle` (they stay loaded, get no
    requests and are not measured; a later trial takes them back in milliseconds instead of
    starting TensorFlow again), else stopped."""

    def __init__(self, ready_timeout: float, park_idle: bool) -> None:
        self.ready_timeout = ready_timeout
        self.park_idle = park_idle
        self.replicas: list[Any] = []  # deployed: they get the load and are measured
        self.parked: list[Any] = []    # loaded and idle, kept for a later trial (same model and knobs)
        self.current: ServerConfig | None = None
        self._next_index = 0
        self._killed: set[str] = set()  # by kill_replica, not yet dropped by check

    @abstractmethod
    def _new_replica(self, name: str, server: ServerConfig) -> ReplicaHandle:
        """Start one replica of `server` under its memory limit (make_ready waits for it and
        then gives it its CPU limit); a DeployError if it cannot start."""

    @abstractmethod
    def _stop(self, replicas: list[Any]) -> None:
        """Stop and remove these replicas (together, where that is faster)."""

    def _clean_up(self) -> None:
        """What close removes after the replicas: whatever a replica interrupted while starting left."""

    def _resize(self, replica: Any, server: ServerConfig) -> bool:
        """Give a running replica the new limits; False where the kernel refuses (a memory
        limit below what the replica uses now), so it is started afresh under them."""
        try:
            replica.set_limits(server.cpus, server.memory_mb)
        except DeployError:
            return False
        return True

    def apply(self, server: ServerConfig) -> list[Endpoint]:
        self._drop_killed()
        if self.current is not None and (self.current.model, self.current.knobs) != (server.model, server.knobs):
            self._stop_all()  # a replica's model and knobs are its command line: start afresh
        if len(self.replicas) > server.replicas:
            surplus = self.replicas[server.replicas:]
            del self.replicas[server.replicas:]
            if self.park_idle:
                self.parked.extend(surplus)
            else:
                self._stop(surplus)
        while len(self.replicas) < server.replicas and self.parked:
            replica = self.parked.pop()
            if replica.alive(fresh=True):
                self.replicas.append(replica)
            else:
                self._stop([replica])
        for replica in list(self.replicas):
            if not self._resize(replica, server):
                self._drop([replica])
        self._start(server, server.replicas - len(self.replicas))
        self.current = server
        self.check()
        return [replica.endpoint for replica in self.replicas]

    def _start(self, server: ServerConfig, count: int) -> None:
        started: list[ReplicaHandle] = []
        try:
            for _ in range(count):
                name = f"replica-{self._next_index}"
                self._next_index += 1
                started.append(self._new_replica(name, server))
            make_ready(started, server, self.ready_timeout)
        except BaseException:
            self._stop(started)
            raise
        self.replicas.extend(started)

    def _drop(self, replicas: list[Any]) -> None:
        replicas = list(replicas)
        self._stop(replicas)
        for replica in replicas:
            self.replicas.remove(replica)

    def _stop_all(self) -> None:
        replicas, self.replicas, self.parked = self.replicas + self.parked, [], []
        self._stop(replicas)
        self.current = None

    def _drop_killed(self) -> list[str]:
        """Stop and forget the replicas `kill_replica` killed; `apply` calls this too, in case
        the trial failed before its `check`."""
        killed = [replica for replica in self.replicas if replica.name in self._killed]
        self._drop(killed)
        self._killed.clear()
        return [replica.name for replica in killed]

    def check(self) -> list[str]:
        killed = self._drop_killed()
        for replica in list(self.replicas):
            if not replica.alive(fresh=True):
                error = replica.failure()
                self._drop([replica])
                raise error
        return killed

    def kill_replica(self) -> str:
        if not self.replicas:
            raise DeployError("chaos", "no replica to kill")
        replica = self.replicas[-1]
        self._killed.add(replica.name)
        replica.kill()
        return replica.name

    @property
    def server_command(self) -> str:
        """The first replica's command line, as run (the others differ only in their ports)."""
        return shlex.join(self.replicas[0].command) if self.replicas else ""

    def replica_ids(self) -> tuple[str, ...]:
        return tuple(replica.id for replica in self.replicas)

    def usage(self) -> ResourceSample:
        return ResourceSample(time=time.perf_counter(), cpu_seconds=tuple(r.cpu_seconds() for r in self.replicas),
                              memory_bytes=tuple(r.memory_bytes() for r in self.replicas))

    def memory_peaks(self) -> tuple[int, ...]:
        return tuple(r.memory_peak() for r in self.replicas)

    def reset_peaks(self) -> None:
        for replica in self.replicas:
            replica.reset_peak()

    def close(self) -> None:
        try:
            self._stop_all()
        finally:
            try:
                self._clean_up()
            finally:
                self.run.finish()
