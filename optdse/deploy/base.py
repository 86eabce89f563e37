"""The contract every backend (local, later docker and swarm) fulfils.

The study loop calls `apply` once per trial with the server side of the configuration; a
backend reuses what is running when nothing server-side changed, rewrites limits in place
when only CPU/memory changed, and adds or removes replicas when only the count changed.
It never knows about Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from optdse.config import ServerConfig
from optdse.deploy.runs import Run
from optdse.knobs import ServerKnobs


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


class _Replica(Protocol):
    name: str

    def alive(self, fresh: bool = False) -> bool: ...
    def failure(self) -> DeployError: ...
    def kill(self) -> None: ...


class ReplicaChecks:
    """`check` and `kill_replica` for backends that keep their replicas as a list of objects
    (local processes, docker containers); `_drop` stops and forgets some of them."""

    replicas: list
    _killed: set[str]

    def _drop(self, replicas: list) -> None:
        raise NotImplementedError

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
        replica: _Replica = self.replicas[-1]
        self._killed.add(replica.name)
        replica.kill()
        return replica.name


class Backend(Protocol):
    name: str
    #: False when limits could not be applied (e.g. cgroups not writable); recorded per trial.
    limits_enforced: bool
    #: How ACU is read: "cgroup v1", "cgroup v2", "psutil", ...
    accounting: str
    #: This run's record (optdse/deploy/runs.py), where helpers such as the network relay are noted too.
    run: Run
    #: The server command line of the first replica, exactly as run ("" before the first apply).
    server_command: str

    def apply(self, server: ServerConfig) -> list[Endpoint]:
        """Make the deployment match `server`; return its endpoints once every replica is ready."""
        ...

    def replica_ids(self) -> tuple[str, ...]:
        """Identity of each running replica (pid, container id): unchanged means reused."""
        ...

    def usage(self) -> ResourceSample:
        """CPU and memory of the current replicas now (cheap: called several times a second)."""
        ...

    def memory_peaks(self) -> tuple[int, ...]:
        """Peak memory (bytes) of each replica since it was deployed or since `reset_peaks`."""
        ...

    def reset_peaks(self) -> None:
        ...

    def check(self) -> list[str]:
        """Raise DeployError if a replica died (with the reason, e.g. OOM); replicas killed by
        `kill_replica` are dropped instead (the next `apply` replaces them) and their names returned."""
        ...

    def kill_replica(self) -> str:
        """Kill the last replica now, without warning (the chaos option); return its name."""
        ...

    def close(self) -> None:
        """Stop and remove everything this backend started. Safe to call twice."""
        ...
