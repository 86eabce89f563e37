"""Bad input gets a status with a message, on both front ends, and the server keeps serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.serving_process import ServerProcess
from tests.serving_tests.test_rest import http, post

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

GOOD = np.full((1, 784), 0.5, np.float32)


def request(model: str = "mnist", signature: str = "predict_images", inputs: dict | None = None) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.model_spec.signature_name = signature
    for key, value in (inputs if inputs is not None else {"images": tf.make_tensor_proto(GOOD)}).items():
        message.inputs[key].CopyFrom(value)
    return message


def assert_still_serving(server: ServerProcess) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    scores = tf.make_ndarray(stub.Predict(request(), 10.0).outputs["scores"])
    assert scores.shape == (1, 10) and abs(float(scores.sum()) - 1.0) < 1e-4
    status, body = post(server.rest_url + "/v1/models/mnist:predict", {"instances": GOOD.tolist()})
    assert status == 200 and len(body["predictions"][0]) == 10


def grpc_error(server: ServerProcess, message: predict_pb2.PredictRequest) -> grpc.RpcError:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(message, 10.0)
    return raised.value


def shaped(dtype: tf.DType, shape: list[int], content: bytes) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, tensor_content=content)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


GRPC_CASES = {
    "unknown model": (request(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    "unknown signature": (request(signature="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
    "unknown input key": (request(inputs={"pixels": tf.make_tensor_proto(GOOD)}), grpc.StatusCode.INVALID_ARGUMENT, "pixels"),
    "missing input": (request(inputs={}), grpc.StatusCode.INVALID_ARGUMENT, "images"),
    "wrong dtype": (request(inputs={"images": tf.make_tensor_proto(GOOD.astype(np.float64))}),
                    grpc.StatusCode.INVALID_ARGUMENT, "DT_FLOAT"),
    "wrong shape": (request(inputs={"images": tf.make_tensor_proto(np.zeros((2, 783), np.float32))}),
                    grpc.StatusCode.INVALID_ARGUMENT, "784"),
    "content size mismatch": (request(inputs={"images": shaped(tf.float32, [1, 784], b"\0" * 12)}),
                              grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    "unsupported dtype": (request(inputs={"images": shaped(tf.complex64, [1], b"\0" * 8)}),
                          grpc.StatusCode.INVALID_ARGUMENT, "DT_COMPLEX64"),
    "oversized": (request(inputs={"images": tf.make_tensor_proto(np.zeros((400, 784), np.float32))}),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_bad_request(server: ServerProcess, case: str) -> None:
    message, code, mentions = GRPC_CASES[case]
    error = grpc_error(server, message)
    assert error.code() == code, error.details()
    assert error.details() and mentions in error.details()
    assert_still_serving(server)


REST_CASES = {
    "unknown model": ("/v1/models/nope:predict", {"instances": [[0.0] * 784]}, 404),
    "unknown version": ("/v1/models/mnist/versions/7:predict", {"instances": [[0.0] * 784]}, 404),
    "unknown signature": ("/v1/models/mnist:predict", {"signature_name": "nope", "instances": [[0.0] * 784]}, 400),
    "unknown input key": ("/v1/models/mnist:predict", {"inputs": {"pixels": [[0.0] * 784]}}, 400),
    "wrong dtype": ("/v1/models/mnist:predict", {"instances": [["a"] * 784]}, 400),
    "wrong shape": ("/v1/models/mnist:predict", {"instances": [[0.0] * 783]}, 400),
    "ragged": ("/v1/models/mnist:predict", {"instances": [[0.0] * 784, [0.0]]}, 400),
    "both formats": ("/v1/models/mnist:predict", {"instances": [[0.0] * 784], "inputs": [[0.0] * 784]}, 400),
    "no format": ("/v1/models/mnist:predict", {"signature_name": "predict_images"}, 400),
    "not an object": ("/v1/models/mnist:predict", [1, 2, 3], 400),
    "unknown verb": ("/v1/models/mnist:explain", {"instances": []}, 404),
    "classify": ("/v1/models/mnist:classify", {"examples": []}, 501),
}


@pytest.mark.parametrize("case", list(REST_CASES))
def test_rest_bad_request(server: ServerProcess, case: str) -> None:
    path, payload, expected = REST_CASES[case]
    status, body = post(server.rest_url + path, payload)
    assert status == expected, body
    assert isinstance(body["error"], str) and body["error"]
    assert_still_serving(server)


def test_rest_malformed_json(server: ServerProcess) -> None:
    status, body = http("POST", server.rest_url + "/v1/models/mnist:predict", b'{"instances": [1, 2')
    assert status == 400 and "JSON" in body["error"]
    assert_still_serving(server)


def test_rest_oversized_body(server: ServerProcess) -> None:
    status, body = post(server.rest_url + "/v1/models/mnist:predict", {"instances": np.zeros((400, 784)).tolist()})
    assert status == 413 and "exceeds" in body["error"]
    assert_still_serving(server)


def test_rest_unknown_path_and_method(server: ServerProcess) -> None:
    status, body = http("GET", server.rest_url + "/v2/whatever")
    assert status == 404 and body["error"]
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(urllib.request.Request(server.rest_url + "/v1/models/mnist", method="DELETE"), timeout=10)
    assert raised.value.code == 405 and "GET or POST" in json.loads(raised.value.read())["error"]
    status, body = http("GET", server.rest_url + "/v1/models/mnist/versions/x")
    assert status == 400 and json.dumps(body)
    assert_still_serving(server)
