"""The Open Inference Protocol (KServe v2): what Triton, KServe, MLServer and OpenVINO Model
Server speak, beside TF Serving's Predict API.

- gRPC: `inference.GRPCInferenceService/ModelInfer`; a ModelInferRequest carries each input's
  name, datatype and shape, and its bytes in `raw_input_contents` (row-major; BYTES elements
  each prefixed by their 4-byte little-endian length). The messages are tritonclient's
  generated modules (the protocol's maintained Python stubs), imported on first use.
- REST: `POST /v2/models/NAME/infer` with `{"inputs": [{"name", "shape", "datatype", "data"}]}`,
  `data` flat and row-major; the answer's `outputs` carry their `shape`.

Like TF Serving's bodies (optdse/payloads.py), requests are serialized once per trial; here are
the encoders and the one-row check of an answer.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from types import ModuleType

import numpy as np

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"

#: numpy dtypes as the protocol names them (tensor data types, KServe v2 "Tensor Data Types").
DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "int8": "INT8",
    "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64",
    "object": "BYTES",
}


@cache
def service_pb2() -> ModuleType:
    """tritonclient's generated messages of grpc_service.proto (0.2 s to import; once)."""
    from tritonclient.grpc import service_pb2 as module

    return module


def datatype(array: np.ndarray) -> str:
    try:
        return DATATYPES[array.dtype.name]
    except KeyError:
        raise ValueError(f"the Open Inference Protocol has no datatype for numpy {array.dtype}") from None


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:  # BYTES: each element as a 4-byte length and its bytes
        return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1).tolist())
    return np.ascontiguousarray(array).tobytes()


def grpc_request(model: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A serialized ModelInferRequest of `inputs` for `model` (every output returned)."""
    request = service_pb2().ModelInferRequest(model_name=model)
    for name, array in sorted(inputs.items()):
        tensor = request.inputs.add(name=name, datatype=datatype(array))
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(_raw(array))
    return request.SerializeToString()


def _flat_json(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    if flat.dtype == object:
        try:
            return json.dumps([item.decode("utf-8") for item in flat.tolist()])
        except UnicodeDecodeError:
            raise ValueError("binary BYTES inputs (e.g. JPEG files) cannot travel in the protocol's JSON; "
                             "use protocol: grpc") from None
    if flat.dtype.kind in "fiu":  # numpy's shortest exact form of each number, as TF Serving's bodies
        return "[" + ",".join(map(str, flat)) + "]"
    return json.dumps(flat.tolist())


def rest_body(inputs: dict[str, np.ndarray]) -> bytes:
    """The JSON inference request of `inputs` (every output returned)."""
    tensors = ", ".join(f'{{"name": {json.dumps(name)}, "shape": {json.dumps(list(array.shape))}, '
                        f'"datatype": "{datatype(array)}", "data": {_flat_json(array)}}}'
                        for name, array in sorted(inputs.items()))
    return f'{{"inputs": [{tensors}]}}'.encode()


def grpc_rows(answer: bytes) -> set[int]:
    """The first dimension of every output of a serialized ModelInferResponse."""
    outputs = service_pb2().ModelInferResponse.FromString(answer).outputs
    return {output.shape[0] for output in outputs if output.shape}


def rest_rows(answer: bytes) -> set[int]:
    """The first dimension of every output of a JSON inference response (empty if it is not one)."""
    try:
        outputs = json.loads(answer).get("outputs")
    except (ValueError, AttributeError):
        return set()
    if not isinstance(outputs, list):
        return set()
    return {output["shape"][0] for output in outputs if isinstance(output, dict) and output.get("shape")}


__all__ = ["DATATYPES", "INFER_METHOD", "datatype", "grpc_request", "grpc_rows", "infer_path", "rest_body", "rest_rows",
           "service_pb2"]
