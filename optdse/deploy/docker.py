"""Replicas as Docker containers, through the Docker SDK, the way the seed deployed them.

Each replica is a container labelled `optdse.run=<run id>` and `optdse.replica=replica-N`,
on host networking with its own 127.0.0.1 port, limited with a CFS CPU quota (what `--cpus` sets) and `mem_limit`
(no swap). As in the local backend, the memory limit holds from the start and the CPU limit
is applied once the model is AVAILABLE; limits change in place with `container.update`, and
scaling adds or removes containers. ACU comes from the containers' own cgroups (the same
files `docker stats` reads, without its one-second sampling).

Images (`image:` in the study file, `--image` on the command line), see ServingImage:
- `host-python` (default): optdse-serve from this machine's Python environment inside an
  empty image made with `docker import`, with read-only bind mounts of the system
  directories, the interpreter and the project. It needs no registry (this project's CI).
- An image labelled `optdse.serve` (serving/Dockerfile, e.g. `optdse/serving`): optdse-serve
  inside the image on the host network, bound to 127.0.0.1.
- Any other image is run as TensorFlow Serving (`tensorflow/serving`): tensorflow_model_server
  binds every interface, so the container gets its own network namespace and its gRPC and
  REST ports are published on 127.0.0.1 only.
Every replica serves REST beside gRPC (as in the local backend: the protocol is the client's
choice and never redeploys).
In both image modes the model is mounted read-only at /models/NAME, as tensorflow/serving expects.
"""

from __future__ import annotations

import io
import shlex
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from optdse.config import ServerConfig
from optdse.deploy.base import DeployError, Endpoint, ReplicaChecks, ResourceSample, write_batching_file
from optdse.deploy.cgroups import CFS_PERIOD_US, Cgroup, CgroupDriver
from optdse.deploy.local import HOST, free_port, make_ready
from optdse.deploy.runs import Run, run_owner_alive
from optdse.knobs import CONTAINER_BATCHING_FILE, ServerKnobs

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


@dataclass(frozen=True)
class ServingImage:
    """What a replica container runs, and how: the one place the three image modes differ.

    `serve_args` is the server's command line for its gRPC and REST ports (numbers, or
    placeholders the swarm backend replaces with arithmetic on the task's slot); `mounts`
    maps host paths to read-only binds; `loopback_bind` says whether the server can bind
    127.0.0.1 itself, which host networking requires (TF Serving cannot: it always binds
    every interface).
    """

    reference: str
    mode: Literal["host-python", "optdse-serve", "tensorflow-serving"]
    model_base_path: Path

    CONTAINER_PORT = 8500  # where a published-port (tensorflow-serving) container listens: gRPC,
    CONTAINER_REST_PORT = 8501  # and REST

    @classmethod
    def resolve(cls, client: Any, reference: str, model_base_path: Path) -> ServingImage:
        """The image, pulled if it is not local yet, and its mode (from its optdse.serve label)."""
        if reference == "host-python":
            ensure_host_python_image(client)
            return cls(HOST_PYTHON_IMAGE, "host-python", model_base_path)
        errors = docker_errors()
        try:
            image = client.images.get(reference)
        except errors.ImageNotFound:
            try:
                image = client.images.pull(reference)
            except errors.APIError as error:
                raise DeployError("image", f"image {reference} is not on this machine and cannot be pulled "
                                           f"({error.explanation or error}); build it (serving/build-image.sh), "
                                           "load it (docker load), or use image: host-python") from None
        labelled = "optdse.serve" in (image.labels or {}) and image.labels["optdse.serve"]
        return cls(reference, "optdse-serve" if labelled else "tensorflow-serving", model_base_path)

    @property
    def loopback_bind(self) -> bool:
        return self.mode != "tensorflow-serving"

    def model_path(self, model: str) -> str:
        """The model base path as the server inside the container sees it."""
        return str(self.model_base_path.resolve()) if self.mode == "host-python" else f"/models/{model}"

    @property
    def executable(self) -> str:
        return {"host-python": f"{sys.prefix}/bin/optdse-serve", "optdse-serve": "optdse-serve",
                "tensorflow-serving": "tensorflow_model_server"}[self.mode]

    def serve_args(self, port: int | str, rest_port: int | str, model: str,
                   knobs: ServerKnobs = ServerKnobs()) -> list[str]:
        """tensorflow_model_server's flags, which optdse-serve shares (plus --host); the
        server's knobs too, their batching file at CONTAINER_BATCHING_FILE (see `mounts`)."""
        args = [f"--port={port}", f"--rest_api_port={rest_port}", f"--model_name={model}",
                f"--model_base_path={self.model_path(model)}", *knobs.flags(CONTAINER_BATCHING_FILE)]
        return args + [f"--host={HOST}"] if self.loopback_bind else args

    def mounts(self, model: str, batching_file: Path | None = None) -> dict[str, dict[str, str]]:
        """Read-only binds: the model (and for host-python this interpreter and project), and
        the batching parameters file at CONTAINER_BATCHING_FILE when the knobs need one."""
        if self.mode == "host-python":
            binds = host_python_mounts(self.model_base_path)
        else:
            binds = {str(self.model_base_path.resolve()): {"bind": self.model_path(model), "mode": "ro"}}
        if batching_file is not None:
            binds[str(batching_file)] = {"bind": CONTAINER_BATCHING_FILE, "mode": "ro"}
        return binds


class Container:
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
    def endpoint(self) -> Endpoint:
        return Endpoint(replica=int(self.name.rsplit("-", 1)[1]), host=HOST, port=self.port, rest_port=self.rest_port)

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
        except Exception:  # noqa: BLE001, S110  # already gone
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


