"""Replicas as Docker containers, through the Docker SDK, the way the seed deployed them.

Each replica is a container labelled `optdse.run=<run id>` and `optdse.replica=replica-N`,
on host networking with its own 127.0.0.1 port, limited with a CFS CPU quota (what `--cpus` sets) and `mem_limit`
(no swap). As in the local backend, the memory limit holds from the start and the CPU limit
is applied once the model is AVAILABLE; limits change in place with `container.update`, and
scaling adds or removes containers. ACU comes from the containers' own cgroups (the same
files `docker stats` reads, without its one-second sampling).

Images. Where no registry is reachable (this project's CI), the default `host-python` mode
runs optdse-serve from this machine's Python environment inside an empty image made with
`docker import`, with read-only bind mounts of the system directories, the interpreter and
the project. (Registry images, serving/Dockerfile and tensorflow/serving, are not wired in yet.)
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optdse.config import ServerConfig
from optdse.deploy.base import DeployError, Endpoint, ResourceSample
from optdse.deploy.cgroups import CFS_PERIOD_US, Cgroup, CgroupDriver
from optdse.deploy.local import HOST, free_port, make_ready
from optdse.deploy.runs import Run

HOST_PYTHON_IMAGE = "optdse/host-python:empty"
LABEL_RUN, LABEL_REPLICA = "optdse.run", "optdse.replica"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/etc")


def docker_client() -> Any:
    """A client for the local engine, or a DeployError that says what is missing."""
    try:
        import docker

        client = docker.from_env(version="auto", timeout=60)
        client.ping()
        return client
    except Exception as error:  # noqa: BLE001  # any failure here means: no usable engine
        raise DeployError("docker", f"no Docker engine reachable ({type(error).__name__}: {error}); "
                                    "install one (apt-get install docker.io) and start dockerd") from None


def docker_errors() -> Any:
    """docker.errors, imported only when a Docker backend is in use."""
    import docker.errors

    return docker.errors


def ensure_host_python_image(client: Any) -> str:
    """The empty image the host-python mode runs in, imported once (no registry needed)."""
    import docker

    try:
        client.images.get(HOST_PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        empty = io.BytesIO()
        tarfile.open(fileobj=empty, mode="w").close()
        repository, tag = HOST_PYTHON_IMAGE.split(":")
        client.api.import_image_from_data(empty.getvalue(), repository=repository, tag=tag)
    return HOST_PYTHON_IMAGE


def host_python_mounts(model_base_path: Path) -> dict[str, dict[str, str]]:
    """Read-only binds that let the empty image run this interpreter and this project."""
    paths = {*SYSTEM_DIRS, sys.base_prefix, sys.prefix, str(PROJECT_ROOT), str(model_base_path.resolve())}
    return {p: {"bind": p, "mode": "ro"} for p in sorted(paths) if Path(p).exists()}


class Container:
    """One replica: its container, port and cgroup (for CPU and memory accounting)."""

    def __init__(self, client: Any, name: str, run: Run, server: ServerConfig, model_base_path: Path,
                 image: str) -> None:
        self.name, self.port, self.memory_mb = name, free_port(), server.memory_mb
        self.cpus: float | None = None
        command = [f"{sys.prefix}/bin/optdse-serve", f"--port={self.port}", "--rest_api_port=0", f"--host={HOST}",
                   f"--model_name={server.model}", f"--model_base_path={model_base_path.resolve()}"]
        memory = f"{server.memory_mb}m"
        self.container = client.containers.run(
            image, command, detach=True, name=f"optdse-{run.run_id}-{name}", network_mode="host",
            labels={LABEL_RUN: run.run_id, LABEL_REPLICA: name}, mem_limit=memory, memswap_limit=memory,
            volumes=host_python_mounts(model_base_path), tmpfs={"/tmp": ""}, working_dir="/tmp",
            environment={"PYTHONDONTWRITEBYTECODE": "1"})
        self.cgroup = container_cgroup(self.container.id)
        self._last_check = 0.0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(replica=int(self.name.rsplit("-", 1)[1]), host=HOST, port=self.port)

    def alive(self, fresh: bool = False) -> bool:
        now = time.monotonic()
        if fresh or now - self._last_check > 0.5:  # an API call per readiness poll would be too many
            self._last_check = now
            self.container.reload()
        return self.container.status in ("created", "running")

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
            # The SDK's update() has no nano_cpus; a quota per 100 ms period is what --cpus sets.
            self.container.update(cpu_period=CFS_PERIOD_US, cpu_quota=int(cpus * CFS_PERIOD_US),
                                  mem_limit=memory, memswap_limit=memory)
        self.cpus, self.memory_mb = cpus, memory_mb

    def cpu_seconds(self) -> float:
        return self.cgroup.cpu_seconds()

    def memory_bytes(self) -> int:
        return self.cgroup.memory_bytes()

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except Exception:  # noqa: BLE001  # already gone
            pass


def container_cgroup(container_id: str) -> Cgroup:
    """The container's cgroup, wherever this engine's cgroup driver put it."""
    driver, why_not = CgroupDriver.layout()
    if driver is None:
        raise DeployError("docker", f"cannot read container CPU accounting: {why_not}")
    for relative in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        if (driver.cpuacct / relative).exists():
            return Cgroup(driver, relative)
    raise DeployError("docker", f"cannot find the cgroup of container {container_id[:12]} for CPU accounting")


class DockerBackend:
    """Replicas as containers; the same contract as LocalBackend."""

    name = "docker"
    limits_enforced = True

    def __init__(self, model_base_path: Path, warn: Callable[[str], None] = print,
                 ready_timeout: float = 180.0) -> None:
        self.client = docker_client()
        self.model_base_path = model_base_path
        self.ready_timeout = ready_timeout
        self.image = ensure_host_python_image(self.client)
        self.accounting = "docker cgroup"
        self.run = Run.start()
        self.replicas: list[Container] = []
        self.current: ServerConfig | None = None
        self._next_index = 0

    def apply(self, server: ServerConfig) -> list[Endpoint]:
        if self.current is not None and self.current.model != server.model:
            self._remove(self.replicas)
        if len(self.replicas) > server.replicas:
            self._remove(self.replicas[server.replicas:])
        for replica in self.replicas:
            replica.set_limits(server.cpus, server.memory_mb)
        self._start(server, server.replicas - len(self.replicas))
        self.current = server
        self.check()
        return [r.endpoint for r in self.replicas]

    def _start(self, server: ServerConfig, count: int) -> None:
        started: list[Container] = []
        try:
            for _ in range(count):
                name = f"replica-{self._next_index}"
                self._next_index += 1
                try:
                    started.append(Container(self.client, name, self.run, server, self.model_base_path, self.image))
                except docker_errors().APIError as error:
                    raise DeployError("docker", f"cannot start {name}: {error.explanation or error}") from None
            make_ready(started, server, self.ready_timeout)
        except BaseException:
            for replica in started:
                replica.remove()
            raise
        self.replicas.extend(started)

    def _remove(self, replicas: list[Container]) -> None:
        for replica in list(replicas):
            replica.remove()
            self.replicas.remove(replica)

    def replica_ids(self) -> tuple[str, ...]:
        return tuple(r.container.id for r in self.replicas)

    def usage(self) -> ResourceSample:
        return ResourceSample(time=time.perf_counter(), cpu_seconds=tuple(r.cpu_seconds() for r in self.replicas),
                              memory_bytes=tuple(r.memory_bytes() for r in self.replicas))

    def memory_peaks(self) -> tuple[int, ...]:
        return tuple(r.cgroup.memory_peak() or 0 for r in self.replicas)

    def reset_peaks(self) -> None:
        for replica in self.replicas:
            replica.cgroup.reset_peak()

    def check(self) -> None:
        for replica in list(self.replicas):
            if not replica.alive(fresh=True):
                error = replica.failure()
                self._remove([replica])
                raise error

    def close(self) -> None:
        try:
            self._remove(self.replicas)
            self.current = None
        finally:
            self.run.finish()


def clean_stale_containers(live_runs: set[str]) -> list[str]:
    """Remove the Swarm services and containers of optdse runs that are no longer alive
    (found by their optdse.run label); return their names. Services go first, or Swarm would
    replace the containers just removed."""
    try:
        client = docker_client()
    except DeployError:
        return []
    removed = []
    if client.info().get("Swarm", {}).get("ControlAvailable"):
        for service in client.services.list(filters={"label": LABEL_RUN}):
            if service.attrs["Spec"].get("Labels", {}).get(LABEL_RUN) not in live_runs:
                service.remove()
                removed.append(service.name)
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}, ignore_removed=True):
        if container.labels.get(LABEL_RUN) not in live_runs:
            container.remove(force=True)
            removed.append(container.name)
    return removed


__all__ = ["HOST_PYTHON_IMAGE", "DockerBackend", "clean_stale_containers", "docker_client"]
