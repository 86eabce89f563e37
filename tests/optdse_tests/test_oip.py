"""The Open Inference Protocol's bodies and answers (optdse/oip.py), Triton's knobs and its
model configuration, and the study file's `server` (pure logic: the fast layer). A real
tritonserver reads them in test_triton.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optdse.config import ServerConfig
from optdse.knobs import KnobError, ServerKnobs, TritonKnobs
from optdse.models import builtin
from optdse.oip import grpc_request, grpc_rows, rest_body, rest_rows, service_pb2
from optdse.payloads import build_payload
from optdse.space import distributions, suggest
from optdse.spec import SpecError
from optdse.study import start_points
from optdse.study_file import load_study
from tests.optdse_tests.conftest import write_study

TRITON_SPACE = """\
parameters:
  replicas:  {low: 1, high: 2}
  cpus:      {low: 0.2, high: 1.0, step: 0.1}
  memory_mb: {value: 1000}
server:
  instance_count:   {low: 1, high: 3}
  max_batch_size:   {value: 8}
  dynamic_batching: {choices: [0, 1]}
  max_queue_delay_microseconds: {low: 0, high: 2000, step: 250}
"""


def test_a_grpc_request_carries_each_input_s_name_type_shape_and_raw_bytes() -> None:
    images = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    jpegs = np.array([b"\xff\xd8ab", b"c"], dtype=object)
    request = service_pb2().ModelInferRequest.FromString(grpc_request("m", {"images": images, "jpeg": jpegs}))
    assert request.model_name == "m"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("images", "FP32", [2, 3]),
                                                                            ("jpeg", "BYTES", [2])]
    assert np.frombuffer(request.raw_input_contents[0], np.float32).tolist() == images.reshape(-1).tolist()
    assert request.raw_input_contents[1] == b"\x04\x00\x00\x00\xff\xd8ab\x01\x00\x00\x00c"  # 4-byte lengths


def test_a_rest_body_is_flat_row_major_data_with_the_shape_beside_it() -> None:
    body = json.loads(rest_body({"tokens": np.array([[5, 6, 7]], dtype=np.int32)}))
    assert body == {"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT32", "data": [5, 6, 7]}]}
    images = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    (tensor,) = json.loads(rest_body({"images": images}))["inputs"]
    assert np.array(tensor["data"], np.float32).tolist() == images.reshape(-1).tolist()  # exact float32s
    with pytest.raises(ValueError, match="use protocol: grpc"):
        rest_body({"jpeg": np.array([b"\xff\xd8"], dtype=object)})


def test_the_row_check_reads_each_output_s_first_dimension() -> None:
    response = service_pb2().ModelInferResponse(model_name="m")
    response.outputs.add(name="scores", datatype="FP32", shape=[3, 10])
    assert grpc_rows(response.SerializeToString()) == {3}
    assert rest_rows(b'{"outputs": [{"name": "scores", "shape": [4, 10], "data": []}]}') == {4}
    assert rest_rows(b'{"error": "bad"}') == set() and rest_rows(b"not json") == set()


def test_payloads_speak_the_server_s_api() -> None:
    grpc_v2 = build_payload("mnist", 3, "grpc", "v2")
    assert grpc_v2.api == "v2" and grpc_v2.path == "" and grpc_v2.batch == 3
    assert service_pb2().ModelInferRequest.FromString(grpc_v2.body).inputs[0].shape == [3, 784]
    rest_v2 = build_payload("mnist", 2, "rest", "v2")
    assert rest_v2.path == "/v2/models/mnist/infer" and json.loads(rest_v2.body)["inputs"][0]["shape"] == [2, 784]
    assert build_payload("mnist", 2, "rest").path == "/v1/models/mnist:predict"  # TF Serving's, as before


def test_triton_knobs_refuse_what_triton_would() -> None:
    assert TritonKnobs().describe() == "1 instance" and TritonKnobs().set() == {}
    knobs = TritonKnobs(instance_count=2, max_batch_size=8, dynamic_batching=True, max_queue_delay_microseconds=500)
    assert knobs.describe() == "2 instances, max batch 8, dynamic batching (delay 500 us)"
    with pytest.raises(KnobError, match="dynamic_batching: needs max_batch_size >= 1"):
        TritonKnobs(dynamic_batching=True)
    with pytest.raises(KnobError, match="max_queue_delay_microseconds: a dynamic batching parameter"):
        TritonKnobs(max_batch_size=8, max_queue_delay_microseconds=100)
    with pytest.raises(KnobError, match="preferred_batch_size: must be <= max_batch_size"):
        TritonKnobs(max_batch_size=4, dynamic_batching=True, preferred_batch_size=8)
    with pytest.raises(ValueError, match="are not triton's knobs"):
        ServerConfig(model=builtin("mnist"), replicas=1, cpus=1, memory_mb=512, server="triton", knobs=ServerKnobs())


def test_a_triton_study_suggests_triton_s_knobs_and_delay_only_with_dynamic_batching(tmp_path: Path) -> None:
    import optuna

    study = load_study(str(write_study(tmp_path, "tri", space=TRITON_SPACE, server="triton",
                                       workload="{threads: 4, file_size: 1}", enqueue=None,
                                       sampler="{name: tpe, seed: 1, start: one-factor}")))
    assert {"instance_count", "dynamic_batching", "max_queue_delay_microseconds"} <= set(distributions(study))
    optuna_study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=2))
    seen = set()
    for _ in range(12):
        trial = optuna_study.ask()
        config = suggest(trial, study)
        knobs = config.server.knobs
        assert config.server.server == "triton" and config.server.api == "v2" and isinstance(knobs, TritonKnobs)
        assert knobs.max_batch_size == 8
        assert ("max_queue_delay_microseconds" in trial.params) == knobs.dynamic_batching
        seen.add(knobs.dynamic_batching)
        optuna_study.tell(trial, [1.0, 1.0])
    assert seen == {True, False}
    varied_delay = [p for p in start_points(study) if "max_queue_delay_microseconds" in p]
    assert varied_delay and all(p["dynamic_batching"] for p in varied_delay)  # turned on to vary it


@pytest.mark.parametrize(("overrides", "space", "where", "message"), [
    ({"server": "triton", "backend": "docker"}, TRITON_SPACE, "studies", "server: triton runs on the local backend only"),
    ({"server": "tensorflow-serving"}, None, "studies", "server: tensorflow-serving runs from a TF Serving image"),
    ({"server": "triton"}, None, "search_spaces", "not a knob of triton"),  # the default space's are TF Serving's
    ({}, TRITON_SPACE, "search_spaces", "server.instance_count: not a knob of optdse-serve"),
    ({"server": "triton"}, TRITON_SPACE.replace("  dynamic_batching: {choices: [0, 1]}\n", ""), "search_spaces",
     "server.max_queue_delay_microseconds: a dynamic batching parameter; it needs dynamic_batching"),
])
def test_a_server_and_its_knobs_must_agree(tmp_path: Path, overrides: dict[str, str], space: str | None, where: str,
                                           message: str) -> None:
    from tests.optdse_tests.conftest import SPACE

    body = SPACE + "server:\n  enable_batching: {choices: [0, 1]}\n" if space is None else space
    path = write_study(tmp_path, "bad", space=body, workload="{threads: 4, file_size: 1}" if space else None,
                       enqueue=None, **overrides)
    with pytest.raises(SpecError) as caught:
        load_study(str(path))
    assert str(caught.value).startswith(str(tmp_path / where)) and message in str(caught.value), caught.value
