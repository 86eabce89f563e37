"""One contract, every backend (Optuna's storage tests are the model): deploy, readiness,
reuse, limits in place, scaling, OOM reported, and nothing left after close.

Backends differ in one point the contract allows: Swarm applies new limits by replacing its
tasks (`service update`), so "in place" there means the same service, not the same container.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from optdse.config import ServerConfig
from optdse.deploy.base import Backend, DeployError
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.docker import LABEL_RUN, DockerBackend
from optdse.deploy.local import LocalBackend, wait_available
from optdse.deploy.swarm import SwarmBackend
from optdse.deploy.runs import state_dir
from tests.optdse_tests.conftest import require_docker


def leftovers(backend: Backend, ids: tuple[str, ...]) -> list[str]:
    """What of this backend's making still exists after close()."""
    if isinstance(backend, LocalBackend):
        found = [f"process {pid}" for pid in ids if psutil.pid_exists(int(pid))]
        if backend.driver is not None:
            found += [str(d) for tree in backend.driver.trees() if (d := tree / "optdse" / backend.run.run_id).exists()]
        if backend.run.directory.exists():
            found.append(str(backend.run.directory))
        return found
    if isinstance(backend, (DockerBackend, SwarmBackend)):
        label = {"label": f"{LABEL_RUN}={backend.run.run_id}"}
        services = backend.client.services.list(filters=label) if isinstance(backend, SwarmBackend) else []
        containers = backend.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={backend.run.run_id}"})
        return ([s.name for s in services] + [c.name for c in containers]
                + ([str(backend.run.directory)] if backend.run.directory.exists() else []))
    raise NotImplementedError(type(backend).__name__)


@pytest.fixture(params=["local", "docker", "swarm"])
def backend(request: pytest.FixtureRequest, mnist_base_path: Path, cgroup_driver: CgroupDriver,
            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Backend]:
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    made: Backend
    if request.param == "docker":
        require_docker()
        made = DockerBackend(mnist_base_path, warn=pytest.fail)
    elif request.param == "swarm":
        request.getfixturevalue("swarm")
        made = SwarmBackend(mnist_base_path, warn=pytest.fail)
    else:
        made = LocalBackend(mnist_base_path, warn=pytest.fail)
    yield made
    made.close()
    assert leftovers(made, ()) == []


def config(replicas: int = 1, cpus: float = 0.5, memory_mb: int = 1000) -> ServerConfig:
    return ServerConfig(model="mnist", replicas=replicas, cpus=cpus, memory_mb=memory_mb)


class TestBackendContract:
    def test_deploy_gives_ready_loopback_endpoints_and_close_leaves_nothing(self, backend: Backend) -> None:
        endpoints = backend.apply(config(replicas=2))
        assert len(endpoints) == 2 and len({e.port for e in endpoints}) == 2
        for endpoint in endpoints:
            assert endpoint.host == "127.0.0.1"
            wait_available(endpoint.target, "mnist", timeout=5)
        ids = backend.replica_ids()
        sample = backend.usage()
        assert len(sample.cpu_seconds) == 2 and all(c > 0 for c in sample.cpu_seconds)  # it loaded a model
        backend.close()
        assert leftovers(backend, ids) == []
        backend.close()  # twice is fine

    def test_reuse_in_place_limits_and_scaling(self, backend: Backend) -> None:
        backend.apply(config(replicas=1, cpus=0.5, memory_mb=1000))
        first = backend.replica_ids()
        backend.apply(config(replicas=1, cpus=0.5, memory_mb=1000))
        assert backend.replica_ids() == first, "an unchanged server config redeployed"
        service = backend.service.id if isinstance(backend, SwarmBackend) else None
        backend.apply(config(replicas=1, cpus=1.5, memory_mb=600))
        if isinstance(backend, SwarmBackend):
            backend.service.reload()
            assert backend.service.id == service, "a limit change recreated the service"
            limits = backend.service.attrs["Spec"]["TaskTemplate"]["Resources"]["Limits"]
            assert limits == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 600 * 2**20}
            first = backend.replica_ids()  # Swarm replaced the task to apply the limits
        assert backend.replica_ids() == first, "a limit change redeployed instead of updating in place"
        if isinstance(backend, LocalBackend) and backend.driver and backend.driver.version == 1:
            group = backend.replicas[0].cgroup
            assert group is not None
            assert (group.cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "150000"
            assert (group.memory_dir / "memory.limit_in_bytes").read_text().strip() == str(600 * 2**20)
        if isinstance(backend, DockerBackend):  # what `docker inspect` shows
            host_config = backend.replicas[0].container.client.api.inspect_container(first[0])["HostConfig"]
            assert (host_config["CpuQuota"], host_config["CpuPeriod"]) == (150000, 100000)
            assert host_config["Memory"] == host_config["MemorySwap"] == 600 * 2**20
        backend.apply(config(replicas=3, cpus=1.5, memory_mb=600))
        grown = backend.replica_ids()
        assert len(grown) == 3 and grown[0] == first[0]
        backend.apply(config(replicas=2, cpus=1.5, memory_mb=600))
        assert backend.replica_ids() == grown[:2]

    def test_too_little_memory_is_reported_as_oom_and_the_backend_goes_on(self, backend: Backend) -> None:
        with pytest.raises(DeployError) as caught:
            backend.apply(config(replicas=1, memory_mb=64))
        assert caught.value.reason == "OOM"
        assert "64 MB" in caught.value.message
        assert backend.replica_ids() == ()
        endpoints = backend.apply(config(replicas=1, memory_mb=1000))
        wait_available(endpoints[0].target, "mnist", timeout=5)

    def test_state_is_recorded_for_clean_while_running(self, backend: Backend) -> None:
        backend.apply(config())
        if isinstance(backend, DockerBackend):
            (container,) = backend.client.containers.list(filters={"label": f"{LABEL_RUN}={backend.run.run_id}"})
            assert container.labels["optdse.replica"] == "replica-0"
        if isinstance(backend, SwarmBackend):
            (service,) = backend.client.services.list(filters={"label": f"{LABEL_RUN}={backend.run.run_id}"})
            assert service.id == backend.service.id
        if isinstance(backend, LocalBackend):
            records = sorted(p.name for p in (state_dir() / backend.run.run_id).glob("replica-*.json"))
            assert records == ["replica-0.json"]
