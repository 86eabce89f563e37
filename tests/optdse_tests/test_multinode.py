"""The swarm backend on a real multi-node Swarm: two Docker engines in namespaces of their own
(tests/multinode.py), one the manager, one a worker labelled for replicas. optdse runs in the
manager's network namespace, as an operator's manager host would run it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from optdse.deploy.swarm import SERVE_LABEL
from tests.multinode import Bed, BedUnavailable
from tests.optdse_tests.conftest import require_docker
from tests.serving_process import optdse_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    try:
        made = Bed.start(2)
    except BedUnavailable as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no multi-node bed here: {error}")
    try:
        yield made
    finally:
        made.stop()
    # The bed leaves nothing: no engine, namespace, link, mount or directory.
    assert all(node.process is not None and node.process.poll() is not None for node in made.nodes)
    assert "optdse-bed" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert str(made.root) not in Path("/proc/self/mounts").read_text() and not made.root.exists()


def test_the_bed_is_a_two_node_swarm_on_addresses_of_its_own(bed: Bed) -> None:
    nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in bed.manager.client().nodes.list()}
    assert set(nodes) == {"optdse-bed-n1", "optdse-bed-n2"}
    assert nodes["optdse-bed-n2"]["Status"]["Addr"] == "169.254.77.2"
    assert all(n["Status"]["State"] == "ready" for n in nodes.values())
    # The addresses exist only in the bed's namespaces: not on this host's interfaces.
    host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "169.254.77." not in host


@pytest.fixture(scope="module")
def on_worker(bed: Bed, serving_image: str) -> list[str]:
    """The bed's worker labelled for replicas and the serving image on every node; the command
    prefix that runs optdse on the manager (its namespace, its engine) against that worker."""
    require_docker()
    worker = bed.nodes[1]
    bed.label(worker, SERVE_LABEL, "true")
    bed.load_image(serving_image, bed.nodes)  # ~3 GB each: the manager inspects it, the worker runs it
    return [*bed.manager.enter(), "env", f"DOCKER_HOST={bed.manager.socket_url}", *optdse_command(), "measure",
            "--backend", "swarm", "--image", serving_image, "--swarm-engine", f"{worker.name}={worker.socket_url}"]


def run(command: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600, check=False)


def left_on(bed: Bed) -> list[str]:
    """What optdse left on any engine of the bed: services, and containers of its runs."""
    return ([s.name for s in bed.manager.client().services.list()]
            + [c.name for node in bed.nodes for c in node.client().containers.list(all=True, filters={"label": "optdse.run"})])


def test_a_measurement_places_replicas_on_the_labelled_worker_and_reads_its_cpu(
        bed: Bed, on_worker: list[str], project: Path) -> None:
    worker = bed.nodes[1]
    # Several seconds of load: the stats API the worker's CPU is read through updates about once a second.
    done = run([*on_worker, "--replicas", "2", "--cpus", "0.5", "--memory", "512", "--threads", "2",
                "--requests", "100000", "--duration", "4", "--json"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert set(figures["acu_by_node"]) == {worker.name}, figures["acu_by_node"]
    # acu_by_node is rounded to 4 decimals per node: the same tolerance as test_swarm_nodes.py.
    assert sum(figures["acu_by_node"].values()) == pytest.approx(figures["acu_cores"], rel=0.01, abs=1e-3)
    assert figures["errors"] == 0 and figures["acu_cores"] > 0
    assert worker.address in done.stderr  # the warning: the load goes over the nodes' network
    assert left_on(bed) == []


def test_a_chaos_kill_and_an_oom_on_the_worker_node_are_reported_as_such(
        bed: Bed, on_worker: list[str], project: Path) -> None:
    """Both need the worker's own engine: its containers exist only there."""
    killed = run([*on_worker, "--replicas", "2", "--threads", "2", "--requests", "100000", "--duration", "3",
                  "--kill-replica-after", "1", "--json"], project)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert json.loads(killed.stdout)["replicas_killed"] == ["task 2"]
    oom = run([*on_worker, "--replicas", "1", "--memory", "64", "--requests", "100"], project)
    assert oom.returncode != 0 and "killed by its 64 MB memory limit" in oom.stderr, oom.stdout + oom.stderr
    assert left_on(bed) == []
