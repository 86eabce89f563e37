"""Fixtures for the harness: an isolated project directory, the CLI, real cgroups."""

from __future__ import annotations

import glob
import io
import ipaddress
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from optdse.deploy.base import DeployError
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.docker import docker_client
from optdse.deploy.local import LocalBackend, free_port
from optdse.deploy.swarm import ensure_swarm
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
    path = project / "studies" / f"{name}.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in body.items()))
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
def swarm() -> Iterator[None]:
    """A Swarm to deploy services in: the engine's own, or a single-node one on 127.0.0.1
    that this fixture initialises and leaves again at the end."""
    require_docker()
    client = docker_client()
    initialised = ensure_swarm(client, init=True)
    yield
    if initialised:
        client.swarm.leave(force=True)


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


class PostgresServer:
    """A PostgreSQL server of the test session's own: a cluster made by initdb in a temporary
    directory, its postmaster a child of this process (run as the `postgres` user, since
    PostgreSQL refuses root), listening on 127.0.0.1 only, stopped by its pid."""

    def __init__(self, directory: Path) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not binaries or shutil.which("runuser") is None:
            message = "PostgreSQL is not installed (apt-get install postgresql)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.bin = Path(binaries[-1])
        self.directory = directory
        directory.mkdir(mode=0o700)
        shutil.chown(directory, "postgres", "postgres")
        subprocess.run([self.bin / "initdb", "-D", directory / "data", "-U", "optdse", "-A", "trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, user="postgres", group="postgres")
        self.port = free_port()
        self.process = subprocess.Popen(
            [self.bin / "postgres", "-D", directory / "data", "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={directory}", "-c", "fsync=off", "-c", "max_connections=100"],
            user="postgres", group="postgres", stdout=subprocess.DEVNULL, stderr=(directory / "log").open("w"))
        self._databases = itertools.count()
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"PostgreSQL did not start: {(directory / 'log').read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        return subprocess.run([self.bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False).returncode == 0

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL (psycopg 3)."""
        name = f"optdse_{next(self._databases)}"
        subprocess.run([self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "optdse", name],
                       check=True, capture_output=True)
        return f"postgresql+psycopg://optdse@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # Not under pytest's basetemp: the postgres user must traverse every directory above its
    # cluster, and pytest makes its own 0700.
    root = Path(tempfile.mkdtemp(prefix="optdse-test-postgres-"))
    root.chmod(0o755)
    try:
        server = PostgresServer(root / "cluster")
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
