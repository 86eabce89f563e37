"""The server's state and the request logic both front ends (gRPC and REST) share.

One model name is served, at the highest version found under the base path. The gRPC port
opens before the model loads so clients can watch LOADING turn into AVAILABLE through
GetModelStatus, as with tensorflow_model_server.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.batching import Batcher, BatchingParameters
from serving.errors import InvalidArgument, NotFound, Unavailable
from serving.model_dir import find_versions
from serving.servable import Servable, Signature

log = logging.getLogger("optdse-serve")


class State(enum.IntEnum):
    """ModelVersionStatus.State values from TF Serving's get_model_status.proto."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: str  # empty when the version is healthy


@dataclass(frozen=True)
class Prediction:
    servable: Servable
    signature: Signature
    outputs: dict[str, np.ndarray]


class ModelServer:
    def __init__(self, model_name: str, base_path: Path, batching: BatchingParameters | None,
                 intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        self.model_name = model_name
        self.base_path = base_path
        versions = find_versions(base_path)
        if not versions:
            raise ValueError(f"no version directory (an integer name holding saved_model.pb) under {base_path}")
        self.version = versions[-1]
        self._threads = (intra_op_threads, inter_op_threads)
        self._servable: Servable | None = None
        self._state = State.START
        self._error = ""
        self._state_lock = threading.Lock()
        self._batcher = Batcher(batching) if batching else None

    def load(self) -> None:
        """Load the model (blocking); afterwards the state is AVAILABLE or END with the error."""
        self._set_state(State.LOADING)
        path = self.base_path / str(self.version)
        log.info("loading %s version %d from %s", self.model_name, self.version, path)
        try:
            servable = Servable(self.model_name, self.version, path, *self._threads)
            servable.warm_up()
        except Exception as error:
            self._set_state(State.END, f"failed to load {path}: {error}")
            raise
        self._servable = servable
        self._set_state(State.AVAILABLE)
        log.info("model %s version %d is AVAILABLE", self.model_name, self.version)

    def _set_state(self, state: State, error: str = "") -> None:
        with self._state_lock:
            self._state, self._error = state, error

    def status(self, model_name: str, version: int | None) -> list[VersionStatus]:
        self._check_name(model_name)
        if version is not None and version != self.version:
            raise NotFound(f"Could not find version {version} of model {model_name}")
        with self._state_lock:
            return [VersionStatus(self.version, self._state, self._error)]

    def servable(self, model_name: str, version: int | None) -> Servable:
        """The loaded servable a request names; NOT_FOUND / UNAVAILABLE as appropriate."""
        self._check_name(model_name)
        if version is not None and version != self.version:
            raise NotFound(f"Servable not found for request: Specific({model_name}, {version})")
        if self._servable is None:
            raise Unavailable(f"model {model_name} version {self.version} is not available yet ({self._state.name})")
        return self._servable

    def _check_name(self, model_name: str) -> None:
        if model_name != self.model_name:
            raise NotFound(f"Servable not found for request: Latest({model_name}); this server serves {self.model_name!r}")

    def predict(self, model_name: str, version: int | None, signature_name: str,
                inputs: dict[str, np.ndarray], output_filter: Sequence[str]) -> Prediction:
        servable = self.servable(model_name, version)
        signature = servable.signature(signature_name)
        signature.check_inputs(inputs)
        outputs = signature.select_outputs(output_filter)
        if self._batcher is None:
            return Prediction(servable, signature, servable.run(signature, inputs, outputs))
        key = (signature.name, outputs)
        result = self._batcher.submit(key, inputs, lambda merged: servable.run(signature, merged, outputs))
        return Prediction(servable, signature, result)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            calls, requests = self._batcher.calls, self._batcher.requests
            log.info("batching: %d requests in %d model calls (%.2f requests per call)",
                     requests, calls, requests / calls if calls else 0.0)
        if self._servable is not None:
            self._servable.close()


def parse_version(value: str, what: str = "version") -> int:
    try:
        version = int(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be an integer, got {value!r}") from None
    if version < 0:
        raise InvalidArgument(f"{what} must be >= 0, got {version}")
    return version
