"""Replicas as Docker containers, through the Docker SDK, the way the seed deployed them.

Each replica is a container labelled `optdse.run=<run id>` and `optdse.replica=replica-N`,
on host networking with its own 127.0.0.1 port, limited with a CFS CPU quota (what `--cpus` sets) and `mem_limit`
(no swap). As in the local backend, the memory limit holds from the start and the CPU limit
is applied once the model is AVAILABLE; limits change in place with `container.update`, and
scaling adds or removes containers. ACU comes from the containers' own cgroups (the same
files `docker stats` reads, without its one-second sampling).

Images: the three modes in optdse/deploy/engine.py (ServingImage).
Every replica serves REST beside gRPC (as in the local backend: the protocol is the client's
choice and never redeploys).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optdse.config import ServerConfig
from optdse.deploy.base import HOST, DeployError, LoopbackReplica, ReplicaBackend, free_port, write_batching_file
from optdse.deploy.cgroups import CFS_PERIOD_US
from optdse.deploy.engine import (LABEL_REPLICA, LABEL_RUN, ServingImage, container_cgroup, docker_client,
                                  docker_errors, remove_labelled)
from optdse.deploy.runs import Run


class Container(LoopbackReplica):
    """One replica: its container, port and cgroup (for CPU and memory accounting)."""

    def __init__(self, client: Any, name: str, run: Run, server: ServerConfig, image: ServingImage) -> None:
        self.name, self.port, self.memory_mb = name, free_port(), server.memory_mb
        self.rest_port = next(port for port in iter(free_port, None) if port != self.port)  # not bound yet
        self.cpus: float | None = None
        if image.loopback_bind:  # the server binds 127.0.0.1 on the host's network
            network: dict[str, Any] = {"network_mode": "host"}
            args = image.serve_args(self.port, self.rest_port, server.model.name, server.knobs)
        else:  # its own network namespace, its ports published on 127.0.0.1 only
            network = {"ports": {f"{image.CONTAINER_PORT}/tcp": (HOST, self.port),
                                 f"{image.CONTAINER_REST_PORT}/tcp": (HOST, self.rest_port)}}
            args = image.serve_args(image.CONTAINER_PORT, image.CONTAINER_REST_PORT, server.model.name, server.knobs)
        #: The server's command line inside the container (what a trial records).
        self.command = [image.executable, *args]
        memory = f"{server.memory_mb}m"
        self.container = client.containers.run(
            image.reference, args, entrypoint=[image.executable], detach=True, name=f"optdse-{run.run_id}-{name}",
            labels={LABEL_RUN: run.run_id, LABEL_REPLICA: name}, mem_limit=memory, memswap_limit=memory,
            volumes=image.mounts(server.model.name, write_batching_file(run, server.knobs)), tmpfs={"/tmp": ""}, working_dir="/tmp",
            environment={"PYTHONDONTWRITEBYTECODE": "1"}, **network)
        self.cgroup = container_cgroup(self.container.id)
        self._last_check = 0.0

    @property
    def id(self) -> str:
        return str(self.container.id)

    def alive(self, fresh: bool = False) -> bool:
        now = time.monotonic()
        if fresh or now - self._last_check > 0.5:  # an API call per readiness poll would be too many
            self._last_check = now
            self.container.reload()
        return self.container.status in ("created", "running")

    def kill(self) -> None:
        """SIGKILL, by the container id this backend started (the chaos option)."""
        self.container.kill()

    def log_tail(self, lines: int = 3) -> str:
        return self.container.logs(tail=lines).decode(errors="replace").strip().replace("\n", " | ")

    def failure(self) -> DeployError:
        self.container.reload()
        state = self.container.attrs["State"]
        if state.get("OOMKilled"):
            return DeployError("OOM", f"{self.name} was killed by its {self.memory_mb} MB memory limit "
                                      f"(container {self.container.short_id}, exit {state.get('ExitCode')})")
        return DeployError("exited", f"{self.name} exited with {state.get('ExitCode')}: {self.log_tail()}")

    def set_limits(self, cpus: float, memory_mb: int) -> None:
        if (cpus, memory_mb) != (self.cpus, self.memory_mb):
            memory = f"{memory_mb}m"
            try:  # the SDK's update() has no nano_cpus; a quota per 100 ms period is what --cpus sets
                self.container.update(cpu_period=CFS_PERIOD_US, cpu_quota=int(cpus * CFS_PERIOD_US),
                                      mem_limit=memory, memswap_limit=memory)
            except docker_errors().APIError as error:  # runc: "unable to set memory limit" below use
                raise DeployError("limits", f"{self.name}: the engine refused {cpus:g} cores / {memory_mb} MB "
                                            f"({error.explanation or error})") from None
        self.cpus, self.memory_mb = cpus, memory_mb

    def cpu_seconds(self) -> float:
        return self.cgroup.cpu_seconds()

    def memory_bytes(self) -> int:
        return self.cgroup.memory_bytes()

    def memory_peak(self) -> int:
        return self.cgroup.memory_peak() or 0

    def reset_peak(self) -> None:
        self.cgroup.reset_peak()

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except docker_errors().APIError as error:
            if error.status_code not in (404, 409):  # gone already, or being removed
                raise


class DockerBackend(ReplicaBackend):
    """Replicas as containers; the same lifecycle as LocalBackend (optdse/deploy/base.py),
    without parking (an idle container holds its memory limit's worth of the host)."""

    name = "docker"
    limits_enforced = True
    accounting = "docker cgroup"

    def __init__(self, model_base_path: Path, warn: Callable[[str], None] = print,
                 ready_timeout: float = 180.0, image: str = "host-python") -> None:
        super().__init__(ready_timeout, park_idle=False)
        self.client = docker_client()
        self.model_base_path = model_base_path
        self.image = ServingImage.resolve(self.client, image, model_base_path)
        self.run = Run.start()

    def _new_replica(self, name: str, server: ServerConfig) -> Container:
        try:
            return Container(self.client, name, self.run, server, self.image)
        except docker_errors().APIError as error:
            raise DeployError("docker", f"cannot start {name}: {error.explanation or error}") from None

    def _stop(self, replicas: list[Container]) -> None:
        for replica in replicas:
            replica.remove()

    def _clean_up(self) -> None:
        # Also a container created as Ctrl-C arrived, before this backend held its id.
        remove_labelled(self.client, lambda run_id: run_id == self.run.run_id)


__all__ = ["DockerBackend"]