class DockerBackend(ReplicaChecks):
    """Replicas as containers; the same contract as LocalBackend."""

    name = "docker"
    limits_enforced = True

    def __init__(self, model_base_path: Path, warn: Callable[[str], None] = print,
                 ready_timeout: float = 180.0, image: str = "host-python") -> None:
        self.client = docker_client()
        self.model_base_path = model_base_path
        self.ready_timeout = ready_timeout
        self.image = ServingImage.resolve(self.client, image, model_base_path)
        self.accounting = "docker cgroup"
        self.run = Run.start()
        self.replicas: list[Container] = []
        self.current: ServerConfig | None = None
        self._next_index = 0
        self._killed: set[str] = set()  # by kill_replica, not yet dropped by check

    def apply(self, server: ServerConfig) -> list[Endpoint]:
        self._drop_killed()
        if self.current is not None and (self.current.model, self.current.knobs) != (server.model, server.knobs):
            self._drop(self.replicas)  # a replica's model and knobs are its command line: start afresh
        if len(self.replicas) > server.replicas:
            self._drop(self.replicas[server.replicas:])
        for replica in list(self.replicas):
            try:
                replica.set_limits(server.cpus, server.memory_mb)
            except docker_errors().APIError:
                # The kernel refuses a memory limit below what the container uses now (runc:
                # "unable to set memory limit"): start it afresh under the new limit instead.
                self._drop([replica])
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
                    started.append(Container(self.client, name, self.run, server, self.image))
                except docker_errors().APIError as error:
                    raise DeployError("docker", f"cannot start {name}: {error.explanation or error}") from None
            make_ready(started, server, self.ready_timeout)
        except BaseException:
            for replica in started:
                replica.remove()
            raise
        self.replicas.extend(started)

    def _drop(self, replicas: list[Container]) -> None:
        for replica in list(replicas):
            replica.remove()
            self.replicas.remove(replica)

    def replica_ids(self) -> tuple[str, ...]:
        return tuple(r.container.id for r in self.replicas)

    @property
    def server_command(self) -> str:
        """The first replica's server command line inside its container (the others differ
        only in their ports)."""
        return shlex.join(self.replicas[0].command) if self.replicas else ""

    def usage(self) -> ResourceSample:
        return ResourceSample(time=time.perf_counter(), cpu_seconds=tuple(r.cpu_seconds() for r in self.replicas),
                              memory_bytes=tuple(r.memory_bytes() for r in self.replicas))

    def memory_peaks(self) -> tuple[int, ...]:
        return tuple(r.cgroup.memory_peak() or 0 for r in self.replicas)

    def reset_peaks(self) -> None:
        for replica in self.replicas:
            replica.cgroup.reset_peak()

    def close(self) -> None:
        try:
            self._drop(self.replicas)
            self.current = None
            remove_labelled(self.client, lambda run_id: run_id == self.run.run_id)
        finally:
            self.run.finish()


def clean_stale_containers(live_runs: set[str], engine_urls: list[str] | None = None) -> list[str]:
    """Remove the Swarm services, configs and containers of optdse runs that are no longer
    alive (found by their optdse.run label) from this host's engine, then their containers
    from each engine in `engine_urls` (other swarm nodes: a removed service's tasks go away
    there asynchronously, and this waits until they have); return their names."""
    def stale(run_id: str | None) -> bool:
        return run_id not in live_runs and not (run_id and run_owner_alive(run_id))

    try:
        client = docker_client()
    except DeployError:
        return []
    removed = remove_labelled(client, stale)
    for url in engine_urls or []:
        import docker

        try:
            engine = docker.DockerClient(base_url=url, use_ssh_client=url.startswith("ssh://"), version="auto", timeout=30)
        except docker.errors.DockerException as error:
            raise DeployError("swarm", f"--swarm-engine {url}: cannot reach it ({error}); removed so far: "
                                       f"{', '.join(removed) or 'nothing'}") from None
        try:
            removed += remove_labelled(engine, stale)
            deadline = time.monotonic() + 60
            while (any(stale(c.labels.get(LABEL_RUN)) for c in engine.containers.list(
                    all=True, filters={"label": LABEL_RUN}, ignore_removed=True)) and time.monotonic() < deadline):
                time.sleep(0.3)
        finally:
            engine.close()
    return removed


def remove_labelled(client: Any, whose: Callable[[str | None], bool]) -> list[str]:
    """Remove the services, containers and Swarm configs labelled with an optdse run id for which `whose`
    is true; return their names. Services go first, or Swarm would replace the containers
    just removed. A backend's close sweeps its own run this way too: a container or service
    created as Ctrl-C arrived exists in the engine before the backend holds its id."""
    removed = []
    if client.info().get("Swarm", {}).get("ControlAvailable"):
        for service in client.services.list(filters={"label": LABEL_RUN}):
            if whose(service.attrs["Spec"].get("Labels", {}).get(LABEL_RUN)):
                service.remove()
                removed.append(service.name)
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}, ignore_removed=True):
        if whose(container.labels.get(LABEL_RUN)):
            try:
                container.remove(force=True)
            except docker_errors().NotFound:  # a service's task, gone with its service
                continue
            removed.append(container.name)
    if client.info().get("Swarm", {}).get("ControlAvailable"):
        for config in client.configs.list(filters={"label": LABEL_RUN}):  # batching files, once unused
            if whose(config.attrs["Spec"].get("Labels", {}).get(LABEL_RUN)):
                config.remove()
                removed.append(config.name)
    return removed

__all__ = ["HOST_PYTHON_IMAGE", "DockerBackend", "ServingImage", "clean_stale_containers", "docker_client", "remove_labelled"]
