"""Server-side dynamic batching, with TF Serving's parameters and their meaning.

Concurrent Predict calls with the same key (signature, inputs, outputs, dtypes and non-batch
dimensions) are gathered into one batch until `max_batch_size` rows are reached or the first
has waited `batch_timeout_micros`; then one model call runs on the rows stacked along
dimension 0 (padded up to the next `allowed_batch_sizes` entry), and the outputs are split
back per request. At most `num_batch_threads` batches run at once; a due batch that finds
them all busy keeps taking compatible requests until one is free. A failed batch fails each
of its requests with the error. When more than `max_enqueued_batches` batches' worth of rows
are waiting, new requests are refused (UNAVAILABLE), as in TF's BasicBatchScheduler.

The parameters file is TF Serving's text-format `BatchingParameters`; it is parsed with
protobuf's own text_format against a descriptor of the fields optdse implements, so the
syntax (wrappers, comments, repeated fields) and error positions are protobuf's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
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


@dataclass(eq=False)
class _Task:
    """One request's rows; `done` is held until a result or an error is set, then released."""

    inputs: dict[str, np.ndarray]
    rows: int
    run: RunBatch
    done: threading.Lock = field(default_factory=threading.Lock)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.done.acquire()

    def finish(self, result: dict[str, np.ndarray] | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.release()

    def wait(self) -> dict[str, np.ndarray]:
        self.done.acquire()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(eq=False)
class _Batch:
    """Compatible tasks gathered behind the first; that task's thread (the leader) runs them."""

    key: Hashable
    due: float  # monotonic time when the batch runs even if not full
    tasks: list[_Task]
    rows: int
    turn: threading.Condition  # on the batcher's lock; notified when this batch may be able to run


class Batcher:
    """Merges concurrent requests into batched model calls (see the module docstring).

    Leader/follower: the request that opens a batch waits out the batch's window in its own
    thread and then runs the batch there; requests that join it sleep until it has run. There
    are no dedicated batch threads: `num_batch_threads` bounds how many batches run at once,
    which is the effect TF's batch threads have. Profiling the earlier design (a queue served
    by batch threads, answers passed back through Futures) showed that every request paid two
    thread wake-ups, each a GIL hand-off, which cost more CPU than merging saved on small
    models; here a request that is not merged costs no hand-off at all, and one that is costs
    one, the release of a plain lock.
    """

    def __init__(self, params: BatchingParameters) -> None:
        self.params = params
        self._lock = threading.Lock()
        self._open: dict[Hashable, _Batch] = {}  # per key, the batch new tasks join
        self._waiting: list[_Batch] = []  # batches whose leader has not started them, oldest first
        self._queued_rows = 0  # rows in waiting batches
        self._running = 0  # batches being run
        self._idle = threading.Condition(self._lock)  # close() waits on it for the last batch
        self._closed = False
        self.calls = 0  # model calls made, and the requests they answered: merging at a glance
        self.requests = 0

    def submit(self, key: Hashable, inputs: dict[str, np.ndarray], run: RunBatch) -> dict[str, np.ndarray]:
        """Run `inputs` as part of a batch of compatible tasks; blocks until the result is ready.

        `key` identifies compatible tasks (the caller includes signature, input and output
        names and dtypes); `run` is the model call for a merged batch.
        """
        rows = _batch_rows(inputs)
        limit = self.params.max_batch_size
        if rows > limit:
            raise InvalidArgument(f"Task size {rows} is larger than maximum batch size {limit}")
        task = _Task(inputs=inputs, rows=rows, run=run)
        key = (key, _non_batch_shapes(inputs))
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._queued_rows + rows > self.params.max_enqueued_batches * limit:
                raise Unavailable("The batch scheduling queue to which this task was submitted is full")
            self._queued_rows += rows
            batch = self._open.get(key)
            if batch is not None and batch.rows + rows <= limit:
                batch.tasks.append(task)
                batch.rows += rows
                if batch.rows >= limit:
                    del self._open[key]
                    batch.turn.notify()  # its leader may be waiting out the window
                leader = False
            else:
                due = time.monotonic() + self.params.batch_timeout_micros / 1e6
                batch = _Batch(key, due, [task], rows, threading.Condition(self._lock))
                self._waiting.append(batch)
                if rows < limit:
                    self._open[key] = batch
                self._wait_for_turn(batch)
                leader = True
        if leader:
            self._run(batch)
        return task.wait()

    def _wait_for_turn(self, batch: _Batch) -> None:
        """With the lock held, wait until `batch` may run, then move it from waiting to running.

        A batch may run when it is due (full, its window over, or the server closing), fewer
        than `num_batch_threads` batches run, and no older batch is due: due batches run in
        the order they were opened. Until then it keeps taking compatible tasks. Each batch
        waits on its own condition, so a wake-up goes to the one leader it concerns: a leader
        woken for nothing costs a GIL hand-off, which on a small model is a sizeable share of
        a request.
        """
        while True:
            now = time.monotonic()
            if self._running < self.params.num_batch_threads and self._next_due(now) is batch:
                break
            batch.turn.wait(None if self._is_due(batch, now) else batch.due - now)
        self._waiting.remove(batch)
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        self._queued_rows -= batch.rows
        self._running += 1
        self.calls += 1
        self.requests += len(batch.tasks)
        self._wake_next()  # a slot may still be free for the next due batch

    def _next_due(self, now: float) -> _Batch | None:
        return next((b for b in self._waiting if self._is_due(b, now)), None)

    def _wake_next(self) -> None:
        """Wake the leader of the oldest due batch if a slot is free for it (lock held)."""
        if self._running < self.params.num_batch_threads:
            batch = self._next_due(time.monotonic())
            if batch is not None:
                batch.turn.notify()

    def _is_due(self, batch: _Batch, now: float) -> bool:
        return self._closed or batch.rows >= self.params.max_batch_size or now >= batch.due

    def _run(self, batch: _Batch) -> None:
        try:
            _run_batch(batch.tasks, self.params)
        finally:
            with self._lock:
                self._running -= 1
                self._wake_next()
                if self._closed and not self._running:
                    self._idle.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new tasks, run the waiting batches at once, and wait (bounded) until all have run."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            for batch in self._waiting:
                batch.turn.notify()
            while (self._waiting or self._running) and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())


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
    """Run one model call on the tasks' rows and finish every task with its rows or the error."""
    finished = 0
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
            task.finish(result={name: array[start:end] for name, array in outputs.items()})
            finished += 1
            start = end
    except BaseException as error:  # noqa: BLE001 - every waiting request must get an answer
        for task in batch[finished:]:
            task.finish(error=error)
        if not isinstance(error, Exception):
            raise
