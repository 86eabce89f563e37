"""What a user's SavedModel expects, read from its own protocol buffers.

The harness never imports TensorFlow (optdse/protos.py says why), so the signature a study's
requests must fit is read from `BASE/VERSION/saved_model.pb` with TensorFlow's generated
protobuf modules: the "serve" MetaGraph's SignatureDefs give each input's dtype and shape.
That is the version the server loads too: the highest integer folder (TF Serving's default
version policy, and optdse-serve's). Reading it takes milliseconds, so a study checks its
model and request file before its first trial, and nothing has been deployed if they are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from optdse.models import DEFAULT_SIGNATURE, ModelError
from optdse.protos import protos
from serving.model_dir import find_versions

#: The MetaGraph tag a server loads.
SERVE_TAG = "serve"

@cache
def numpy_dtypes() -> dict[int, np.dtype]:
    """Tensor dtypes a request can carry (types_pb2 enums), as numpy dtypes (DT_STRING
    travels as bytes objects)."""
    t = protos().types_pb2
    return {t.DT_FLOAT: np.dtype(np.float32), t.DT_DOUBLE: np.dtype(np.float64), t.DT_HALF: np.dtype(np.float16),
            t.DT_INT8: np.dtype(np.int8), t.DT_INT16: np.dtype(np.int16), t.DT_INT32: np.dtype(np.int32),
            t.DT_INT64: np.dtype(np.int64), t.DT_UINT8: np.dtype(np.uint8), t.DT_UINT16: np.dtype(np.uint16),
            t.DT_UINT32: np.dtype(np.uint32), t.DT_UINT64: np.dtype(np.uint64), t.DT_BOOL: np.dtype(np.bool_),
            t.DT_STRING: np.dtype(object)}


@dataclass(frozen=True)
class InputSpec:
    """One input of a signature: its dtype (a types_pb2 enum) and shape (-1: any size;
    None: unknown rank)."""

    alias: str
    dtype: int
    shape: tuple[int, ...] | None

    @property
    def dtype_name(self) -> str:
        return protos().types_pb2.DataType.Name(self.dtype).removeprefix("DT_").lower()

    def describe(self) -> str:
        shape = "any shape" if self.shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"{self.dtype_name} {shape}"


@dataclass(frozen=True, eq=False)  # hashed by identity: read_signature caches one per model
class Signature:
    """A signature of a SavedModel version: its name, inputs and outputs by alias."""

    name: str
    version: int
    inputs: dict[str, InputSpec]
    outputs: dict[str, InputSpec]

    def describe(self) -> str:
        return ", ".join(f"{alias} ({spec.describe()})" for alias, spec in sorted(self.inputs.items()))


def latest_version(base_path: Path) -> tuple[int, Path]:
    """The version a server loads from `base_path`, and its folder; ModelError if none."""
    if not base_path.is_dir():
        raise ModelError(f"{base_path}: no such folder")
    versions = find_versions(base_path)
    if not versions:
        hint = (f"; it is a SavedModel itself: move it into a version folder, e.g. {base_path}/1/"
                if (base_path / "saved_model.pb").exists() else "")
        raise ModelError(f"{base_path}: no SavedModel in an integer version folder (BASE/1/saved_model.pb, "
                         f"as TF Serving's --model_base_path){hint}")
    return versions[-1], base_path / str(versions[-1])


@lru_cache(maxsize=32)
def read_signature(base_path: Path, name: str = DEFAULT_SIGNATURE) -> Signature:
    """Signature `name` of the version a server would load from `base_path`."""
    version, folder = latest_version(base_path)
    saved = protos().saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((folder / "saved_model.pb").read_bytes())
    except (DecodeError, OSError) as error:  # not a protobuf, or unreadable: one line
        raise ModelError(f"{folder}/saved_model.pb: not a SavedModel ({error})") from None
    graphs = [g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags] or list(saved.meta_graphs)
    if not graphs:
        raise ModelError(f"{folder}/saved_model.pb: holds no MetaGraph")
    signatures = {key: value for key, value in graphs[0].signature_def.items() if not key.startswith("__")}
    if name not in signatures:
        raise ModelError(f"{folder}: no signature {name!r}; it has {', '.join(sorted(signatures)) or 'none'}",
                         key="signature")
    inputs, outputs = ({alias: InputSpec(alias, info.dtype, None if info.tensor_shape.unknown_rank
                                         else tuple(d.size for d in info.tensor_shape.dim))
                        for alias, info in tensors.items()}
                       for tensors in (signatures[name].inputs, signatures[name].outputs))
    unsupported = [spec for spec in inputs.values() if spec.dtype not in numpy_dtypes()]
    if unsupported:
        raise ModelError(f"{folder}: signature {name!r} input {unsupported[0].alias} has dtype "
                         f"{unsupported[0].dtype_name}, which a Predict request cannot carry")
    return Signature(name, version, inputs, outputs)


__all__ = ["InputSpec", "Signature", "latest_version", "numpy_dtypes",
           "read_signature"]
