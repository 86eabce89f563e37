"""TF Serving's gRPC messages and stubs, loaded without running TensorFlow's `__init__`.

`tensorflow_serving.apis.*_pb2` import `tensorflow.core.framework.*_pb2`, and any import under
`tensorflow.` first runs `tensorflow/__init__.py`: 3-4 s and ~600 MB of RSS per process. The
harness and every load-generator process need only the generated protobuf modules (~0.1 s,
~40 MB). So `protos()`, on its first call, registers the `tensorflow` package as a bare
namespace over its real directory and imports the generated modules from the installed wheel
unchanged. Importing this module changes nothing: the registration is that explicit call.

Consequence: a process that called `protos()` first cannot `import tensorflow` fully
afterwards. The harness never does; anything that needs TensorFlow (model export, the
server) runs as its own process, and a process that imported TensorFlow first (the serving
tests) gets its protos the normal way.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from functools import cache

#: The gRPC method the load generator calls, as bytes in and bytes out.
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


@dataclass(frozen=True)
class Protos:
    """The generated modules the harness uses."""

    tensor_pb2: types.ModuleType
    types_pb2: types.ModuleType
    saved_model_pb2: types.ModuleType
    predict_pb2: types.ModuleType
    get_model_status_pb2: types.ModuleType
    model_service_pb2_grpc: types.ModuleType

    @property
    def status_available(self) -> int:
        """GetModelStatus's state of a version that serves."""
        return self.get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _register_bare_tensorflow_package() -> None:
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow is not installed; optdse needs its protobuf definitions")
    package = types.ModuleType("tensorflow")
    package.__path__ = list(spec.submodule_search_locations)
    package.__optdse_bare__ = True  # type: ignore[attr-defined]  # so a later full import can tell
    sys.modules["tensorflow"] = package


@cache
def protos() -> Protos:
    """The generated modules, imported once per process (see the module docstring)."""
    if "tensorflow" not in sys.modules:  # the real TensorFlow, if loaded already, serves its protos itself
        _register_bare_tensorflow_package()
    return Protos(*(importlib.import_module(name) for name in (
        "tensorflow.core.framework.tensor_pb2", "tensorflow.core.framework.types_pb2",
        "tensorflow.core.protobuf.saved_model_pb2", "tensorflow_serving.apis.predict_pb2",
        "tensorflow_serving.apis.get_model_status_pb2", "tensorflow_serving.apis.model_service_pb2_grpc")))


__all__ = ["PREDICT_METHOD", "Protos", "protos"]
