"""Server-side dynamic batching, with TF Serving's parameters and their meaning.

Concurrent Predict calls become tasks in one queue. Each of `num_batch_threads` workers takes
the oldest task, gathers the compatible tasks behind it (same signature, inputs, outputs,
dtypes and non-batch dimensions) until `max_batch_size` rows are reached or the oldest task
has waited `batch_timeout_micros`, runs one model call on the rows stacked along dimension 0
(padded up to the next `allowed_batch_sizes` entry), and splits the outputs back per task.
A failed batch fails each of its tasks with the error. When more than
`max_enqueued_batches` full batches are waiting, new tasks are refused (UNAVAILABLE), as in
TF's BasicBatchScheduler.

The parameters file is TF Serving's text-format `BatchingParameters`; it is parsed with
protobuf's own text_format against a descriptor of the fields optdse implements, so the
syntax (wrappers, comments, repeated fields) and error positions are protobuf's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving.errors import InvalidArgument, Unavailable


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's batching knobs; defaults are TF's BasicBatchScheduler defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes must be positive and strictly increasing, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"the last entry of allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size ({self.max_batch_size})"
                )
        if self.pad_variable_length_inputs:
            raise ValueError("pad_variable_length_inputs is not supported by optdse-serve; remove it or set it to false")

    def padded_size(self, rows: int) -> int:
        """The batch size a batch of `rows` rows is padded up to."""
        return next((size for size in self.allowed_batch_sizes if size >= rows), rows)


def _parameters_message_class() -> type:
    """A runtime descriptor with the BatchingParameters fields optdse implements."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="optdse/batching_parameters.proto",
        package="optdse.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    wrapped = {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
    }
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, number in wrapped.items():
        message.field.add(
            name=name, number=number, label=optional,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value",
        )
    message.field.add(
        name="thread_pool_name", number=5, label=optional,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE, type_name=".google.protobuf.StringValue",
    )
    message.field.add(
        name="allowed_batch_sizes", number=6, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    )
    message.field.add(
        name="pad_variable_length_inputs", number=7, label=optional, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("optdse.serving.BatchingParameters"))


def parse_batching_parameters(text: str, source: str = "<text>") -> BatchingParameters:
    """Parse TF Serving's text format; ValueError names `source`, the position and the problem."""
    message = _parameters_message_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: {error}") from None
    values: dict[str, object] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = message.pad_variable_length_inputs
    try:
        return BatchingParameters(**values)  # type: ignore[arg-type]
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def read_batching_parameters(path: Path) -> BatchingParameters:
    return parse_batching_parameters(path.read_text(), source=str(path))


# --------------------------------------------------------------------------------------------
# The batcher


RunBatch = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class _Task:
    key: Hashable
    inputs: dict[str, np.ndarray]
    rows: int
    run: RunBatch
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)


class Batcher:
    """Merges concurrent requests into batched model calls (see the module docstring)."""

    def __init__(self, params: BatchingParameters) -> None:
        self.params = params
        self._queue: list[_Task] = []
        self._queued_rows = 0
        self._lock = threading.Condition()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True) for i in range(params.num_batch_threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, key: Hashable, inputs: dict[str, np.ndarray], run: RunBatch) -> dict[str, np.ndarray]:
        """Run `inputs` as part of a batch of compatible tasks; blocks until the result is ready.

        `key` identifies compatible tasks (the caller includes signature, input and output
        names and dtypes); `run` is the model call for a merged batch.
        """
        rows = _batch_rows(inputs)
        if rows > self.params.max_batch_size:
            raise InvalidArgument(f"Task size {rows} is larger than maximum batch size {self.params.max_batch_size}")
        task = _Task(key=(key, _non_batch_shapes(inputs)), inputs=inputs, rows=rows, run=run)
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            capacity = self.params.max_enqueued_batches * self.params.max_batch_size
            if self._queued_rows + rows > capacity:
                raise Unavailable("The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._queued_rows += rows
            self._lock.notify_all()
        return task.future.result()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for worker in self._workers:
            worker.join(timeout=5)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            _run_batch(batch, self.params)

    def _next_batch(self) -> list[_Task] | None:
        """Block until a batch is due; remove its tasks from the queue and return them."""
        timeout = self.params.batch_timeout_micros / 1e6
        with self._lock:
            while True:
                if self._closed and not self._queue:
                    return None
                if self._queue:
                    head = self._queue[0]
                    batch, rows = self._compatible_with(head)
                    wait = head.enqueued + timeout - time.monotonic()
                    if rows >= self.params.max_batch_size or wait <= 0 or self._closed:
                        for task in batch:
                            self._queue.remove(task)
                        self._queued_rows -= rows
                        return batch
                    self._lock.wait(wait)
                else:
                    self._lock.wait()

    def _compatible_with(self, head: _Task) -> tuple[list[_Task], int]:
        batch, rows = [], 0
        for task in self._queue:
            if task.key == head.key and rows + task.rows <= self.params.max_batch_size:
                batch.append(task)
                rows += task.rows
        return batch, rows


def _batch_rows(inputs: dict[str, np.ndarray]) -> int:
    sizes = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise InvalidArgument(
            "batching needs every input to have the same size in dimension 0, got "
            + ", ".join(f"{name}: {list(array.shape)}" for name, array in inputs.items())
        )
    return sizes.pop()


def _non_batch_shapes(inputs: dict[str, np.ndarray]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))


def _run_batch(batch: Sequence[_Task], params: BatchingParameters) -> None:
    try:
        rows = sum(task.rows for task in batch)
        padded = params.padded_size(rows)
        merged = {}
        for name in batch[0].inputs:
            parts = [task.inputs[name] for task in batch]
            if padded > rows:
                # Pad with copies of the first row: real data, so no op sees unusual values.
                parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
            merged[name] = np.concatenate(parts, axis=0)
        outputs = batch[0].run(merged)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != padded:
                raise InvalidArgument(
                    f"output {name} has shape {list(array.shape)}, not batched along dimension 0 "
                    f"(batch of {padded}); this signature cannot be served with batching"
                )
        start = 0
        for task in batch:
            end = start + task.rows
            task.future.set_result({name: array[start:end] for name, array in outputs.items()})
            start = end
    except Exception as error:  # noqa: BLE001 - every waiting request must get an answer
        for task in batch:
            if not task.future.done():
                task.future.set_exception(error)
