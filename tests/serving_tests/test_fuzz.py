"""Random bytes at gRPC and random JSON at REST never take the server down or answer wrongly."""

from __future__ import annotations

import json

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest

from tests.serving_process import ServerProcess
from tests.serving_tests.test_errors import assert_still_serving
from tests.serving_tests.test_rest import http

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Statuses a well-behaved server may answer garbage with. UNKNOWN would mean an unhandled
# exception in a handler; INTERNAL is what gRPC itself answers for undecodable protobuf.
ACCEPTED_GRPC = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=60,
)
predict_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={"instances": json_values, "inputs": json_values, "signature_name": json_values}),
)


@FUZZ
@given(payload=st.binary(max_size=4096))
def test_random_bytes_to_grpc_predict(server: ServerProcess, payload: bytes) -> None:
    call = server.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    try:
        call(payload, timeout=10.0)
    except grpc.RpcError as error:
        assert error.code() in ACCEPTED_GRPC, (error.code(), error.details())
        if error.code() == grpc.StatusCode.INTERNAL:
            assert "deserializ" in error.details().lower(), error.details()
        else:
            assert error.details()


@FUZZ
@given(body=predict_bodies, model=st.sampled_from(["mnist", "other"]))
def test_random_json_to_rest_predict(server: ServerProcess, body: object, model: str) -> None:
    status, answer = http("POST", f"{server.rest_url}/v1/models/{model}:predict", json.dumps(body).encode())
    assert status in (200, 400, 404, 413), (status, answer)
    assert ("predictions" in answer or "outputs" in answer) if status == 200 else isinstance(answer.get("error"), str)


@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_bytes_to_rest_predict(server: ServerProcess, body: bytes) -> None:
    status, answer = http("POST", f"{server.rest_url}/v1/models/mnist:predict", body)
    assert status in (400, 404, 413) and isinstance(answer["error"], str), (status, answer)


def test_still_correct_after_fuzzing(server: ServerProcess) -> None:
    assert_still_serving(server)
