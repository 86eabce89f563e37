"""The swarm backend's multi-node machinery, on the single-node swarm this machine has: the
serving label becomes a placement constraint, each task binds the address listed for its node
(loopback on one node), and ACU is reported per node, read through a node's Docker engine
(the stats API) when one is given for it. Several real nodes are not available here."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from optdse.config import ServerConfig
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.base import wait_available
from optdse.deploy.engine import container_cgroup, docker_client
from optdse.deploy.swarm import SwarmBackend
from optdse.deploy.swarm_nodes import (PORT_RANGE, REST_OFFSET, SERVE_LABEL, EngineStats, block_ports,
                                      free_base_port, swarm_nodes)
from optdse.models import builtin
from tests.optdse_tests.conftest import listens_on_loopback_only, optdse

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

LOCAL_ENGINE = "unix:///var/run/docker.sock"


def test_a_port_block_is_free_only_if_every_replica_could_listen_in_it() -> None:
    """A service may grow to REST_OFFSET - 1 replicas: a port held anywhere in that range,
    here the 40th replica's REST port, moves the service to the next block."""
    base = free_base_port()
    ports = block_ports(base)
    assert len(ports) == 2 * (REST_OFFSET - 1) and ports[-1] == base + 2 * REST_OFFSET - 1
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + REST_OFFSET + 40))
        holder.listen()
        moved = free_base_port()
    assert moved != base and moved in PORT_RANGE


@pytest.fixture
def labelled_node(swarm: None) -> Iterator[str]:
    """This swarm's one node, labelled for replicas; its labels are restored afterwards."""
    client = docker_client()
    (node,) = client.nodes.list()
    spec = node.attrs["Spec"]
    before = dict(spec.get("Labels", {}))
    node.update({**spec, "Labels": {**before, SERVE_LABEL: "true"}})
    yield node.attrs["Description"]["Hostname"]
    node.reload()
    node.update({**node.attrs["Spec"], "Labels": before})


def test_labelled_nodes_get_the_replicas_on_their_own_address(mnist_base_path: Path, labelled_node: str,
                                                            cgroup_driver: CgroupDriver,
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    (node,) = swarm_nodes(docker_client())
    assert node.serving and node.hostname == labelled_node
    backend = SwarmBackend(mnist_base_path, warn=pytest.fail, engines={labelled_node: LOCAL_ENGINE})
    try:
        endpoints = backend.apply(ServerConfig(model=builtin("mnist"), replicas=2, cpus=0.5, memory_mb=1000))
        placement = backend.service.attrs["Spec"]["TaskTemplate"]["Placement"]
        assert placement["Constraints"] == [f"node.labels.{SERVE_LABEL}==true"]
        env = backend.service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
        assert f"NODE_ADDRESSES={node.id}=127.0.0.1" in env  # one node: loopback, through the same mapping
        for endpoint in endpoints:
            assert endpoint.host == "127.0.0.1"
            wait_available(endpoint.target, "mnist", timeout=5)
            assert listens_on_loopback_only(endpoint.port)
        # The engine's stats API and this host's cgroup read the same counter of each task.
        for _, container_id, meter in backend._tasks:  # noqa: SLF001
            assert isinstance(meter, EngineStats)
            through_engine, through_cgroup = meter.cpu_seconds(), container_cgroup(container_id).cpu_seconds()
            assert through_engine > 0 and abs(through_engine - through_cgroup) < 0.05 + 0.02 * through_cgroup
            assert meter.memory_bytes() > 0
        assert backend.accounting == f"{labelled_node}: docker engine stats API"
        assert backend.usage().nodes == (labelled_node, labelled_node)
    finally:
        backend.close()


def test_a_sample_read_through_an_engine_is_stamped_when_its_figures_were_read(
        mnist_base_path: Path, labelled_node: str, cgroup_driver: CgroupDriver, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """The engine's stats call answers at its next collection tick, up to a second after it was
    asked. With the task burning its 0.5-core limit, a stamp off by d seconds shows as 0.5 d
    CPU-seconds against the task's cgroup read at the stamp; three samples must agree."""
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    backend = SwarmBackend(mnist_base_path, warn=pytest.fail, engines={labelled_node: LOCAL_ENGINE})
    try:
        backend.apply(ServerConfig(model=builtin("mnist"), replicas=1, cpus=0.5, memory_mb=1000))
        (container_id,) = backend.replica_ids()
        docker_client().containers.get(container_id).exec_run(["timeout", "20", "sh", "-c", "while :; do :; done"],
                                                             detach=True)
        cgroup = container_cgroup(container_id)
        time.sleep(1)  # the loop is running at the limit
        for _ in range(3):
            sample = backend.usage()
            direct, now = cgroup.cpu_seconds(), time.perf_counter()
            assert sample.cpu_seconds[0] == pytest.approx(direct - 0.5 * (now - sample.time), abs=0.05)
    finally:
        backend.close()


def test_measure_reports_acu_per_node(project: Path, labelled_node: str, cgroup_driver: CgroupDriver) -> None:
    done = optdse(project, "measure", "--backend", "swarm", "--replicas", "2", "--threads", "2", "--requests", "600",
                  "--swarm-engine", f"{labelled_node}={LOCAL_ENGINE}", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert list(figures["acu_by_node"]) == [labelled_node]
    assert figures["acu_by_node"][labelled_node] == pytest.approx(figures["acu_cores"], rel=0.01, abs=1e-3)
    assert figures["acu_cores"] > 0 and figures["accounting"] == f"{labelled_node}: docker engine stats API"


def test_a_bad_swarm_engine_is_one_clear_line(project: Path) -> None:
    done = optdse(project, "measure", "--backend", "swarm", "--swarm-engine", "no-url")
    assert done.returncode == 2 and "must be NODE=URL" in done.stderr and "Traceback" not in done.stderr


def test_other_backends_report_their_acu_under_this_host(project: Path, cgroup_driver: CgroupDriver) -> None:
    done = optdse(project, "measure", "--threads", "2", "--requests", "300", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["acu_by_node"] == {socket.gethostname(): pytest.approx(figures["acu_cores"], abs=1e-3)}
    assert figures["replicas_by_node"] == {socket.gethostname(): 1}
