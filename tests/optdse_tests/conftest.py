"""Fixtures for the harness: an isolated project directory, the CLI, real cgroups."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from optdse.deploy.base import DeployError
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.engine import docker_client
from optdse.deploy.local import LocalBackend
from optdse.deploy.swarm_nodes import ensure_swarm
from tests.postgres import PostgresMissing, PostgresServer
from tests.run_shared import run_lock
from tests.serving_process import optdse_command

SPACE = """\
parameters:
  threads:   {low: 1, high: 4}
  file_size: {low: 1, high: 8, log: true}
  replicas:  {low: 1, high: 2}
  cpus:      {low: 0.2, high: 1.0, step: 0.1}
  memory_mb: {value: 1000}
"""


def write_study(project: Path, name: str, space: str = SPACE, **overrides: object) -> Path:
    (project / "studies").mkdir(exist_ok=True)
    (project / "search_spaces").mkdir(exist_ok=True)
    (project / "search_spaces" / f"{name}.yaml").write_text(space)
    body = {"model": "mnist", "search_space": f"{name}.yaml", "trials": 3, "requests": 200,
            "sampler": "{name: tpe, n_startup_trials: 2, seed: 1, start: none}",
            "objectives": "[{metric: art_ms, direction: minimize}, {metric: acu_cores, direction: minimize}]",
            "enqueue": "[{replicas: 1, cpus: 1.0, file_size: 1}]", **overrides}
    path = project / "studies" / f"{name}.yaml"  # an override of None leaves the key out (its default)
    path.write_text("".join(f"{key}: {value}\n" for key, value in body.items() if value is not None))
    return path


def make_project(directory: Path, mnist_base_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`directory` as a working directory with the session's exported model in
    results/models/mnist and a state directory of its own (OPTDSE_STATE_DIR, set through
    `monkeypatch`), so `optdse clean` there sees only its own runs."""
    (directory / "results" / "models").mkdir(parents=True)
    (directory / "results" / "models" / "mnist").symlink_to(mnist_base_path)
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(directory / "state"))
    return directory


@pytest.fixture
def project(tmp_path: Path, mnist_base_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_project(tmp_path, mnist_base_path, monkeypatch)


def optdse(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*optdse_command(), *args], cwd=project, capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="session")
def cgroup_driver() -> CgroupDriver:
    driver, why_not = CgroupDriver.detect()
    if driver is None:
        if os.environ.get("CI"):
            pytest.fail(f"cgroups are required under CI: {why_not}")
        pytest.skip(f"cgroups not writable here: {why_not}")
    return driver


@pytest.fixture
def local(mnist_base_path: Path, cgroup_driver: CgroupDriver, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[LocalBackend]:
    """A local backend with a state directory of its own, closed after the test."""
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    backend = LocalBackend(mnist_base_path, warn=pytest.fail)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Swarm to deploy services in: the engine's own, or a single-node one on 127.0.0.1
    that this fixture initialises and leaves again once no pytest-xdist worker of this run
    uses it (their sessions count themselves in a file all of them share)."""
    require_docker()
    client = docker_client()
    with _swarm_users(tmp_path_factory) as users:
        if not users["count"]:
            users["initialised"] = ensure_swarm(client, init=True)
        users["count"] += 1
    yield
    with _swarm_users(tmp_path_factory) as users:
        users["count"] -= 1
        if not users["count"] and users["initialised"]:
            client.swarm.leave(force=True)
            users["initialised"] = False


@contextlib.contextmanager
def _swarm_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The run's record of the swarm fixture's users, changed under the run's lock."""
    with run_lock(tmp_path_factory, "swarm") as directory:
        path = directory / "swarm-users.json"
        users = json.loads(path.read_text()) if path.exists() else {"count": 0, "initialised": False}
        yield users
        path.write_text(json.dumps(users))


def listens_on_loopback_only(port: int) -> bool:
    """True if something listens on TCP `port` and every listening socket is bound to a loopback
    address (gRPC binds 127.0.0.1 as the IPv4-mapped ::ffff:127.0.0.1)."""
    addresses = [ipaddress.ip_address(c.laddr.ip) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    return bool(addresses) and all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in addresses)


SERVING_IMAGE = "optdse/serving:latest"
TF_SERVING_LIKE_IMAGE = "optdse-test/tensorflow-serving-like:latest"


@pytest.fixture(scope="session")
def serving_image() -> str:
    """serving/Dockerfile's image, which .ci/run builds (serving/build-image.sh --local-base)."""
    require_docker()
    try:
        docker_client().images.get(SERVING_IMAGE)
    except Exception:  # noqa: BLE001  # ImageNotFound
        message = f"{SERVING_IMAGE} is not built; run serving/build-image.sh [--local-base]"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SERVING_IMAGE


@pytest.fixture(scope="session")
def tf_serving_like_image(serving_image: str) -> Iterator[str]:
    """An image optdse must run as TensorFlow Serving: serving_image with its optdse.serve label
    emptied, so only `tensorflow_model_server` flags and a published port are used (the real
    tensorflow/serving cannot be pulled here). Built for this session, removed after it."""
    client = docker_client()
    dockerfile = f"FROM {serving_image}\nLABEL optdse.serve=\"\"\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=TF_SERVING_LIKE_IMAGE, rm=True)
    yield TF_SERVING_LIKE_IMAGE
    client.images.remove(TF_SERVING_LIKE_IMAGE)


def require_docker() -> None:
    """Skip without a Docker engine, saying why; under CI a missing engine is a failure."""
    try:
        docker_client()
    except DeployError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {error.message}")
        pytest.skip(error.message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's own PostgreSQL server (tests/postgres.py); skipped where PostgreSQL is not
    installed, a failure under CI."""
    try:
        server = PostgresServer.start()
    except PostgresMissing as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    try:
        yield server
    finally:
        server.stop()
