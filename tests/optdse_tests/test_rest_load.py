"""The load generator over TF Serving's REST API (`protocol: rest`), against real optdse-serve."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import pytest

from optdse.deploy.base import DeployError, Endpoint, free_port
from optdse.load import LoadPlan, run_load
from optdse.payloads import build_payload
from optdse.space import to_config
from optdse.study_file import load_study
from tests.optdse_tests.conftest import optdse, write_study
from tests.serving_process import ServerProcess


def rest_plan(server: ServerProcess, threads: int = 2, requests: int = 60, file_size: int = 3,
              **changes: object) -> LoadPlan:
    payload = build_payload("mnist", file_size, "rest")
    plan = LoadPlan(targets=(f"127.0.0.1:{server.rest_port}",), bodies=payload.bodies, batches=payload.batches,
                    threads=threads, requests=requests, processes=1, deadline_s=10, protocol="rest", path=payload.path)
    return LoadPlan(**{**plan.__dict__, **changes})


@pytest.mark.slow
def test_measure_over_rest_answers_every_request_and_says_so(project: Path) -> None:
    done = optdse(project, "measure", "--protocol", "rest", "--threads", "2", "--file-size", "2",
                  "--requests", "200", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["protocol"] == "rest" and figures["config"].endswith("over REST")
    assert figures["requests_sent"] == 200 and figures["errors"] == 0 and figures["error_codes"] == {}
    assert figures["art_ms"] > 0 and figures["throughput_rps"] > 0
    assert figures["request_bytes"] == len(build_payload("mnist", 2, "rest").body)  # the JSON, not the protobuf


@pytest.mark.slow
def test_rest_requests_are_answered_and_their_rows_checked(server: ServerProcess) -> None:
    result = run_load(rest_plan(server, threads=3, requests=90))
    assert len(result.send) == 90 and result.ok.all() and result.error_codes == {}
    lying = run_load(rest_plan(server, threads=1, requests=5, batches=(4,)))  # the server answers 3 rows
    assert lying.error_codes == {"BAD_RESPONSE": 1} and lying.ok.sum() == 4


@pytest.mark.parametrize(("changes", "code"), [
    ({"bodies": (b'{"inputs": {"images": "not numbers"}}',)}, "HTTP_400"),
    ({"bodies": (b'{"inputs": [[0.5, 0.5',)}, "HTTP_400"),  # not JSON
    ({"path": "/v1/models/no-such-model:predict"}, "HTTP_404"),
])
@pytest.mark.slow
def test_a_bad_rest_request_is_counted_by_its_http_status(server: ServerProcess, changes: dict[str, object],
                                                          code: str) -> None:
    result = run_load(rest_plan(server, **changes))
    assert len(result.send) == 60 and not result.ok.any()
    assert result.error_codes == {code: 60}  # every request answered and counted; the connection survives


@pytest.mark.slow
def test_a_dead_rest_target_is_unavailable_and_the_live_one_still_answers(server: ServerProcess) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nobody listens: every request there fails
    result = run_load(rest_plan(server, requests=100, targets=(f"127.0.0.1:{server.rest_port}", dead)))
    assert result.ok.sum() == 50 and result.error_codes == {"UNAVAILABLE": 50}


@pytest.mark.slow
def test_a_rest_target_that_never_answers_runs_out_of_time(server: ServerProcess) -> None:
    """A real listening socket that accepts connections (the kernel does) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        began = time.perf_counter()
        result = run_load(rest_plan(server, threads=1, requests=2, targets=(target,), deadline_s=0.3))
    assert result.error_codes == {"DEADLINE_EXCEEDED": 2}
    assert all(0.25 < latency < 2.0 for latency in result.latency)  # each waited out its deadline
    assert time.perf_counter() - began < 30


@pytest.mark.slow
def test_a_bad_protocol_in_a_study_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write_study(tmp_path, "bad", protocol="http")
    done = optdse(tmp_path, "study", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert f"{path}: protocol: Input should be 'grpc' or 'rest' (got 'http')" in done.stderr


def test_the_study_files_protocol_reaches_the_client(tmp_path: Path) -> None:
    study = load_study(str(write_study(tmp_path, "rest", protocol="rest")))
    config = to_config({"threads": 2, "file_size": 1, "replicas": 1, "cpus": 1.0, "memory_mb": 1000}, study)
    assert config.client.protocol == "rest"
    assert load_study(str(write_study(tmp_path, "default"))).spec.protocol == "grpc"


@pytest.mark.slow
def test_measure_rejects_an_unknown_protocol(project: Path) -> None:
    done = optdse(project, "measure", "--protocol", "http")
    assert done.returncode == 2 and "--protocol: invalid choice: 'http'" in done.stderr


def test_a_replica_without_a_rest_port_fails_a_rest_trial_with_a_reason() -> None:
    grpc_only = Endpoint(replica=0, host="127.0.0.1", port=8500)
    assert grpc_only.target_for("grpc") == "127.0.0.1:8500"
    with pytest.raises(DeployError) as caught:
        grpc_only.target_for("rest")
    assert caught.value.reason == "rest" and "no REST port" in caught.value.message


def test_rest_bodies_carry_the_same_tensors_as_the_protobuf() -> None:
    """Numbers in their shortest float32 form read back exactly; bytes travel as b64."""
    import numpy as np

    from optdse.protos import protos

    grpc = protos().predict_pb2.PredictRequest.FromString(build_payload("mnist", 2).body)
    rest = json.loads(build_payload("mnist", 2, "rest").body)
    assert rest["signature_name"] == grpc.model_spec.signature_name == "predict_images"
    sent = np.frombuffer(grpc.inputs["images"].tensor_content, dtype=np.float32).reshape(2, 784)
    assert np.array_equal(np.array(rest["inputs"]["images"], dtype=np.float32), sent)
    jpeg = json.loads(build_payload("inception", 64, "rest").body)["inputs"]["images"]
    assert len(jpeg) == 1 and base64.b64decode(jpeg[0]["b64"]).startswith(b"\xff\xd8")  # a JPEG's magic
