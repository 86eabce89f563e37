"""The model repository optdse writes for one Triton configuration.

    <run>/triton-<digest>/<model>/config.pbtxt    backend "python", max_batch_size,
                                                  inputs and outputs from the signature,
                                                  instance_group, dynamic_batching
    <run>/triton-<digest>/<model>/1/model.py      serving/triton_model.py

The SavedModel itself stays where it is: config parameters name it, its signature and the
paths the model appends for TensorFlow. The folder is named by a digest of its config, so
replicas of one setting share it, and it goes with the run's directory.

Inputs and outputs come from the signature (read without TensorFlow, optdse/savedmodel.py).
With `max_batch_size` > 0 the first dimension is Triton's batch dimension and left out of
`dims`, so every input and output must have a free first dimension; with 0 the dims are the
signature's whole shapes (-1 where free) and Triton passes requests to the model as they come.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sysconfig
from pathlib import Path

from optdse.config import ServerConfig
from optdse.deploy.base import DeployError
from optdse.deploy.runs import Run
from optdse.knobs import TritonKnobs
from optdse.payloads import builtin_signature
from optdse.protos import protos
from optdse.savedmodel import InputSpec, read_signature

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
MODEL_FILE = PROJECT_ROOT / "serving" / "triton_model.py"


def _data_type(spec: InputSpec) -> str:
    """Triton's TYPE_* of a TF dtype (DT_FLOAT -> TYPE_FP32, DT_STRING -> TYPE_STRING)."""
    name = protos().types_pb2.DataType.Name(spec.dtype).removeprefix("DT_")
    names = {"FLOAT": "FP32", "DOUBLE": "FP64", "HALF": "FP16", "BFLOAT16": "BF16"}
    return "TYPE_" + names.get(name, name)


def _dims(spec: InputSpec, batched: bool, model: str) -> list[int]:
    if spec.shape is None:
        return [-1]
    if not batched:
        return list(spec.shape) or [1]
    if not spec.shape or spec.shape[0] >= 0:
        raise DeployError("config", f"{model}: {spec.alias} has no free first dimension ({spec.describe()}), so "
                                    "Triton cannot batch it: max_batch_size must be 0 for this model")
    return list(spec.shape[1:]) or [1]


def _tensors(specs: dict[str, InputSpec], batched: bool, model: str) -> str:
    return ", ".join(f'{{ name: "{alias}" data_type: {_data_type(spec)} dims: {_dims(spec, batched, model)} }}'
                     for alias, spec in sorted(specs.items()))


def model_config(server: ServerConfig, base_path: Path) -> str:
    """config.pbtxt for `server` (a Triton configuration) serving the SavedModel at `base_path`."""
    knobs = server.knobs
    assert isinstance(knobs, TritonKnobs)
    model = server.model
    signature = read_signature(base_path, model.signature if not model.builtin else builtin_signature(model.name))
    batched = bool(knobs.max_batch_size)
    lines = [f'name: "{model.name}"', 'backend: "python"', f"max_batch_size: {knobs.max_batch_size or 0}",
             f"input [ {_tensors(signature.inputs, batched, model.name)} ]",
             f"output [ {_tensors(signature.outputs, batched, model.name)} ]",
             f"instance_group [ {{ count: {knobs.instances} kind: KIND_CPU }} ]"]
    if knobs.dynamic_batching:
        fields = [f"max_queue_delay_microseconds: {knobs.max_queue_delay_microseconds}"
                  if knobs.max_queue_delay_microseconds is not None else "",
                  f"preferred_batch_size: [ {knobs.preferred_batch_size} ]" if knobs.preferred_batch_size else ""]
        lines.append("dynamic_batching { " + " ".join(f for f in fields if f) + " }")
    # The stub runs in optdse's numpy-1 environment; TensorFlow and `serving` are appended from here.
    sys_path = os.pathsep.join([str(PROJECT_ROOT), sysconfig.get_paths()["purelib"]])
    parameters = {"model_base_path": str(base_path), "signature_name": signature.name, "sys_path": sys_path}
    lines += [f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}"
              for key, value in parameters.items()]
    return "\n".join(lines) + "\n"


def write_repository(run: Run, server: ServerConfig, base_path: Path) -> Path:
    """The model repository for `server` in the run's directory (written once per setting)."""
    config = model_config(server, base_path)
    repository = run.directory / f"triton-{hashlib.sha256(config.encode()).hexdigest()[:12]}"
    model_dir = repository / server.model.name
    if not (model_dir / "config.pbtxt").exists():
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MODEL_FILE, model_dir / "1" / "model.py")
        (model_dir / "config.pbtxt").write_text(config)
    return repository


def config_in(command: str, model: str) -> str:
    """The config.pbtxt of `model` in the repository a recorded tritonserver command line
    names ("" if it names none)."""
    for argument in shlex.split(command):
        if argument.startswith("--model-repository="):
            path = Path(argument.partition("=")[2]) / model / "config.pbtxt"
            return path.read_text() if path.exists() else ""
    return ""


__all__ = ["MODEL_FILE", "config_in", "model_config", "write_repository"]
