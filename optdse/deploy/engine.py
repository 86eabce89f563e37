"""Docker engines, shared by the docker and swarm backends: the client, what a replica
container runs (the three image modes), the labels that mark optdse's objects, a container's
cgroup, and removing what a run left.

Images (`image:` in the study file, `--image` on the command line), see ServingImage:
- `host-python` (default): optdse-serve from this machine's Python environment inside an
  empty image made with `docker import`, with read-only bind mounts of the system
  directories, the interpreter and the project. It needs no registry (this project's CI).
- An image labelled `optdse.serve` (serving/Dockerfile, e.g. `optdse/serving`): optdse-serve
  inside the image on the host network, bound to 127.0.0.1.
- Any other image is run as TensorFlow Serving (`tensorflow/serving`): tensorflow_model_server
  binds every interface, so the container gets its own network namespace and its gRPC and
  REST ports are published on 127.0.0.1 only.
In both image modes the model is mounted read-only at /models/NAME, as tensorflow/serving expects.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from optdse.deploy.base import HOST, DeployError
from optdse.deploy.cgroups import Cgroup, CgroupDriver
from optdse.deploy.runs import run_owner_alive
from optdse.knobs import CONTAINER_BATCHING_FILE, ServerKnobs

HOST_PYTHON_IMAGE = "optdse/host-python:empty"
LABEL_RUN, LABEL_REPLICA = "optdse.run", "optdse.replica"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/etc")


def docker_client() -> Any:
    """A client for the local engine, or a DeployError that says what is missing."""
    try:
        import docker
        import requests
    except ImportError as error:
        raise DeployError("docker", f"the Docker SDK is not installed ({error})") from None
    try:
        client = docker.from_env(version="auto", timeout=60)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:  # no socket, no answer
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


def container_cgroup(container_id: str) -> Cgroup:
    """The container's cgroup, wherever this engine's cgroup driver put it."""
    driver, why_not = CgroupDriver.layout()
    if driver is None:
        raise DeployError("docker", f"cannot read container CPU accounting: {why_not}")
    for relative in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        if (driver.cpuacct / relative).exists():
            return Cgroup(driver, relative)
    raise DeployError("docker", f"cannot find the cgroup of container {container_id[:12]} for CPU accounting")


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



__all__ = ["HOST_PYTHON_IMAGE", "LABEL_REPLICA", "LABEL_RUN", "ServingImage", "clean_stale_containers",
           "container_cgroup", "docker_client", "docker_errors", "remove_labelled"]
