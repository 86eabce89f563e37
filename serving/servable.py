"""A loaded SavedModel version and how requests run against it.

The model is loaded the way tensorflow_model_server loads it: the MetaGraphDef tagged
"serve" into a TF Session, signatures resolved to tensor names from its SignatureDefs. Each
(signature, inputs, outputs) combination gets a Session callable (C++ Session::MakeCallable,
reached through BaseSession._make_callable_from_options, the path Keras' v1 backend used),
which skips the per-call feed/fetch processing of `Session.run`, and runs the graph in the
calling thread (RunOptions.inter_op_thread_pool = -1): for small models the hand-off to TF's
inter-op pool costs more than the model. Measured here for the MNIST signature: ~15 us per
call, against ~180 us for TF2's eager `loaded.signatures[...]` call
(benchmarks/serving_overhead.py prints both).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from serving import codecs
from serving.errors import InvalidArgument, ServingError, from_tf_error

log = logging.getLogger("optdse-serve")

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
# SignatureDefs TF2 adds for its own bookkeeping; listed in metadata, never predictable.
_INTERNAL_PREFIX = "__"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature: its tensor in the graph, dtype and shape."""

    alias: str
    tensor_name: str
    dtype: int
    shape: tuple[int, ...] | None  # None: unknown rank; -1: unknown dimension

    def check(self, array: np.ndarray) -> None:
        """InvalidArgument when `array` cannot be fed as this input."""
        try:
            expected: np.dtype | None = codecs.numpy_dtype(self.dtype)
        except InvalidArgument:  # a signature dtype optdse cannot carry: nothing matches it
            expected = None
        if expected is None or array.dtype != expected:
            raise InvalidArgument(
                f"input {self.alias} has dtype {_dtype_label(array.dtype)}, the signature expects "
                f"{codecs.dtype_name(self.dtype)}"
            )
        if self.shape is None:
            return
        compatible = len(self.shape) == array.ndim and all(
            want in (-1, got) for want, got in zip(self.shape, array.shape)
        )
        if not compatible:
            raise InvalidArgument(
                f"input {self.alias} has shape {list(array.shape)}, the signature expects {list(self.shape)} "
                "(-1: any size)"
            )


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def input(self, alias: str) -> TensorSpec:
        """The input named `alias`; InvalidArgument listing the inputs there are."""
        if alias not in self.inputs:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{', '.join(sorted(self.inputs))}}}."
            )
        return self.inputs[alias]

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        for alias in sorted(set(inputs) - set(self.inputs)):
            self.input(alias)  # raises for the first unknown alias
        missing = sorted(set(self.inputs) - set(inputs))
        if missing:
            raise InvalidArgument(
                f"missing input(s) {', '.join(missing)}; signature {self.name} expects "
                f"{{{', '.join(sorted(self.inputs))}}}"
            )
        for alias, array in inputs.items():
            self.inputs[alias].check(array)

    def select_outputs(self, output_filter: Sequence[str]) -> tuple[str, ...]:
        if not output_filter:
            return tuple(sorted(self.outputs))
        unknown = sorted(set(output_filter) - set(self.outputs))
        if unknown:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {', '.join(unknown)}. "
                f"Outputs expected to be in the set {{{', '.join(sorted(self.outputs))}}}."
            )
        if len(set(output_filter)) != len(output_filter):
            raise InvalidArgument(f"duplicate output in output_filter: {list(output_filter)}")
        return tuple(output_filter)


def _dtype_label(dtype: np.dtype) -> str:
    return "DT_STRING" if dtype == object else str(dtype)


def _tensor_spec(alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpec(alias=alias, tensor_name=info.name, dtype=info.dtype, shape=shape)


class Servable:
    """One version of one model, loaded into a TF Session and ready to run signatures."""

    def __init__(self, name: str, version: int, path: Path, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        import tensorflow as tf

        self.name = name
        self.version = version
        self.path = path
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=intra_op_threads,
            inter_op_parallelism_threads=inter_op_threads,
        )
        # A session-owned pool is what lets RunOptions pick "the caller's thread" (-1).
        config.session_inter_op_thread_pool.add().num_threads = inter_op_threads
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        with self._graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self._session, [SERVE_TAG], str(path))
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self.signatures = {
            key: Signature(
                name=key,
                method_name=sig.method_name,
                inputs={alias: _tensor_spec(alias, info) for alias, info in sig.inputs.items()},
                outputs={alias: _tensor_spec(alias, info) for alias, info in sig.outputs.items()},
            )
            for key, sig in self.signature_defs.items()
            if not key.startswith(_INTERNAL_PREFIX)
        }
        self._callables: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Callable[..., list[np.ndarray]]] = {}
        self._callables_lock = threading.Lock()
        self._op_error = tf.errors.OpError

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """All SignatureDefs, as TF Serving packs them into GetModelMetadata's metadata."""
        return get_model_metadata_pb2.SignatureDefMap(signature_def=self.signature_defs)

    def signature(self, name: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise InvalidArgument(
                f"Serving signature name: \"{key}\" not found in signature def. "
                f"Available: {', '.join(sorted(self.signatures)) or 'none'}"
            )
        return self.signatures[key]

    def run(self, signature: Signature, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Run already-validated `inputs`; returns the requested outputs by alias."""
        input_names = tuple(sorted(inputs))
        call = self._callable(signature, input_names, outputs)
        try:
            values = call(*(inputs[alias] for alias in input_names))
        except self._op_error as error:
            raise from_tf_error(error.error_code, error.message) from None
        return dict(zip(outputs, values))

    def _callable(self, signature: Signature, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Callable[..., list[np.ndarray]]:
        key = (signature.name, inputs, outputs)
        call = self._callables.get(key)
        if call is None:
            with self._callables_lock:
                call = self._callables.get(key)
                if call is None:
                    options = config_pb2.CallableOptions(
                        feed=[signature.inputs[alias].tensor_name for alias in inputs],
                        fetch=[signature.outputs[alias].tensor_name for alias in outputs],
                    )
                    options.run_options.inter_op_thread_pool = -1  # run in the caller's thread
                    call = self._session._make_callable_from_options(options)
                    self._callables[key] = call
        return call

    def warm_up(self) -> None:
        """Build each signature's callable and run it once on a one-row example.

        Building a callable prunes and optimises the graph (tens of milliseconds); doing it
        before the model is declared AVAILABLE keeps that cost out of the first requests,
        as TF Serving's warm-up records do. Examples are zeros (empty strings for string
        inputs); a signature that rejects them is still built, and the failure only logged.
        """
        for signature in self.signatures.values():
            example = {alias: _example(spec) for alias, spec in signature.inputs.items()}
            try:
                self.run(signature, example, tuple(sorted(signature.outputs)))
            except ServingError as error:
                log.info("warm-up of signature %s: %s", signature.name, error)

    def close(self) -> None:
        self._session.close()


def _example(spec: TensorSpec) -> np.ndarray:
    shape = tuple(1 if size < 0 else size for size in (spec.shape or (1,)))
    dtype = codecs.numpy_dtype(spec.dtype)
    return np.full(shape, b"", dtype=object) if dtype == object else np.zeros(shape, dtype=dtype)
