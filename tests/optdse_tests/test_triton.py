"""NVIDIA Triton as a replica: a real tritonserver (installed by `optdse triton install`, as
.ci/run does) under the local backend. Its instance count, batching settings and CPU/memory
limits reach it and show in the measurements; the Open Inference Protocol's REST and gRPC
paths carry the load; a study runs, a failed configuration is recorded with its reason, and
nothing is left after the end, a failure or Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import optuna
import psutil
import pytest
from optuna.trial import TrialState

from optdse.config import ClientConfig, Config, ServerConfig
from optdse.deploy.base import DeployError
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.local import LocalBackend
from optdse.knobs import TritonKnobs
from optdse.models import builtin
from optdse.objective import measure
from optdse.oip import INFER_METHOD, grpc_request
from optdse.triton.install import TritonMissing, find
from tests.optdse_tests.conftest import listens_on_loopback_only, optdse, write_study
from tests.serving_process import optdse_command

pytestmark = pytest.mark.slow  # the real-system layer

STUB = "triton_python_backend_stub"


@pytest.fixture(scope="module", autouse=True)
def triton_installed() -> None:
    try:
        find()
    except TritonMissing as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


def triton(replicas: int = 1, cpus: float = 0.5, memory_mb: int = 1024, **knobs: int | bool) -> ServerConfig:
    return ServerConfig(model=builtin("mnist"), replicas=replicas, cpus=cpus, memory_mb=memory_mb, server="triton",
                        knobs=TritonKnobs(**knobs))  # type: ignore[arg-type]


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def processes(backend: LocalBackend) -> tuple[psutil.Process, list[psutil.Process]]:
    """The one replica's tritonserver and its backend stubs (one per model instance)."""
    (replica,) = backend.replicas
    server = psutil.Process(replica.process.pid)
    return server, [p for p in server.children(recursive=True) if p.name() == STUB]


def load(threads: int = 8, protocol: str = "grpc") -> ClientConfig:
    return ClientConfig(threads=threads, file_size=1, requests=1500, protocol=protocol)  # type: ignore[arg-type]


