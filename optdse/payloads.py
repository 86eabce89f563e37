"""Request bodies per model: what one request's "file" is, at a given file size.

Requests are serialized once per trial and sent as bytes, so the load generator spends its
CPU on the RPC and not on building protobufs (or JSON). Over REST the same tensors go as TF
Serving's predict body, with numbers in their shortest exact float32/int form and bytes as
`{"b64": ...}`. A server that speaks the Open Inference Protocol (Triton) gets the same
tensors as its ModelInfer request or JSON body (optdse/oip.py). What "file size" counts differs per model (optdse/models.py, `Model.unit`):

- mnist: images per request (a batch of 28x28 images, the seed's softmax regression);
- inception: the edge of one square JPEG in pixels (decoded and resized inside the graph,
  so a bigger file costs decoding, not convolutions); its bytes are recorded as well;
- nmt: tokens in one source sentence (the seed measured 1..1171); decoding runs to 2x that;
- deepspeech: seconds of one 16 kHz mono clip;
- a user's model: rows per request, or the size of its `size_axis`. With a request file the
  rows are the file's, cycled to that many (a trial sends up to MAX_BODIES different
  requests in turn, so all of a file's rows are used); without one, inputs are generated
  from the signature: every fixed dimension as it says, the sized axis `file_size` long,
  any other free dimension 1, pseudo-random values (floats in [0, 1), integers 0 or 1).

The built-ins' contents are fixed pseudo-random inputs (seeded by the file size): the latency
of these models depends on the input's shape, not on its values.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from optdse import oip
from optdse.config import PROTOCOLS, ApiName, ProtocolName
from optdse.models import Model
from optdse.protos import protos
from optdse.request_file import RequestFile, read_request_file
from optdse.savedmodel import Signature, numpy_dtypes, read_signature
from serving.models import deepspeech, inception, nmt

if TYPE_CHECKING:
    from tensorflow.core.framework.tensor_pb2 import TensorProto
    from tensorflow_serving.apis.predict_pb2 import PredictRequest

#: Different requests a trial sends in turn, at most, and their bytes in all: a request file's
#: variety without holding a copy of a large file per file size.
MAX_BODIES = 64
MAX_BODY_BYTES = 64 << 20


@dataclass(frozen=True)
class Payload:
    """A trial's requests: `bodies` are sent in turn; each answer must carry the rows of its
    body (`batches`, same order)."""

    bodies: tuple[bytes, ...]  # serialized PredictRequests (gRPC) or JSON predict bodies (REST)
    batches: tuple[int, ...]
    file_size: int
    unit: str            # what file_size counts
    protocol: ProtocolName = "grpc"
    path: str = ""       # REST: /v1/models/NAME:predict or /v2/models/NAME/infer (gRPC's method is the API's)
    source: str = ""     # where the inputs came from
    api: ApiName = "tfserving"

    @property
    def body(self) -> bytes:
        return self.bodies[0]

    @property
    def batch(self) -> int:
        return self.batches[0]

    @property
    def bytes_per_request(self) -> int:
        """What this protocol puts on the wire per request (the mean over the bodies)."""
        return round(sum(map(len, self.bodies)) / len(self.bodies))

    @property
    def rows_per_request(self) -> int:
        return round(sum(self.batches) / len(self.batches))


#: What a built-in model's request is: (signature name, inputs by alias, rows the answer carries).
BuiltRequest = tuple[str, dict[str, np.ndarray], int]


def _mnist(file_size: int) -> BuiltRequest:
    images = np.random.default_rng(file_size).random((file_size, 784), dtype=np.float32)
    return "predict_images", {"images": images}, file_size


def _inception(file_size: int) -> BuiltRequest:
    return inception.SIGNATURE, {inception.INPUT: np.array([synthetic_jpeg(file_size)], dtype=object)}, 1


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


def _nmt(file_size: int) -> BuiltRequest:
    first_word = nmt.EOS + 1  # ids below are <unk>, <s>, </s>
    tokens = np.random.default_rng(file_size).integers(first_word, nmt.SOURCE_VOCAB, (1, file_size), dtype=np.int32)
    return nmt.SIGNATURE, {nmt.INPUT: tokens}, 1


def _deepspeech(file_size: int) -> BuiltRequest:
    rate = deepspeech.SAMPLE_RATE
    t = np.arange(file_size * rate, dtype=np.float32) / rate
    voiced = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 440.0, 1250.0))  # a vowel-like tone
    noise = np.random.default_rng(file_size).normal(0, 0.02, t.shape)
    audio = (voiced + noise).astype(np.float32)[np.newaxis, :]
    return deepspeech.SIGNATURE, {deepspeech.INPUT: audio}, 1


BUILDERS: dict[str, Callable[[int], BuiltRequest]] = {
    "mnist": _mnist, "inception": _inception, "nmt": _nmt, "deepspeech": _deepspeech,
}


def _json_numbers(array: np.ndarray) -> str:
    """Nested JSON lists of `array`'s numbers, each in numpy's shortest form that reads back to
    the same float32 (about half the bytes of `json.dumps(array.tolist())`, which widens to
    float64 first)."""
    if array.ndim == 0:
        return str(array[()])
    if array.ndim == 1:
        return "[" + ",".join(map(str, array)) + "]"
    return "[" + ",".join(_json_numbers(row) for row in array) + "]"


def _json_value(array: np.ndarray, b64: bool) -> str:
    """An array as the JSON value REST predict takes for it: numbers, strings, or {"b64": ...}."""
    if array.dtype == object:
        if b64:
            return json.dumps(np.vectorize(lambda v: {"b64": base64.b64encode(v).decode()}, otypes=[object])(array).tolist()
                              if array.ndim else {"b64": base64.b64encode(array[()]).decode()})
        return json.dumps(np.vectorize(lambda v: v.decode("utf-8", "replace"), otypes=[object])(array).tolist()
                          if array.ndim else array[()].decode("utf-8", "replace"))
    if array.dtype.kind in "fiu":
        return _json_numbers(array)
    return json.dumps(array.tolist())


def _tensor_array(tensor: TensorProto) -> np.ndarray:
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.dtype == protos().types_pb2.DT_STRING:
        return np.array(list(tensor.string_val), dtype=object).reshape(shape)
    return np.frombuffer(tensor.tensor_content, dtype=numpy_dtypes()[tensor.dtype]).reshape(shape)


def rest_body(request: PredictRequest) -> bytes:
    """The REST predict body (columnar) carrying the same signature and tensors as `request`."""
    inputs = ", ".join(f"{json.dumps(alias)}: {_json_value(_tensor_array(tensor), b64=True)}"
                       for alias, tensor in request.inputs.items())
    return f'{{"signature_name": {json.dumps(request.model_spec.signature_name)}, "inputs": {{{inputs}}}}}'.encode()


def _predict_request(model: str, signature: str, inputs: dict[str, np.ndarray]) -> PredictRequest:
    request = protos().predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, array in inputs.items():
        tensor = request.inputs[alias]
        tensor.dtype = next(dtype for dtype, numpy in numpy_dtypes().items() if numpy == array.dtype)
        for size in array.shape:
            tensor.tensor_shape.dim.add().size = size
        if array.dtype == object:
            tensor.string_val.extend(array.reshape(-1).tolist())
        else:
            tensor.tensor_content = np.ascontiguousarray(array).tobytes()
    return request


def _rest_as_written(signature: str, inputs: dict[str, np.ndarray], form: RequestFile) -> bytes:
    """A predict body in the form the request file used (row or columnar, named or bare)."""
    b64 = form.b64
    if form.row_format:
        rows = max(a.shape[0] for a in inputs.values())
        if form.named:
            value = "[" + ",".join("{" + ",".join(f"{json.dumps(alias)}: {_json_value(a[i, ...], alias in b64)}"
                                                  for alias, a in inputs.items()) + "}" for i in range(rows)) + "]"
        else:
            ((alias, array),) = inputs.items()
            value = _json_value(array, alias in b64)
        return f'{{"signature_name": {json.dumps(signature)}, "instances": {value}}}'.encode()
    if form.named:
        value = "{" + ",".join(f"{json.dumps(alias)}: {_json_value(a, alias in b64)}" for alias, a in inputs.items()) + "}"
    else:
        ((alias, array),) = inputs.items()
        value = _json_value(array, alias in b64)
    return f'{{"signature_name": {json.dumps(signature)}, "inputs": {value}}}'.encode()


def _cycled(array: np.ndarray, axis: int, size: int, start: int = 0) -> np.ndarray:
    """`array` along `axis` cycled (repeated from `start`) to `size` entries."""
    return np.take(array, (start + np.arange(size)) % array.shape[axis], axis=axis)


def _file_requests(model: Model, signature: Signature, requests: RequestFile,
                   file_size: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """(inputs, rows) of each request a trial sends: the file's rows cycled to `file_size`
    rows, or each line with its sized axis cycled to `file_size`."""
    out: list[tuple[dict[str, np.ndarray], int]] = []
    if model.size_axis:
        for line in requests.lines[:MAX_BODIES]:
            grown = {alias: _cycled(a, model.size_axis, file_size)
                     if _grows(signature, alias, model.size_axis) and a.ndim > model.size_axis else a
                     for alias, a in line.inputs.items()}
            out.append((grown, line.rows))
        return out
    # Rows of lines whose inputs agree in shape form one pool; a line that differs (a longer
    # sentence, a scalar input) is its own. Each request takes the next `file_size` rows of a
    # pool, cyclically.
    groups: dict[tuple[object, ...], list[dict[str, np.ndarray]]] = {}
    for line in requests.lines:
        shapes = tuple((alias, a.shape[1:]) if a.ndim else (alias, line.number) for alias, a in sorted(line.inputs.items()))
        groups.setdefault(shapes, []).append(line.inputs)
    pools = [{alias: np.concatenate([inputs[alias] for inputs in group]) if group[0][alias].ndim else group[0][alias]
              for alias in group[0]} for group in groups.values()]
    for pool in pools:
        rows = max((a.shape[0] for a in pool.values() if a.ndim), default=1)
        for start in range(0, rows, file_size):
            out.append(({alias: _cycled(a, 0, file_size, start) if a.ndim else a for alias, a in pool.items()},
                        file_size))
            if len(out) == MAX_BODIES:
                return out
    return out


def _grows(signature: Signature, alias: str, axis: int) -> bool:
    shape = signature.inputs[alias].shape
    return shape is None or (len(shape) > axis and shape[axis] < 0)


def _generated_request(signature: Signature, file_size: int, size_axis: int) -> tuple[dict[str, np.ndarray], int]:
    """Inputs made from the signature alone: fixed dimensions kept, the sized axis
    `file_size` long, other free dimensions 1; values seeded by the file size."""
    rng = np.random.default_rng(file_size)
    inputs = {}
    for alias, spec in sorted(signature.inputs.items()):
        shape = tuple(file_size if i == size_axis and d < 0 else (1 if d < 0 else d) for i, d in enumerate(spec.shape or ()))
        dtype = numpy_dtypes()[spec.dtype]
        if dtype == object:
            array = np.full(shape, b"optdse", dtype=object)
        elif dtype.kind == "f":
            array = rng.random(shape).astype(dtype)
        else:  # integers and booleans: 0 or 1, valid as an index into any table
            array = rng.integers(0, 2, shape).astype(dtype)
        inputs[alias] = array
    rows = next((a.shape[0] for a in inputs.values() if a.ndim), 1)
    return inputs, rows


def _user_payload(model: Model, file_size: int, protocol: ProtocolName, api: ApiName) -> Payload:
    assert model.base_path is not None
    signature = read_signature(model.base_path, model.signature)
    requests = read_request_file(model.request_file, signature, model.size_axis) if model.request_file else None
    if requests is None:
        made = [_generated_request(signature, file_size, model.size_axis)]
        source = f"generated from signature {signature.name} (pseudo-random values)"
    else:
        made = _file_requests(model, signature, requests, file_size)
        source = f"{requests.path.name} ({requests.rows} rows in {len(requests.lines)} lines)"
    bodies: list[bytes] = []
    for inputs, _ in made:
        bodies.append(_body(model.name, signature.name, inputs, protocol, api, requests))
        if sum(map(len, bodies)) > MAX_BODY_BYTES:
            break
    return Payload(bodies=tuple(bodies), batches=tuple(rows for _, rows in made[:len(bodies)]), file_size=file_size,
                   unit=model.unit, protocol=protocol, path=_path(model.name, protocol, api), source=source, api=api)


def _body(model: str, signature: str, inputs: dict[str, np.ndarray], protocol: ProtocolName, api: ApiName,
          form: RequestFile | None = None) -> bytes:
    """One request of `inputs` in `api` over `protocol`; TF Serving's REST body in the form the
    request file used, where there is one."""
    if api == "v2":
        return oip.grpc_request(model, inputs) if protocol == "grpc" else oip.rest_body(inputs)
    if protocol == "grpc":
        return _predict_request(model, signature, inputs).SerializeToString()
    if form is not None:
        return _rest_as_written(signature, inputs, form)
    return rest_body(_predict_request(model, signature, inputs))


def _path(model: str, protocol: ProtocolName, api: ApiName) -> str:
    """The REST path requests are posted to ("" over gRPC, whose method the API fixes)."""
    if protocol != "rest":
        return ""
    return oip.infer_path(model) if api == "v2" else f"/v1/models/{model}:predict"


def build_payload(model: Model | str, file_size: int, protocol: ProtocolName = "grpc", api: ApiName = "tfserving") -> Payload:
    """The requests of `model` (a built-in may be given by name) at `file_size`, serialized
    for `protocol` in the server's `api` (TF Serving's, or the Open Inference Protocol's)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    model = Model(model) if isinstance(model, str) else model
    if not model.builtin:
        return _user_payload(model, file_size, protocol, api)
    if model.name not in BUILDERS:
        raise ValueError(f"no payload builder for model {model.name!r}; known: {', '.join(BUILDERS)}")
    signature, inputs, batch = BUILDERS[model.name](file_size)
    return Payload(bodies=(_body(model.name, signature, inputs, protocol, api),), batches=(batch,), file_size=file_size,
                   unit=model.unit, protocol=protocol, path=_path(model.name, protocol, api),
                   source="built-in (pseudo-random inputs of the unit's size)", api=api)


def builtin_signature(model: str) -> str:
    """The signature a built-in model's requests name (what its exporter wrote)."""
    return BUILDERS[model](1)[0]


__all__ = ["BUILDERS", "MAX_BODIES", "Payload", "build_payload", "builtin_signature", "rest_body", "synthetic_jpeg"]
