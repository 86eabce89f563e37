"""The seed's other three servables: exported through the CLI, served by optdse-serve, and
called with the stock tensorflow-serving-api client, as TF Serving's own examples call it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from optdse.payloads import synthetic_jpeg
from serving.models import deepspeech, inception, nmt
from tests.serving_process import ServerProcess, export_model

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies


def _request(model: str, signature: str, inputs: dict[str, object], dtype: tf.DType | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    return request


# model -> (a request of two inputs, the outputs and their shapes expected)
CASES = {
    "inception": (lambda: _request("inception", inception.SIGNATURE,
                                   {inception.INPUT: [synthetic_jpeg(64), synthetic_jpeg(500)]}),
                  {"scores": [2, inception.TOP_K], "classes": [2, inception.TOP_K]}),
    "nmt": (lambda: _request("nmt", nmt.SIGNATURE, {nmt.INPUT: np.full((2, 5), 7, np.int32)}),
            {"tokens": [2, 10], "lengths": [2]}),
    "deepspeech": (lambda: _request("deepspeech", deepspeech.SIGNATURE,
                                    {deepspeech.INPUT: np.zeros((2, deepspeech.SAMPLE_RATE), np.float32)}),
                   {"logits": [2, 98, len(deepspeech.ALPHABET) + 1], "frames": [2]}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def served(request: pytest.FixtureRequest, exported_model: Callable[[str], Path]) -> tuple[str, ServerProcess]:
    name = request.param
    process = ServerProcess(exported_model(name), name, False)
    try:
        process.wait_available()
        yield name, process
    finally:
        assert process.stop() == 0, process.log()


def test_the_stock_client_gets_one_row_per_input(served: tuple[str, ServerProcess]) -> None:
    name, process = served
    build, expected = CASES[name]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(process.channel)
    response = stub.Predict(build(), timeout=60)
    assert {alias: list(tf.make_ndarray(t).shape) for alias, t in response.outputs.items()} == expected
    assert response.model_spec.name == name and response.model_spec.version.value == 1


def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(served: tuple[str, ServerProcess]) -> None:
    name, process = served
    stub = prediction_service_pb2_grpc.PredictionServiceStub(process.channel)
    wrong = {"inception": _request(name, inception.SIGNATURE, {inception.INPUT: [b"not a jpeg"]}),
             "nmt": _request(name, nmt.SIGNATURE, {nmt.INPUT: np.zeros((1, 3), np.float32)}),
             "deepspeech": _request(name, deepspeech.SIGNATURE, {deepspeech.INPUT: np.zeros((1, 100), np.int32)})}
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(wrong[name], timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.value.details()
    assert stub.Predict(CASES[name][0](), timeout=60).outputs  # still serving


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_export_says_its_weights_are_random(name: str, exported_model: Callable[[str], Path]) -> None:
    provenance = json.loads((exported_model(name) / "1" / "assets.extra" / "optdse_model.json").read_text())
    assert provenance["model"] == name and provenance["weights"].startswith("random initialisation")
    assert "weight values" in provenance["weights"]  # and that latency does not depend on them


def test_inception_serves_a_user_weights_file(tmp_path: Path, exported_model: Callable[[str], Path]) -> None:
    """--weights: a Keras weights file (here made with another seed) replaces the random ones."""
    weights = tmp_path / "other.weights.h5"
    make = ("import keras; keras.utils.set_random_seed(7); "
            f"keras.applications.InceptionV3(weights=None).save_weights({str(weights)!r})")
    subprocess.run([sys.executable, "-c", make], check=True, capture_output=True, timeout=300)
    done = export_model("inception", tmp_path / "model", "--weights", str(weights))
    assert done.returncode == 0, done.stderr
    provenance = json.loads((tmp_path / "model" / "1" / "assets.extra" / "optdse_model.json").read_text())
    assert provenance["weights"] == f"user weights file {weights}"
    scores = []
    for base in (exported_model("inception"), tmp_path / "model"):
        process = ServerProcess(base, "inception", False)
        try:
            process.wait_available()
            stub = prediction_service_pb2_grpc.PredictionServiceStub(process.channel)
            scores.append(tf.make_ndarray(stub.Predict(CASES["inception"][0](), timeout=60).outputs["scores"]))
        finally:
            assert process.stop() == 0, process.log()
    assert not np.allclose(scores[0], scores[1])  # the file's weights were served, not the seed's


@pytest.mark.parametrize(("name", "flag"), [("nmt", "--weights"), ("deepspeech", "--data"), ("inception", "--data")])
def test_an_input_the_model_does_not_take_is_refused(name: str, flag: str, tmp_path: Path) -> None:
    done = export_model(name, tmp_path / "model", flag, str(tmp_path))
    assert done.returncode == 2 and f"{flag}: model {name} takes none" in done.stderr
    assert not (tmp_path / "model").exists()