def test_instances_batching_and_limits_reach_tritonserver_and_show_in_the_measurements(local: LocalBackend) -> None:
    server = triton(cpus=0.5, memory_mb=1024, instance_count=2, max_batch_size=8, dynamic_batching=True,
                    max_queue_delay_microseconds=2000)
    (endpoint,) = local.apply(server)
    assert listens_on_loopback_only(endpoint.port) and listens_on_loopback_only(endpoint.rest_port)
    status, config = get(endpoint.rest_port, "/v2/models/mnist/config")  # what Triton itself loaded
    assert status == 200 and config["max_batch_size"] == 8, config
    assert config["instance_group"][0]["count"] == 2 and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    tritonserver, stubs = processes(local)
    assert len(stubs) == 2  # each instance its own process with its own TF session
    cgroup = local.replicas[0].cgroup
    assert {tritonserver.pid, *(s.pid for s in stubs)} <= set(cgroup.pids())  # ACU counts every instance
    if cgroup.driver.version == 1:
        quota = int((cgroup.cpu_dir / "cpu.cfs_quota_us").read_text()) / int((cgroup.cpu_dir / "cpu.cfs_period_us").read_text())
        limit = int((cgroup.memory_dir / "memory.limit_in_bytes").read_text())
    else:
        text = (cgroup.cpu_dir / "cpu.max").read_text().split()
        quota, limit = int(text[0]) / int(text[1]), int((cgroup.memory_dir / "memory.max").read_text())
    assert quota == pytest.approx(0.5) and limit == 1024 << 20

    batched = measure(local, Config(server=server, client=load()))
    assert batched.server == "triton" and batched.errors == 0 and "count: 2" in batched.server_config
    assert batched.acu_cores <= 0.5 * 1.1  # the quota shows in ACU
    assert batched.mem_peak_mb <= 1024
    stats = batched.server_stats
    assert stats["requests"] >= 1500 * 0.9 and stats["queue_ms"] > 0 and stats["compute_infer_ms"] > 0
    assert stats["requests_per_execution"] > 1.2  # the dynamic batcher merged concurrent requests

    alone = triton(cpus=0.5, memory_mb=1024, instance_count=1, max_batch_size=8)  # no dynamic batching
    (endpoint,) = local.apply(alone)
    tritonserver_again, stubs = processes(local)
    assert tritonserver_again.pid != tritonserver.pid and len(stubs) == 1  # new knobs: a new server
    unbatched = measure(local, Config(server=alone, client=load()))
    assert unbatched.errors == 0 and unbatched.server_stats["requests_per_execution"] == 1.0
    started = [tritonserver_again, *stubs]
    local.close()
    assert not [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_the_open_inference_protocol_over_rest_and_grpc(local: LocalBackend) -> None:
    server = triton(cpus=1.0, memory_mb=1024, max_batch_size=8)
    (endpoint,) = local.apply(server)
    for protocol in ("rest", "grpc"):
        measured = measure(local, Config(server=server, client=load(threads=2, protocol=protocol)))
        assert measured.errors == 0 and measured.requests_sent == 1500, protocol  # every answer had its row
        assert measured.server_stats["requests"] >= 1500 * 0.9

    # A wrong request gets the protocol's error with a message, and the server goes on serving.
    bad = json.dumps({"inputs": [{"name": "images", "shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}]}).encode()
    status, answer = get(endpoint.rest_port, "/v2/models/mnist/infer", "POST", bad)
    assert status == 400 and "images" in str(answer.get("error")), answer
    with grpc.insecure_channel(endpoint.target) as channel:
        call = channel.unary_unary(INFER_METHOD)
        with pytest.raises(grpc.RpcError) as wrong:
            call(grpc_request("mnist", {"images": np.zeros((1, 5), np.float32)}), timeout=10)
        assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert call(grpc_request("mnist", {"images": np.zeros((2, 784), np.float32)}), timeout=10)
    assert get(endpoint.rest_port, "/v2/models/mnist/ready")[0] == 200


def test_too_little_memory_for_the_instances_fails_with_oom_and_leaves_nothing(local: LocalBackend) -> None:
    with pytest.raises(DeployError) as failed:
        local.apply(triton(memory_mb=256, instance_count=2))  # each instance's TensorFlow holds ~190 MB
    assert failed.value.reason == "OOM"
    assert not local.replicas and not list(local.run.directory.glob("replica-*.json"))


def test_a_replica_stopped_while_its_instances_load_leaves_none_of_them(local: LocalBackend) -> None:
    """SIGTERM while the backend stubs load TensorFlow: tritonserver exits at once and its stubs
    would live on (measured: 30 s, until their own timeout); stopping the replica ends them too."""
    replica = local._new_replica("replica-0", triton(instance_count=2))
    tritonserver, stubs, deadline = psutil.Process(replica.process.pid), [], time.monotonic() + 60
    while not stubs:
        assert time.monotonic() < deadline
        stubs = [p for p in tritonserver.children(recursive=True) if _name(p) == STUB]
        time.sleep(0.02)
    replica.stop()
    assert not [p.pid for p in stubs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not replica.cgroup.pids() and not replica.cgroup.memory_dir.exists()


TRITON_SPACE = """\
parameters:
  replicas:  {value: 1}
  cpus:      {low: 0.3, high: 1.0, step: 0.1}
  memory_mb: {value: 1024}
server:
  instance_count:   {low: 1, high: 2}
  max_batch_size:   {value: 8}
  dynamic_batching: {choices: [0, 1]}
"""


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:  # gone meanwhile
        return ""


def _study(project: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project}/results/optdse.db")


def test_a_triton_study_runs_and_ctrl_c_leaves_nothing_running(project: Path, cgroup_driver: CgroupDriver) -> None:
    write_study(project, "tri", space=TRITON_SPACE, server="triton", workload="{threads: 4, file_size: 1}", trials=2,
                requests=300, enqueue="[{cpus: 1.0, instance_count: 1, dynamic_batching: 0}]")
    done = optdse(project, "study", "tri")
    assert done.returncode == 0, done.stdout + done.stderr
    trials = _study(project, "tri").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.user_attrs["server"] == "triton" and t.user_attrs["server_stats"]["requests"] > 0 for t in trials)
    assert "tritonserver --model-repository=" in trials[0].user_attrs["server_command"]

    output = (project / "interrupted.log").open("w")
    process = subprocess.Popen([*optdse_command(), "study", "tri", "--trials", "20"], cwd=project,
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[int, psutil.Process] = {}  # the replicas' tritonservers and, once they run, their stubs
    deadline = time.monotonic() + 120
    while STUB not in {_name(p) for p in started.values()}:
        assert time.monotonic() < deadline and process.poll() is None
        for record in (project / "state").glob("*/replica-*.json"):
            try:
                tritonserver = psutil.Process(json.loads(record.read_text())["pid"])
                started |= {p.pid: p for p in [tritonserver, *tritonserver.children(recursive=True)]}
            except (psutil.Error, OSError, ValueError):  # between start and exec, or being written
                pass
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(60) == 130, (project / "interrupted.log").read_text()[-3000:]
    assert not [pid for pid, p in started.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not list((project / "state").glob("*"))
    assert not [d for tree in cgroup_driver.trees() for d in (tree / "optdse").glob(f"{process.pid}-*")]
    states = [t.state for t in _study(project, "tri").trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states  # the interrupted trial, recorded
