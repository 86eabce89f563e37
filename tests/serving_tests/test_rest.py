"""The REST API, called with plain HTTP as TF Serving's REST API documentation shows."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tests.serving_process import ServerProcess

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post(url: str, payload: Any) -> tuple[int, Any]:
    return http("POST", url, json.dumps(payload).encode())


@pytest.fixture(scope="module")
def expected(mnist_base_path: Path) -> Any:
    signature = tf.saved_model.load(str(mnist_base_path / "1")).signatures["predict_images"]
    return lambda images: signature(images=tf.constant(images, tf.float32))["scores"].numpy()


def test_model_status(server: ServerProcess) -> None:
    for path in ("/v1/models/mnist", "/v1/models/mnist/versions/1"):
        status, body = http("GET", server.rest_url + path)
        assert status == 200
        assert body == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_model_metadata(server: ServerProcess) -> None:
    status, body = http("GET", server.rest_url + "/v1/models/mnist/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["predict_images"]
    assert signature["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "784"]


def test_predict_row_format(server: ServerProcess, expected: Any) -> None:
    images = np.random.default_rng(1).random((3, 784)).round(4)
    status, body = post(server.rest_url + "/v1/models/mnist:predict",
                        {"signature_name": "predict_images", "instances": images.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected(images), rtol=1e-5, atol=1e-6)


def test_predict_columnar_format_and_version_path(server: ServerProcess, expected: Any) -> None:
    images = np.random.default_rng(2).random((2, 784)).round(4)
    status, body = post(server.rest_url + "/v1/models/mnist/versions/1:predict", {"inputs": {"images": images.tolist()}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"], expected(images), rtol=1e-5, atol=1e-6)


def test_named_inputs_in_row_format(server: ServerProcess, expected: Any) -> None:
    images = np.random.default_rng(3).random((2, 784)).round(4)
    status, body = post(server.rest_url + "/v1/models/mnist:predict", {"instances": [{"images": row} for row in images.tolist()]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected(images), rtol=1e-5, atol=1e-6)


# A second, tiny model with a string input and two outputs: b64 in, "_bytes" out, and
# row-format outputs as one object per instance.

@pytest.fixture(scope="module")
def strings_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
        def echo(self, data: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(data), "echo_bytes": data}

    base = tmp_path_factory.mktemp("echo")
    module = Echo()
    tf.saved_model.save(module, str(base / "3"), signatures={"serving_default": module.echo})
    process = ServerProcess(base, "echo", True)
    try:
        process.wait_available()
        yield process
    finally:
        assert process.stop() == 0, process.log()


def test_b64_bytes_in_and_out(strings_server: ServerProcess) -> None:
    blobs = [b"\x00\xffbinary", b"plain"]
    instances = [{"b64": base64.b64encode(blob).decode()} for blob in blobs]
    status, body = post(strings_server.rest_url + "/v1/models/echo:predict", {"instances": instances})
    assert status == 200, body
    assert body["predictions"] == [
        {"length": len(blob), "echo_bytes": {"b64": base64.b64encode(blob).decode()}} for blob in blobs
    ]
    status, body = post(strings_server.rest_url + "/v1/models/echo:predict", {"inputs": ["abc"]})
    assert status == 200
    assert body["outputs"] == {"length": [3], "echo_bytes": [{"b64": base64.b64encode(b"abc").decode()}]}
    status, body = http("GET", strings_server.rest_url + "/v1/models/echo")
    assert body["model_version_status"][0]["version"] == "3"
