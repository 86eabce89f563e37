"""TF Serving's gRPC messages and stubs, without importing TensorFlow.

`tensorflow_serving.apis.*_pb2` import `tensorflow.core.framework.*_pb2`, and any import under
`tensorflow.` first runs `tensorflow/__init__.py`: 3-4 s and ~600 MB of RSS per process. The
harness and every load-generator process need only the generated protobuf modules (~0.1 s,
~40 MB), so the `tensorflow` package is registered here as a bare namespace over its real
directory. The generated modules are then imported from the installed wheel unchanged.

Consequence: a process that imported this module first cannot `import tensorflow` fully
afterwards. The harness never does; anything that needs TensorFlow (model export, the
server) runs as its own process.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _register_bare_tensorflow_package() -> None:
    if "tensorflow" in sys.modules:
        return  # the real TensorFlow is loaded already; its protos import normally
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow is not installed; optdse needs its protobuf definitions")
    package = types.ModuleType("tensorflow")
    package.__path__ = list(spec.submodule_search_locations)
    package.__optdse_bare__ = True  # type: ignore[attr-defined]  # so a later full import can tell
    sys.modules["tensorflow"] = package


_register_bare_tensorflow_package()

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
STATUS_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE

__all__ = [
    "PREDICT_METHOD",
    "STATUS_AVAILABLE",
    "get_model_status_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_service_pb2_grpc",
    "saved_model_pb2",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
