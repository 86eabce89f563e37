"""A SavedModel served by Triton's Python backend: the `model.py` of every model repository
optdse writes (optdse/triton/repository.py copies this file to NAME/1/model.py).

Triton starts one backend stub process per instance (`instance_group [{count: N}]`), and each
loads the model into its own TF Session through serving/servable.py, the very code optdse-serve
runs a request with; so the two servers differ in what surrounds the model (Triton's C++ core,
its scheduler and dynamic batcher, its protocol front-ends), not in how TensorFlow runs it.

With dynamic batching, Triton hands `execute` several requests at once: their rows are joined
into one model call and the answers split again, as TF Serving's batching does.

The stub runs in optdse's numpy-1 environment (optdse/triton/install.py says why); config
parameters name the SavedModel and the paths to append for TensorFlow and optdse's `serving`
package. This file imports nothing of either at module level, since those paths are not set yet.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the stub


class TritonPythonModel:
    """One instance: one TF Session of the model's newest version."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        for path in parameters["sys_path"].split(os.pathsep):
            if path and path not in sys.path:
                sys.path.append(path)  # after the stub environment's numpy 1.x
        from serving.tensorflow_import import import_tensorflow

        import_tensorflow(without_keras=True)
        from serving.model_dir import find_versions
        from serving.servable import Servable

        base = Path(parameters["model_base_path"])
        version = find_versions(base)[-1]
        self.servable = Servable(args["model_name"], version, base / str(version),
                                 intra_op_threads=int(parameters.get("intra_op_threads", "0")),
                                 inter_op_threads=int(parameters.get("inter_op_threads", "0")))
        self.signature = self.servable.signature(parameters["signature_name"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = tuple(sorted(self.signature.inputs))
        self.outputs = tuple(sorted(self.signature.outputs))
        self.servable.warm_up()

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [{alias: pb_utils.get_input_tensor_by_name(request, alias).as_numpy() for alias in self.inputs}
                  for request in requests]
        if len(requests) > 1 and self.batched:
            return self._run_joined(arrays)
        return [self._respond(inputs) for inputs in arrays]

    def _run_joined(self, arrays: list[dict[str, np.ndarray]]) -> list[Any]:
        """One model call for requests the dynamic batcher grouped, answers split by rows."""
        rows = [len(inputs[self.inputs[0]]) for inputs in arrays]
        joined = {alias: np.concatenate([inputs[alias] for inputs in arrays]) for alias in self.inputs}
        try:
            results = self.servable.run(self.signature, joined, self.outputs)
        except Exception as error:  # one failure answers every request of the batch
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))) for _ in arrays]
        bounds = np.cumsum(rows)[:-1]
        parts = {alias: np.split(value, bounds) for alias, value in results.items()}
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(alias, parts[alias][i]) for alias in self.outputs])
                for i in range(len(arrays))]

    def _respond(self, inputs: dict[str, np.ndarray]) -> Any:
        try:
            results = self.servable.run(self.signature, inputs, self.outputs)
        except Exception as error:  # the request's own error, e.g. a wrong shape
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(alias, np.asarray(results[alias]))
                                                          for alias in self.outputs])

    def finalize(self) -> None:
        self.servable.close()
