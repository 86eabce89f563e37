"""The swarm backend on a real multi-node Swarm: three Docker engines in namespaces of their own
(tests/multinode.py), one the manager, two workers labelled for replicas. optdse runs in the
manager's network namespace, as an operator's manager host would run it (unlabelled, so the
load generator does not share a node with replicas)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from optdse.deploy.swarm_nodes import SERVE_LABEL
from tests.multinode import Bed, BedUnavailable
from tests.optdse_tests.conftest import SERVING_IMAGE, require_docker
from tests.processes import stop_process
from tests.serving_process import optdse_command

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    try:
        made = Bed.start(3, seed=SERVING_IMAGE)  # the image's layers linked in, where it can be
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


def test_the_bed_is_a_three_node_swarm_on_addresses_of_its_own(bed: Bed) -> None:
    nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in bed.manager.client().nodes.list()}
    assert set(nodes) == {"optdse-bed-n1", "optdse-bed-n2", "optdse-bed-n3"}
    assert [nodes[w.name]["Status"]["Addr"] for w in bed.workers] == ["169.254.77.2", "169.254.77.3"]
    assert all(n["Status"]["State"] == "ready" for n in nodes.values())
    # The addresses exist only in the bed's namespaces: not on this host's interfaces.
    host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "169.254.77." not in host


@pytest.fixture(scope="module")
def image_on_bed(bed: Bed, serving_image: str) -> str:
    """The serving image in every engine of the bed (the manager inspects it, the workers run
    it): seeded by the bed, or else loaded (~3 GB each)."""
    require_docker()
    bed.load_image(serving_image, bed.nodes)
    return serving_image


def on_manager(bed: Bed, *args: str) -> list[str]:
    """The command that runs optdse on the manager: in its network namespace, with its engine."""
    return [*bed.manager_command(), *optdse_command(), *args]


@pytest.fixture(scope="module")
def on_workers(bed: Bed, image_on_bed: str) -> list[str]:
    """Both workers labelled for replicas; the command that measures there from the manager."""
    for worker in bed.workers:
        bed.label(worker, SERVE_LABEL, "true")
    return on_manager(bed, "measure", "--backend", "swarm", "--image", image_on_bed, *bed.engine_options())


def run(command: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600, check=False)


def left_on(bed: Bed) -> list[str]:
    """What optdse left on any engine of the bed: services, configs, and containers of its runs."""
    manager = bed.manager.client()
    return ([s.name for s in manager.services.list()] + [c.name for c in manager.configs.list()]
            + [c.name for node in bed.nodes for c in node.client().containers.list(all=True, filters={"label": "optdse.run"})])


def test_a_node_labelled_after_the_service_was_made_gets_its_own_address(
        bed: Bed, image_on_bed: str, project: Path, mnist_base_path: Path) -> None:
    """The service starts with one replica on the one labelled worker; the other is labelled
    next, and the second replica lands there listening on its own swarm address, which the
    update must hand it (a task without its node's address would listen on loopback, out of
    the manager's reach, and never become ready)."""
    first, later = bed.workers
    bed.label(first, SERVE_LABEL, "true")
    bed.label(later, SERVE_LABEL, "false")
    try:
        done = run([*bed.manager_command(), sys.executable, "-c",
                    SCALE_ONTO_A_NEWLY_LABELLED_NODE, str(mnist_base_path), image_on_bed,
                    *(f"{worker.name}={worker.socket_url}" for worker in bed.workers)], project)
    finally:
        bed.label(later, SERVE_LABEL, "true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == [[first.address], [first.address, later.address]], done.stderr
    assert left_on(bed) == []


#: Run in the manager's namespace: apply one replica, label the second worker, apply two; print
#: each apply's endpoint hosts (apply returns once every replica answered AVAILABLE there).
SCALE_ONTO_A_NEWLY_LABELLED_NODE = """
import json, sys
from pathlib import Path
from optdse.config import ServerConfig
from optdse.deploy.swarm import SwarmBackend
from optdse.deploy.swarm_nodes import SERVE_LABEL
from optdse.models import builtin

base_path, image, *engines = sys.argv[1:]
engines = dict(engine.split("=", 1) for engine in engines)
backend = SwarmBackend(Path(base_path), warn=lambda text: print(text, file=sys.stderr), image=image,
                       engines=engines, ready_timeout=90)
hosts = []
try:
    for replicas in (1, 2):
        endpoints = backend.apply(ServerConfig(model=builtin("mnist"), replicas=replicas, cpus=0.5, memory_mb=1000))
        hosts.append(sorted(endpoint.host for endpoint in endpoints))
        for node in backend.client.nodes.list():
            node.update({**node.attrs["Spec"], "Labels": {SERVE_LABEL: str(node.attrs["Description"]["Hostname"] in engines).lower()}})
finally:
    backend.close()
print(json.dumps(hosts))
"""


def test_a_measurement_spreads_replicas_over_the_labelled_workers_and_reads_each_one_s_cpu(
        bed: Bed, on_workers: list[str], project: Path) -> None:
    # Several seconds of load: the stats API the workers' CPU is read through updates about once a second.
    done = run([*on_workers, "--replicas", "4", "--cpus", "0.25", "--memory", "512", "--threads", "2",
                "--requests", "100000", "--duration", "4", "--json"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert set(figures["acu_by_node"]) == {worker.name for worker in bed.workers}, figures["acu_by_node"]
    assert figures["replicas_by_node"] == {worker.name: 2 for worker in bed.workers}  # Swarm spreads them
    assert all(acu > 0 for acu in figures["acu_by_node"].values())
    # acu_by_node is rounded to 4 decimals per node: the same tolerance as test_swarm_nodes.py.
    assert sum(figures["acu_by_node"].values()) == pytest.approx(figures["acu_cores"], rel=0.01, abs=1e-3)
    assert figures["errors"] == 0
    assert all(worker.address in done.stderr for worker in bed.workers)  # the warning: the load crosses the network
    assert left_on(bed) == []


def test_a_chaos_kill_and_an_oom_on_a_worker_node_are_reported_as_such(
        bed: Bed, on_workers: list[str], project: Path) -> None:
    """Both need the worker's own engine: its containers exist only there."""
    killed = run([*on_workers, "--replicas", "2", "--threads", "2", "--requests", "100000", "--duration", "3",
                  "--kill-replica-after", "1", "--json"], project)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert json.loads(killed.stdout)["replicas_killed"] == ["task 2"]
    oom = run([*on_workers, "--replicas", "1", "--memory", "64", "--requests", "100"], project)
    assert oom.returncode != 0 and "killed by its 64 MB memory limit" in oom.stderr, oom.stdout + oom.stderr
    assert left_on(bed) == []


def test_a_port_held_on_a_worker_moves_the_service_to_a_block_free_there(
        bed: Bed, on_workers: list[str], project: Path) -> None:
    """The first block (20001-20099) is free on the manager, where optdse runs, but a program on
    one worker listens on its first port: a task there could not bind it. (Two replicas: Swarm
    spreads them, one a worker.)"""
    worker = bed.workers[0]
    holder = subprocess.Popen([*worker.enter(), sys.executable, "-c", HOLD_A_PORT, worker.address, "20001"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "listening"
        done = run([*on_workers, "--replicas", "2", "--requests", "200", "--json"], project)
    finally:
        stop_process(holder, signal.SIGTERM, grace_s=10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["errors"] == 0
    block = re.search(r"ports (\d+)-(\d+)", done.stderr)
    assert block is not None and int(block[1]) > 20001, done.stderr
    assert left_on(bed) == []


#: A listener on ADDRESS:PORT (in the worker's namespace), until stopped.
HOLD_A_PORT = """
import socket, sys, time
with socket.socket() as sock:
    sock.bind((sys.argv[1], int(sys.argv[2])))
    sock.listen()
    print("listening", flush=True)
    time.sleep(300)
"""


def bed_study(project: Path, name: str, first_point: str) -> None:
    """studies/mnist-pareto.yaml and its search space in `project`, as NAME, starting from
    `first_point` (the shipped file starts from one replica)."""
    (project / "studies").mkdir(exist_ok=True)
    shutil.copytree(REPO / "search_spaces", project / "search_spaces", dirs_exist_ok=True)
    text = (REPO / "studies" / "mnist-pareto.yaml").read_text()
    first = re.search(r"^  - \{replicas.*\}$", text, re.MULTILINE)
    assert first is not None
    (project / "studies" / f"{name}.yaml").write_text(text.replace(first[0], f"  - {first_point}"))


def test_a_study_on_the_bed_measures_every_trial_on_the_workers(
        bed: Bed, on_workers: list[str], image_on_bed: str, project: Path) -> None:
    """optdse study mnist-pareto, started from two replicas (one a worker), with --repeats 2:
    each trial's ACU is the workers', each read through its own engine, and the nodes sum to
    the objective."""
    bed_study(project, "mnist-pareto", "{replicas: 2, cpus: 0.5, memory_mb: 1000, file_size: 1}")
    storage = f"sqlite:///{project / 'bed.db'}"
    done = run(on_manager(bed, "study", "mnist-pareto", "--backend", "swarm", "--image", image_on_bed,
                          *bed.engine_options(), "--storage", storage, "--trials", "3", "--repeats", "2",
                          "--duration", "3"), project)
    assert done.returncode == 0, done.stdout + done.stderr
    states = optuna.trial.TrialState
    trials = optuna.load_study(study_name="mnist-pareto", storage=storage).trials
    assert {t.state for t in trials} == {states.COMPLETE, states.WAITING}  # the rest of the start points wait
    trials = [t for t in trials if t.state == states.COMPLETE]
    assert len(trials) == 3
    workers = {worker.name for worker in bed.workers}
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.params["replicas"] == 2 and attrs["repeats"] == 2
        assert set(attrs["acu_by_node"]) == workers and attrs["replicas_by_node"] == dict.fromkeys(workers, 1)
        assert attrs["accounting"] == "; ".join(f"{name}: docker engine stats API" for name in sorted(workers))
        assert sum(attrs["acu_by_node"].values()) == pytest.approx(trial.values[1], rel=0.01, abs=1e-3)
    assert left_on(bed) == []


def test_optdse_clean_after_a_killed_study_leaves_nothing_on_any_engine(
        bed: Bed, on_workers: list[str], image_on_bed: str, project: Path) -> None:
    """SIGKILL: the study cannot remove its service; `optdse clean` on the manager, given the
    workers' engines, removes the service there and waits for its containers on the workers."""
    bed_study(project, "killed", "{replicas: 2, cpus: 0.5, memory_mb: 1000, file_size: 1}")
    study = subprocess.Popen(on_manager(bed, "study", "killed", "--backend", "swarm", "--image", image_on_bed,
                                        *bed.engine_options(), "--storage", f"sqlite:///{project / 'k.db'}"),
                             cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while sum(len(worker.client().containers.list(filters={"label": "optdse.run", "status": "running"}))
                  for worker in bed.workers) < 2:
            assert study.poll() is None and time.monotonic() < deadline, "the study never started its replicas"
            time.sleep(0.5)
    finally:
        stop_process(study, signal.SIGKILL, grace_s=10)
    assert left_on(bed) != []  # what the killed study left
    cleaned = run(on_manager(bed, "clean", *bed.engine_options()), project)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert "cleaned 1 stopped run(s)" in cleaned.stdout
    assert left_on(bed) == []
