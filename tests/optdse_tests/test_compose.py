"""serving/docker-compose.yml, the seed's stack, deployed for real with `docker stack deploy`."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from optdse.deploy.base import wait_available
from optdse.deploy.engine import docker_client
from tests.optdse_tests.conftest import listens_on_loopback_only

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "serving" / "docker-compose.yml"


def test_the_seed_stack_deploys_four_limited_replicas_on_loopback(mnist_base_path: Path, serving_image: str,
                                                                 swarm: None) -> None:
    stack = f"optdse-test-{os.getpid()}"
    env = {**os.environ, "OPTDSE_MODELS": str(mnist_base_path.resolve().parent), "OPTDSE_IMAGE": serving_image}
    if mnist_base_path.resolve().name != "mnist":
        pytest.fail(f"the stack mounts OPTDSE_MODELS/mnist, but the model is at {mnist_base_path}")
    subprocess.run(["docker", "stack", "deploy", "-c", str(COMPOSE_FILE), stack], env=env, check=True,
                   capture_output=True, timeout=60)
    client = docker_client()
    try:
        (service,) = client.services.list(filters={"label": f"com.docker.stack.namespace={stack}"})
        spec = service.attrs["Spec"]["TaskTemplate"]
        assert service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
        assert spec["Resources"]["Limits"] == {"NanoCPUs": 200_000_000, "MemoryBytes": 1000 * 2**20}
        assert spec["RestartPolicy"]["Condition"] == "on-failure"
        for port in (8501, 8502, 8503, 8504):  # 8500 + {{.Task.Slot}}
            wait_available(f"127.0.0.1:{port}", "mnist", timeout=240)
            assert listens_on_loopback_only(port)
    finally:
        subprocess.run(["docker", "stack", "rm", stack], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        label = {"label": f"com.docker.stack.namespace={stack}"}
        while client.containers.list(all=True, filters=label, ignore_removed=True) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert client.containers.list(all=True, filters=label, ignore_removed=True) == []
