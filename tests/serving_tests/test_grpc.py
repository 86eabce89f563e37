"""The gRPC API as a stock TF Serving client uses it (mnist_client.py style), on a real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.serving_process import ServerProcess

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

LOADING, AVAILABLE = 20, 30


@pytest.fixture(scope="module")
def reference(mnist_base_path: Path) -> tf.types.experimental.ConcreteFunction:
    """The exported signature called in-process: what every served answer must equal."""
    return tf.saved_model.load(str(mnist_base_path / "1")).signatures["predict_images"]


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


def predict(server: ServerProcess, tensor: tensor_pb2.TensorProto, signature: str = "predict_images",
            output_filter: tuple[str, ...] = ()) -> predict_pb2.PredictResponse:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = signature
    request.inputs["images"].CopyFrom(tensor)
    request.output_filter.extend(output_filter)
    return stub.Predict(request, 10.0)


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_predict_like_mnist_client(server: ServerProcess, reference, batch: int) -> None:
    images = digits(batch, seed=batch)
    # mnist_client.py builds its request with tf.make_tensor_proto; so do we.
    response = predict(server, tf.make_tensor_proto(images, shape=list(images.shape)))
    scores = tf.make_ndarray(response.outputs["scores"])
    assert scores.shape == (batch, 10)
    np.testing.assert_allclose(scores, reference(images=tf.constant(images))["scores"].numpy(), rtol=1e-5, atol=1e-6)
    assert response.model_spec.name == "mnist"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "predict_images"


def test_typed_float_val_encoding(server: ServerProcess, reference) -> None:
    images = digits(3)
    tensor = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    tensor.tensor_shape.dim.add().size = 3
    tensor.tensor_shape.dim.add().size = 784
    tensor.float_val.extend(images.reshape(-1).tolist())
    scores = tf.make_ndarray(predict(server, tensor).outputs["scores"])
    np.testing.assert_allclose(scores, reference(images=tf.constant(images))["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_default_signature_and_output_filter(server: ServerProcess, reference) -> None:
    images = digits(2)
    response = predict(server, tf.make_tensor_proto(images), signature="", output_filter=("scores",))
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["scores"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                               reference(images=tf.constant(images))["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_get_model_metadata_packs_signature_defs(server: ServerProcess) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "mnist"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, 10.0)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["predict_images"]
    assert signature.inputs["images"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in signature.inputs["images"].tensor_shape.dim] == [-1, 784]
    assert [d.size for d in signature.outputs["scores"].tensor_shape.dim] == [-1, 10]
    assert signature.method_name == "tensorflow/serving/predict"
    assert "serving_default" in signature_map.signature_def
    assert response.model_spec.version.value == 1


def test_get_model_status_available(server: ServerProcess) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "mnist"
    (status,) = stub.GetModelStatus(request, 10.0).model_version_status
    assert (status.version, status.state, status.status.error_code) == (1, AVAILABLE, 0)


@pytest.mark.parametrize("method", ["Classify", "Regress", "MultiInference"])
def test_other_apis_answer_unimplemented(server: ServerProcess, method: str) -> None:
    call = server.channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"", timeout=10.0)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Predict" in raised.value.details()


def test_status_goes_from_loading_to_available(tmp_path: Path) -> None:
    """A model with large variables loads slowly enough to watch LOADING become AVAILABLE."""

    class Big(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.Variable(tf.zeros([64 * 1024 * 1024], tf.float32))  # 256 MiB to restore

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="ids")])
        def lookup(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"values": tf.gather(self.table, ids)}

    model = Big()
    tf.saved_model.save(model, str(tmp_path / "1"), signatures={"serving_default": model.lookup})
    del model
    process = ServerProcess(tmp_path, "big", False)
    try:
        states = process.wait_available()
    finally:
        assert process.stop() == 0, process.log()
    assert states == [LOADING, AVAILABLE]
