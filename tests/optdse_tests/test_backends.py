"""One contract, every backend (Optuna's storage tests are the model): deploy, readiness,
reuse, limits in place, scaling, OOM reported, and nothing left after close.

Backends differ in one point the contract allows: Swarm applies new limits by replacing its
tasks (`service update`), so "in place" there means the same service, not the same container.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from optdse.config import ServerConfig
from optdse.deploy.base import Backend, DeployError
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.base import wait_available
from optdse.deploy.docker import DockerBackend
from optdse.deploy.engine import LABEL_RUN
from optdse.deploy.local import LocalBackend
from optdse.deploy.runs import state_dir
from optdse.deploy.swarm import SwarmBackend
from optdse.knobs import ServerKnobs
from optdse.models import builtin
from tests.optdse_tests.conftest import listens_on_loopback_only, require_docker
from tests.serving_process import optdse_command

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies


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
        configs = backend.client.configs.list(filters=label) if isinstance(backend, SwarmBackend) else []
        return ([s.name for s in services] + [c.name for c in containers] + [c.name for c in configs]
                + ([str(backend.run.directory)] if backend.run.directory.exists() else []))
    raise NotImplementedError(type(backend).__name__)


#: Every backend, and docker with a TF-Serving image (its own network namespace, ports published
#: on loopback: another code path). The optdse.serve image runs the same code paths as
#: host-python; it is deployed by test_each_image_mode_runs_as_documented on docker and by every
#: test on the three-node bed (test_multinode) on swarm, so the whole contract is not run again
#: for it (it cost 200 s of CI).
BACKENDS = ["local", "docker", "swarm", "docker/tf-serving-image"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, mnist_base_path: Path, cgroup_driver: CgroupDriver,
            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Backend]:
    """Each of BACKENDS, made as the CLI makes it."""
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    kind, _, image_mode = request.param.partition("/")
    image = {"": "host-python", "optdse-image": "serving_image",
             "tf-serving-image": "tf_serving_like_image"}[image_mode]
    if image != "host-python":
        image = request.getfixturevalue(image)
    made: Backend
    if kind == "docker":
        require_docker()
        made = DockerBackend(mnist_base_path, warn=pytest.fail, image=image)
    elif kind == "swarm":
        request.getfixturevalue("swarm")
        made = SwarmBackend(mnist_base_path, warn=pytest.fail, image=image)
    else:
        made = LocalBackend(mnist_base_path, warn=pytest.fail)
    yield made
    made.close()
    assert leftovers(made, ()) == []


def config(replicas: int = 1, cpus: float = 0.5, memory_mb: int = 1000, knobs: ServerKnobs = ServerKnobs()) -> ServerConfig:
    return ServerConfig(model=builtin("mnist"), replicas=replicas, cpus=cpus, memory_mb=memory_mb, knobs=knobs)


def replica_logs(backend: Backend) -> list[str]:
    """What each running replica has logged so far."""
    if isinstance(backend, LocalBackend):
        return [replica.log_path.read_text() for replica in backend.replicas]
    if isinstance(backend, DockerBackend):
        return [replica.container.logs().decode() for replica in backend.replicas]
    if isinstance(backend, SwarmBackend):
        label = {"label": f"{LABEL_RUN}={backend.run.run_id}", "status": "running"}
        return [container.logs().decode() for container in backend.client.containers.list(filters=label)]
    raise NotImplementedError(type(backend).__name__)


class TestBackendContract:
    def test_deploy_gives_ready_loopback_endpoints_and_close_leaves_nothing(self, backend: Backend) -> None:
        endpoints = backend.apply(config(replicas=2))
        assert len(endpoints) == 2 and len({e.port for e in endpoints}) == 2
        for endpoint in endpoints:
            assert endpoint.host == "127.0.0.1"
            wait_available(endpoint.target, "mnist", timeout=5)
            assert listens_on_loopback_only(endpoint.port)
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

    def test_a_killed_replica_is_dropped_by_check_and_replaced_by_the_next_apply(self, backend: Backend) -> None:
        """The chaos option's contract: kill_replica kills the last replica, check() reports it
        by name instead of failing, and the next apply of the same config starts a replacement."""
        backend.apply(config(replicas=2))
        before = backend.replica_ids()
        name = backend.kill_replica()
        assert backend.check() == [name]
        assert backend.check() == [], "a killed replica was reported twice"
        endpoints = backend.apply(config(replicas=2))
        after = backend.replica_ids()
        assert len(after) == 2 and after[0] == before[0] and after[1] != before[1]
        for endpoint in endpoints:
            wait_available(endpoint.target, "mnist", timeout=10)
        backend.kill_replica()  # and a trial that failed before its check: apply still replaces it
        endpoints = backend.apply(config(replicas=2))
        assert len(endpoints) == 2 and len(set(backend.replica_ids()) - set(after)) == 1
        assert backend.check() == []
        for endpoint in endpoints:
            wait_available(endpoint.target, "mnist", timeout=10)

    def test_too_little_memory_is_reported_as_oom_and_the_backend_goes_on(self, backend: Backend) -> None:
        with pytest.raises(DeployError) as caught:
            backend.apply(config(replicas=1, memory_mb=64))
        assert caught.value.reason == "OOM"
        assert "64 MB" in caught.value.message
        assert backend.replica_ids() == ()
        endpoints = backend.apply(config(replicas=1, memory_mb=1000))
        wait_available(endpoints[0].target, "mnist", timeout=5)

    def test_a_memory_limit_below_current_use_restarts_the_replica_under_it(self, backend: Backend) -> None:
        """The kernel cannot shrink a limit below what a replica uses (~200 MB after loading);
        the backend restarts it under the new limit, which here is too small to load: OOM."""
        backend.apply(config(replicas=1, memory_mb=1000))
        with pytest.raises(DeployError) as caught:
            backend.apply(config(replicas=1, memory_mb=100))
        assert caught.value.reason == "OOM"
        assert backend.replica_ids() == ()
        endpoints = backend.apply(config(replicas=1, memory_mb=1000))
        wait_available(endpoints[0].target, "mnist", timeout=5)

    def test_server_knobs_reach_every_replica_and_a_change_starts_them_afresh(self, backend: Backend) -> None:
        """Same names, same effect everywhere: each replica's server logs the settings it read
        from its flags and batching file (a host file, a read-only bind, or a Swarm config),
        the backend reports the command line it ran, and other knobs mean new replicas."""
        knobs = ServerKnobs(enable_batching=True, max_batch_size=16, batch_timeout_micros=700, num_batch_threads=1,
                            max_enqueued_batches=3, tensorflow_intra_op_parallelism=1,
                            tensorflow_inter_op_parallelism=2, grpc_max_threads=7)
        backend.apply(config(replicas=2, knobs=knobs))
        settings = ("settings: enable_batching=true max_batch_size=16 batch_timeout_micros=700 num_batch_threads=1 "
                    "max_enqueued_batches=3 tensorflow_intra_op_parallelism=1 tensorflow_inter_op_parallelism=2 "
                    "grpc_max_threads=7")
        logs = replica_logs(backend)
        assert len(logs) == 2 and all(settings in log for log in logs), logs
        assert "--enable_batching=true --batching_parameters_file=" in backend.server_command
        assert backend.server_command.endswith("--grpc_max_threads=7") or "--grpc_max_threads=7 " in backend.server_command
        first = set(backend.replica_ids())
        backend.apply(config(replicas=2))
        assert not first & set(backend.replica_ids()), "new knobs reused a replica started with the old ones"
        logs = replica_logs(backend)
        assert len(logs) == 2 and all("settings: enable_batching=false" in log for log in logs), logs
        assert "--enable_batching" not in backend.server_command

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


def test_each_image_mode_runs_as_documented(mnist_base_path: Path, serving_image: str, tf_serving_like_image: str,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """optdse.serve images: host network, bound to 127.0.0.1. TF-Serving images: own network
    namespace, gRPC port published on 127.0.0.1 only. Both: the model read-only at /models/mnist."""
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    for image, host_network in ((serving_image, True), (tf_serving_like_image, False)):
        backend = DockerBackend(mnist_base_path, warn=pytest.fail, image=image)
        try:
            (endpoint,) = backend.apply(config())
            inspected = backend.client.api.inspect_container(backend.replica_ids()[0])
            (mount,) = inspected["Mounts"]
            assert (mount["Destination"], mount["RW"]) == ("/models/mnist", False)
            if host_network:
                assert inspected["HostConfig"]["NetworkMode"] == "host"
                assert inspected["Config"]["Entrypoint"] == ["optdse-serve"]
                assert "--host=127.0.0.1" in inspected["Args"]
            else:
                assert inspected["HostConfig"]["NetworkMode"] != "host"
                assert inspected["Config"]["Entrypoint"] == ["tensorflow_model_server"]
                assert inspected["HostConfig"]["PortBindings"] == {
                    "8500/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(endpoint.port)}],
                    "8501/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(endpoint.rest_port)}]}
            assert listens_on_loopback_only(endpoint.port)
            assert endpoint.rest_port is not None and listens_on_loopback_only(endpoint.rest_port)
            wait_available(endpoint.target, "mnist", timeout=5)
        finally:
            backend.close()
        assert leftovers(backend, ()) == []


@pytest.mark.usefixtures("swarm")
def test_the_serving_image_runs_as_a_swarm_task(mnist_base_path: Path, serving_image: str,
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The optdse.serve image on swarm (the contract runs there with host-python): the model
    read-only at /models/mnist, the task on the host network, bound to 127.0.0.1."""
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    backend = SwarmBackend(mnist_base_path, warn=pytest.fail, image=serving_image)
    try:
        (endpoint,) = backend.apply(config())
        inspected = backend.client.api.inspect_container(backend.replica_ids()[0])
        assert [(m["Destination"], m["RW"]) for m in inspected["Mounts"]] == [("/models/mnist", False)]
        assert inspected["HostConfig"]["NetworkMode"] == "host" and "optdse-serve" in backend.server_command
        assert listens_on_loopback_only(endpoint.port)
        wait_available(endpoint.target, "mnist", timeout=5)
    finally:
        backend.close()
    assert leftovers(backend, ()) == []


