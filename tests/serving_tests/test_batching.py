"""Dynamic batching: merging, splitting, timeouts, limits and failures, then on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.batching import Batcher, BatchingParameters
from serving.errors import InvalidArgument, Unavailable
from tests.serving_process import ServerProcess


class Recorder:
    """A model stand-in that records the batch sizes it was called with (doubles its input)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.sizes.append(len(inputs["x"]))
        time.sleep(self.delay)
        if self.fail:
            raise InvalidArgument("model refused the batch")
        return {"y": inputs["x"] * 2}


def submit_many(batcher: Batcher, model: Recorder, rows: list[int]) -> list[np.ndarray]:
    def one(i: int) -> np.ndarray:
        x = np.full((rows[i], 3), float(i), np.float32)
        return batcher.submit("sig", {"x": x}, model)["y"]

    with ThreadPoolExecutor(len(rows)) as pool:
        return list(pool.map(one, range(len(rows))))


def test_concurrent_requests_merge_and_split_back() -> None:
    batcher = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=200_000, num_batch_threads=1))
    model = Recorder()
    try:
        results = submit_many(batcher, model, rows=[1, 2, 3, 4] * 4)
    finally:
        batcher.close()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full(([1, 2, 3, 4] * 4)[i:i + 1] + [3], 2.0 * i))
    assert sum(model.sizes) == 40
    assert len(model.sizes) < 16, f"no merging happened: {model.sizes}"


def test_batches_respect_max_batch_size_and_padding() -> None:
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=2,
                                allowed_batch_sizes=(4, 8))
    batcher = Batcher(params)
    model = Recorder()
    try:
        results = submit_many(batcher, model, rows=[3] * 10)
    finally:
        batcher.close()
    assert all(size in (4, 8) for size in model.sizes), model.sizes
    assert all(result.shape == (3, 3) for result in results)


def test_timeout_zero_runs_a_lone_request_at_once() -> None:
    batcher = Batcher(BatchingParameters(max_batch_size=32, batch_timeout_micros=0, num_batch_threads=1))
    model = Recorder()
    try:
        started = time.monotonic()
        batcher.submit("sig", {"x": np.ones((1, 3), np.float32)}, model)
        assert time.monotonic() - started < 5.0
    finally:
        batcher.close()
    assert model.sizes == [1]


def test_a_lone_request_runs_in_its_own_thread() -> None:
    """No hand-off to another thread when nothing merges: the leader runs its own batch."""
    batcher = Batcher(BatchingParameters(max_batch_size=32, batch_timeout_micros=0, num_batch_threads=1))
    ran_in: list[threading.Thread] = []

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ran_in.append(threading.current_thread())
        return {"y": inputs["x"]}

    try:
        batcher.submit("sig", {"x": np.ones((1, 3), np.float32)}, model)
    finally:
        batcher.close()
    assert ran_in == [threading.current_thread()]
    assert (batcher.calls, batcher.requests) == (1, 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_num_batch_threads_bounds_the_batches_run_at_once(threads: int) -> None:
    batcher = Batcher(BatchingParameters(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=threads))
    running, most = 0, 0
    lock = threading.Lock()

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return {"y": inputs["x"]}

    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(batcher.submit, "sig", {"x": np.ones((1, 3), np.float32)}, model) for _ in range(6)]
            assert all(f.result(30)["y"].shape == (1, 3) for f in futures)
    finally:
        batcher.close()
    assert most == threads


def test_a_due_batch_keeps_taking_requests_while_the_model_is_busy() -> None:
    """With the one slot busy, requests gather behind it and run as one call when it frees."""
    batcher = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=0, num_batch_threads=1))
    model = Recorder(delay=0.5)
    try:
        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(batcher.submit, "sig", {"x": np.ones((1, 3), np.float32)}, model)
            time.sleep(0.1)  # the first call is running now
            rest = [pool.submit(batcher.submit, "sig", {"x": np.ones((1, 3), np.float32)}, model) for _ in range(5)]
            assert all(f.result(30)["y"].shape == (1, 3) for f in [first, *rest])
    finally:
        batcher.close()
    assert model.sizes == [1, 5]


def test_a_failed_batch_fails_each_request() -> None:
    batcher = Batcher(BatchingParameters(max_batch_size=16, batch_timeout_micros=100_000, num_batch_threads=1))
    model = Recorder(fail=True)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.submit, "sig", {"x": np.ones((1, 3), np.float32)}, model) for _ in range(4)]
            errors = [f.exception(timeout=30) for f in futures]
    finally:
        batcher.close()
    assert all(isinstance(e, InvalidArgument) and "refused" in str(e) for e in errors)


def test_oversized_task_and_full_queue_are_refused() -> None:
    batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1,
                                         max_enqueued_batches=1))
    slow = Recorder(delay=0.5)
    try:
        with pytest.raises(InvalidArgument, match="larger than maximum batch size 4"):
            batcher.submit("sig", {"x": np.ones((5, 3), np.float32)}, slow)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.submit, "sig", {"x": np.ones((4, 3), np.float32)}, slow) for _ in range(4)]
            outcomes = [f.exception(timeout=30) for f in futures]
    finally:
        batcher.close()
    assert any(isinstance(e, Unavailable) and "full" in str(e) for e in outcomes), outcomes
    assert any(e is None for e in outcomes)


def test_incompatible_requests_are_not_merged() -> None:
    batcher = Batcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=100_000, num_batch_threads=1))
    model = Recorder()
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(batcher.submit, "sig", {"x": np.ones((2, 3), np.float32)}, model)
            b = pool.submit(batcher.submit, "sig", {"x": np.ones((2, 5), np.float32)}, model)
            assert a.result(30)["y"].shape == (2, 3) and b.result(30)["y"].shape == (2, 5)
    finally:
        batcher.close()
    assert sorted(model.sizes) == [2, 2]


@pytest.fixture(scope="module")
def batching_server(mnist_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    params = tmp_path_factory.mktemp("batching") / "batching.txt"
    params.write_text("max_batch_size { value: 256 }\nbatch_timeout_micros { value: 2000 }\nnum_batch_threads { value: 2 }\n")
    process = ServerProcess(mnist_base_path, "mnist", True, "--enable_batching", f"--batching_parameters_file={params}")
    try:
        process.wait_available()
        yield process
    finally:
        assert process.stop() == 0, process.log()


@pytest.mark.slow
def test_batching_server_answers_each_client_with_its_own_rows(batching_server: ServerProcess, mnist_base_path: Path) -> None:
    reference = tf.saved_model.load(str(mnist_base_path / "1")).signatures["predict_images"]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(batching_server.channel)
    rng = np.random.default_rng(7)
    batches = [rng.random((1 + i % 5, 784), dtype=np.float32) for i in range(64)]

    def call(images: np.ndarray) -> np.ndarray:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        return tf.make_ndarray(stub.Predict(request, 30.0).outputs["scores"])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, batches))
    for images, scores in zip(batches, results):
        np.testing.assert_allclose(scores, reference(images=tf.constant(images))["scores"].numpy(), rtol=1e-5, atol=1e-6)
