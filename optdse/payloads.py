"""Request bodies per model: what one request's "file" is, at a given file size.

Requests are serialized once per trial and sent as bytes, so the load generator spends its
CPU on the RPC and not on building protobufs (or JSON). Over REST the same tensors go as TF
Serving's columnar predict body, `{"signature_name": ..., "inputs": {alias: value}}`, with
numbers in their shortest exact float32/int form and bytes as `{"b64": ...}`. The contents are fixed pseudo-random inputs
(seeded by the file size): the latency of these models depends on the input's shape, not on
its values. What "file size" counts differs per model (`UNITS`):

- mnist: images per request (a batch of 28x28 images, the seed's softmax regression);
- inception: the edge of one square JPEG in pixels (decoded and resized inside the graph,
  so a bigger file costs decoding, not convolutions); its bytes are recorded as well;
- nmt: tokens in one source sentence (the seed measured 1..1171); decoding runs to 2x that;
- deepspeech: seconds of one 16 kHz mono clip.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from optdse.config import PROTOCOLS, ProtocolName
from optdse.protos import predict_pb2, tensor_pb2, types_pb2
from serving.models import deepspeech, inception, nmt


@dataclass(frozen=True)
class Payload:
    body: bytes          # a serialized PredictRequest (gRPC) or its JSON predict body (REST)
    batch: int           # rows the response must carry
    file_size: int
    unit: str            # what file_size counts
    bytes_per_request: int  # of `body`: what this protocol puts on the wire per request
    protocol: ProtocolName = "grpc"
    path: str = ""       # REST: /v1/models/NAME:predict (gRPC's method is always Predict)


UNITS = {
    "mnist": "images per request",
    "inception": "JPEG edge in pixels (one image per request)",
    "nmt": "tokens in the source sentence",
    "deepspeech": "seconds of 16 kHz audio",
}


def _request(model: str, signature: str, alias: str, array: np.ndarray, dtype: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    tensor = request.inputs[alias]
    tensor.dtype = dtype
    for size in array.shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_content = np.ascontiguousarray(array).tobytes()
    return request


def _mnist(file_size: int, model: str) -> tuple[predict_pb2.PredictRequest, int]:
    images = np.random.default_rng(file_size).random((file_size, 784), dtype=np.float32)
    return _request(model, "predict_images", "images", images, types_pb2.DT_FLOAT), file_size


def _inception(file_size: int, model: str) -> tuple[predict_pb2.PredictRequest, int]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = inception.SIGNATURE
    tensor = request.inputs[inception.INPUT]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(synthetic_jpeg(file_size))
    return request, 1


def synthetic_jpeg(edge: int, quality: int = 90) -> bytes:
    """A photo-like square JPEG: smooth colour gradients and shapes plus a little sensor
    noise, so it compresses like a photograph (pure noise would be many times larger)."""
    from PIL import Image

    rng = np.random.default_rng(edge)
    y, x = np.mgrid[0:edge, 0:edge].astype(np.float32) / max(edge, 1)
    phases = rng.random(3) * 2 * np.pi
    channels = [0.5 + 0.35 * np.sin(2 * np.pi * (1.5 * x + (c + 1) * y) + phases[c]) for c in range(3)]
    pixels = np.stack(channels, axis=-1) * 255 + rng.normal(0, 6, (edge, edge, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _nmt(file_size: int, model: str) -> tuple[predict_pb2.PredictRequest, int]:
    first_word = nmt.EOS + 1  # ids below are <unk>, <s>, </s>
    tokens = np.random.default_rng(file_size).integers(first_word, nmt.SOURCE_VOCAB, (1, file_size), dtype=np.int32)
    return _request(model, nmt.SIGNATURE, nmt.INPUT, tokens, types_pb2.DT_INT32), 1


def _deepspeech(file_size: int, model: str) -> tuple[predict_pb2.PredictRequest, int]:
    rate = deepspeech.SAMPLE_RATE
    t = np.arange(file_size * rate, dtype=np.float32) / rate
    voiced = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 440.0, 1250.0))  # a vowel-like tone
    noise = np.random.default_rng(file_size).normal(0, 0.02, t.shape)
    audio = (voiced + noise).astype(np.float32)[np.newaxis, :]
    return _request(model, deepspeech.SIGNATURE, deepspeech.INPUT, audio, types_pb2.DT_FLOAT), 1


BUILDERS: dict[str, Callable[[int, str], tuple[predict_pb2.PredictRequest, int]]] = {
    "mnist": _mnist, "inception": _inception, "nmt": _nmt, "deepspeech": _deepspeech,
}


#: numpy dtypes of the tensor types the builders use; DT_STRING travels as string_val.
_NUMPY_DTYPES = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_INT32: np.int32}


def _json_numbers(array: np.ndarray) -> str:
    """Nested JSON lists of `array`'s numbers, each in numpy's shortest form that reads back to
    the same float32 (about half the bytes of `json.dumps(array.tolist())`, which widens to
    float64 first)."""
    if array.ndim == 0:
        return str(array[()])
    if array.ndim == 1:
        return "[" + ",".join(map(str, array)) + "]"
    return "[" + ",".join(_json_numbers(row) for row in array) + "]"


def _json_tensor(tensor: tensor_pb2.TensorProto) -> str:
    """One tensor of the builders' requests as the JSON value REST predict takes for it."""
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.dtype == types_pb2.DT_STRING:
        strings = [{"b64": base64.b64encode(value).decode()} for value in tensor.string_val]
        return json.dumps(np.array(strings, dtype=object).reshape(shape).tolist())
    array = np.frombuffer(tensor.tensor_content, dtype=_NUMPY_DTYPES[tensor.dtype])
    return _json_numbers(array.reshape(shape))


def rest_body(request: predict_pb2.PredictRequest) -> bytes:
    """The REST predict body carrying the same signature and tensors as `request`."""
    inputs = ", ".join(f"{json.dumps(alias)}: {_json_tensor(tensor)}" for alias, tensor in request.inputs.items())
    return f'{{"signature_name": {json.dumps(request.model_spec.signature_name)}, "inputs": {{{inputs}}}}}'.encode()


def build_payload(model: str, file_size: int, protocol: ProtocolName = "grpc") -> Payload:
    """One request of `model` at `file_size`, serialized for `protocol`."""
    if model not in BUILDERS:
        raise ValueError(f"no payload builder for model {model!r}; known: {', '.join(BUILDERS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    request, batch = BUILDERS[model](file_size, model)
    body = request.SerializeToString() if protocol == "grpc" else rest_body(request)
    path = f"/v1/models/{model}:predict" if protocol == "rest" else ""
    return Payload(body=body, batch=batch, file_size=file_size, unit=UNITS[model], bytes_per_request=len(body),
                   protocol=protocol, path=path)


__all__ = ["BUILDERS", "UNITS", "Payload", "build_payload", "rest_body", "synthetic_jpeg"]