def test_swarm_refuses_an_image_that_cannot_stay_on_loopback(mnist_base_path: Path, tf_serving_like_image: str,
                                                            swarm: None) -> None:
    with pytest.raises(DeployError) as caught:
        SwarmBackend(mnist_base_path, warn=pytest.fail, image=tf_serving_like_image)
    assert caught.value.reason == "image" and "every interface" in caught.value.message


def test_an_image_that_is_not_there_is_a_clear_error(mnist_base_path: Path) -> None:
    require_docker()
    with pytest.raises(DeployError) as caught:
        DockerBackend(mnist_base_path, warn=pytest.fail, image="optdse-test/absent:none")
    assert caught.value.reason == "image"
    assert "optdse-test/absent:none is not on this machine and cannot be pulled" in caught.value.message


@pytest.mark.parametrize("park_idle", [True, False])
def test_local_replicas_a_trial_no_longer_needs_are_parked_for_the_next(mnist_base_path: Path, park_idle: bool) -> None:
    """Parked replicas get no load and are not measured; growing again takes them back
    (same processes, new limits) instead of starting TensorFlow again. Without parking
    they are stopped. Either way close() leaves nothing."""
    backend = LocalBackend(mnist_base_path, warn=pytest.fail, park_idle=park_idle)
    try:
        backend.apply(config(replicas=3))
        three = backend.replica_ids()
        backend.apply(config(replicas=1, cpus=1.0))
        assert backend.replica_ids() == three[:1]
        assert len(backend.usage().cpu_seconds) == 1
        idle = [pid for pid in three[1:] if psutil.pid_exists(int(pid))]
        assert idle == (list(three[1:]) if park_idle else [])
        endpoints = backend.apply(config(replicas=3, cpus=1.5, memory_mb=900))
        assert (set(backend.replica_ids()) == set(three)) is park_idle
        for endpoint in endpoints:
            wait_available(endpoint.target, "mnist", timeout=5)
        if backend.driver is not None and backend.driver.version == 1:
            for replica in backend.replicas:
                assert replica.cgroup is not None
                assert (replica.cgroup.cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "150000"
                assert (replica.cgroup.memory_dir / "memory.limit_in_bytes").read_text().strip() == str(900 * 2**20)
        every = set(three) | set(backend.replica_ids())
    finally:
        backend.close()
    assert leftovers(backend, tuple(every)) == []


def test_clean_leaves_a_live_run_alone_even_when_its_state_is_elsewhere(
        mnist_base_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`optdse clean` with another OPTDSE_STATE_DIR (another user, a test) sees this run's
    cgroups but not its record: the run id names its owner, which is alive, so nothing of
    it is stopped."""
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "mine"))
    backend = LocalBackend(mnist_base_path, warn=pytest.fail)
    try:
        backend.apply(config())
        (pid,) = backend.replica_ids()
        env = {**os.environ, "OPTDSE_STATE_DIR": str(tmp_path / "theirs")}
        cleaned = subprocess.run([*optdse_command(), "clean"], capture_output=True, text=True, env=env,
                                 timeout=120, check=False)
        assert cleaned.returncode == 0, cleaned.stderr
        assert pid not in cleaned.stdout
        assert psutil.pid_exists(int(pid)) and backend.replicas[0].alive()
        if backend.driver is not None:
            assert all((tree / "optdse" / backend.run.run_id).exists() for tree in backend.driver.trees())
    finally:
        backend.close()
