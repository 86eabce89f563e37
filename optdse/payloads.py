"""Request bodies per model: what one request's "file" is, at a given file size.

Requests are serialized once per trial and sent as bytes, so the load generator spends its
CPU on the RPC and not on building protobufs. The contents are fixed pseudo-random inputs:
latency of these models does not depend on the values, only on the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optdse.protos import predict_pb2, types_pb2


@dataclass(frozen=True)
class Payload:
    body: bytes          # a serialized PredictRequest
    batch: int           # rows the response must carry
    file_size: int
    unit: str            # what file_size counts
    bytes_per_request: int


def _mnist(file_size: int, model: str) -> Payload:
    images = np.random.default_rng(file_size).random((file_size, 784), dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "predict_images"
    tensor = request.inputs["images"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add().size = file_size
    tensor.tensor_shape.dim.add().size = 784
    tensor.tensor_content = images.tobytes()
    body = request.SerializeToString()
    return Payload(body=body, batch=file_size, file_size=file_size, unit="images", bytes_per_request=len(body))


BUILDERS = {"mnist": _mnist}
UNITS = {"mnist": "images per request"}


def build_payload(model: str, file_size: int) -> Payload:
    if model not in BUILDERS:
        raise ValueError(f"no payload builder for model {model!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[model](file_size, model)


__all__ = ["BUILDERS", "UNITS", "Payload", "build_payload"]
