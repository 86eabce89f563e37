"""The load generator: closed-loop client threads sending Predict over gRPC, timed per request.

Like the seed's client, each of N threads sends one request, waits for the answer, sends the
next. Python's GIL would make one process the bottleneck it measures, so the threads are
spread over several worker processes (one per core by default); each worker records every
request's send time and latency (`time.perf_counter`, CLOCK_MONOTONIC, comparable across
processes) and its own CPU time, which is reported as the client's CPU and never as ACU.

Requests are spread over replicas round robin: request k of thread i goes to replica
(i + k) mod R, so every replica sees every thread.

A run ends when its requests are sent or, if the plan has a duration, when that much time has
passed since the start, whichever comes first: slow models (Inception at a fraction of a core)
would otherwise make one trial take hours. A thread never abandons a request it has sent; it
just sends no more once the time is up.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

#: A worker that has used more than this share of one core was likely the bottleneck.
SATURATED_CORE = 0.9


class LoadError(RuntimeError):
    """The load generator itself failed (a worker died or the run overran its time bound)."""


@dataclass(frozen=True)
class LoadPlan:
    """Everything a run needs: where to send, what, how many, how concurrently."""

    targets: tuple[str, ...]
    body: bytes
    batch: int
    threads: int
    requests: int
    deadline_s: float = 30.0
    processes: int = 0  # 0: one per core, at most one per thread
    duration_s: float | None = None  # stop sending after this long, even if requests remain

    def worker_count(self) -> int:
        wanted = self.processes or (os.cpu_count() or 1)
        return max(1, min(self.threads, wanted))

    def thread_requests(self) -> list[int]:
        """Requests per thread: the total split as evenly as it goes."""
        base, extra = divmod(self.requests, self.threads)
        return [base + (1 if i < extra else 0) for i in range(self.threads)]


@dataclass(frozen=True)
class LoadResult:
    """Every request of a run, sorted by send time, and what the client itself cost."""

    send: np.ndarray        # perf_counter at send, s
    latency: np.ndarray     # s
    ok: np.ndarray          # bool
    thread: np.ndarray      # global thread index
    error_codes: dict[str, int]
    started: float
    finished: float
    client_cpu_seconds: tuple[float, ...]  # per worker process
    client_wall_seconds: tuple[float, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def client_cpu_cores(self) -> float:
        wall = self.finished - self.started
        return sum(self.client_cpu_seconds) / wall if wall > 0 else 0.0

    @property
    def busiest_worker_cores(self) -> float:
        return max((c / w for c, w in zip(self.client_cpu_seconds, self.client_wall_seconds) if w > 0), default=0.0)


def _worker(plan: LoadPlan, thread_ids: list[int], counts: list[int], ready: multiprocessing.Queue,
            go: multiprocessing.Event, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Entry point of one worker process: open channels, wait for `go`, run the threads."""
    import signal

    import grpc

    # Ctrl-C in a terminal reaches the whole process group; the parent decides (it stops
    # the workers itself), so a worker does not die mid-request with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from optdse.protos import PREDICT_METHOD, predict_pb2

    channels = [grpc.insecure_channel(t, options=[("grpc.max_receive_message_length", 256 << 20)])
                for t in plan.targets]
    calls = [ch.unary_unary(PREDICT_METHOD) for ch in channels]  # bytes in, bytes out
    records: list[list[tuple[float, float, bool, str]]] = [[] for _ in thread_ids]

    def run(slot: int) -> None:
        thread, out = thread_ids[slot], records[slot]
        checked = False
        for k in range(counts[slot]):
            if stop_at is not None and time.perf_counter() >= stop_at:
                break
            call = calls[(thread + k) % len(calls)]
            t0 = time.perf_counter()
            try:
                answer = call(plan.body, timeout=plan.deadline_s)
                t1 = time.perf_counter()
                code = "OK"
                if not checked:  # one full check per thread: the reply has one row per input
                    outputs = predict_pb2.PredictResponse.FromString(answer).outputs
                    rows = {o.tensor_shape.dim[0].size for o in outputs.values() if o.tensor_shape.dim}
                    checked = True
                    if rows != {plan.batch}:
                        code = "BAD_RESPONSE"
            except grpc.RpcError as error:
                t1 = time.perf_counter()
                code = error.code().name if error.code() else "UNKNOWN"
            out.append((t0, t1 - t0, code == "OK", code))

    for channel in channels:  # connect before the clock starts
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            pass  # requests will record UNAVAILABLE
    ready.put(os.getpid())
    go.wait(60)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stop_at = None if plan.duration_s is None else wall0 + plan.duration_s
    threads = [threading.Thread(target=run, args=(slot,), daemon=True) for slot in range(len(thread_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    flat = [(*r, tid) for tid, rs in zip(thread_ids, records) for r in rs]
    results.put((flat, cpu, wall))
    for channel in channels:
        channel.close()


def _wait_ready(ready: multiprocessing.Queue, processes: list) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    count = 0
    while count < len(processes):
        try:
            ready.get(timeout=0.5)
            count += 1
        except queue.Empty:
            dead = [p for p in processes if p.exitcode is not None]
            if dead:
                raise LoadError(f"load worker {dead[0].name} exited with {dead[0].exitcode} before starting") from None
            if time.monotonic() > deadline:
                raise LoadError("load workers did not start within 60 s") from None


def run_load(plan: LoadPlan, timeout_s: float = 3600.0) -> LoadResult:
    """Run the plan to completion (bounded by `timeout_s`) and return every request's record."""
    # gRPC does not survive a fork of a process that has used it, and the study's process has
    # (readiness checks). A fork server is a clean process started once per study, with this
    # module (and numpy) already imported: forking workers from it takes ~0.3 s less per
    # trial than spawning a fresh interpreter each time, and they import gRPC themselves.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["optdse.load"])
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    counts = plan.thread_requests()
    workers = plan.worker_count()
    processes = []
    collected: list[tuple[list[tuple[float, float, bool, str, int]], float, float]] = []
    for w in range(workers):
        ids = list(range(w, plan.threads, workers))
        p = context.Process(target=_worker, args=(plan, ids, [counts[i] for i in ids], ready, go, results),
                            name=f"optdse-load-{w}", daemon=True)
        p.start()
        processes.append(p)
    try:
        _wait_ready(ready, processes)
        started = time.perf_counter()
        go.set()
        deadline = time.monotonic() + timeout_s
        while len(collected) < workers:
            try:
                collected.append(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise LoadError(f"load did not finish within {timeout_s:g} s") from None
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise LoadError(f"load worker {dead[0].name} exited with {dead[0].exitcode}") from None
        finished = time.perf_counter()
    finally:
        complete = len(collected) == workers
        for p in processes:
            p.join(timeout=10 if complete else 0)  # an interrupted or failed run stops them now
            if p.is_alive():
                p.kill()
                p.join()
    rows = sorted(r for flat, _, _ in collected for r in flat)
    send = np.array([r[0] for r in rows])
    codes = [r[3] for r in rows]
    errors: dict[str, int] = {}
    for code in codes:
        if code != "OK":
            errors[code] = errors.get(code, 0) + 1
    result = LoadResult(
        send=send, latency=np.array([r[1] for r in rows]), ok=np.array([r[2] for r in rows], dtype=bool),
        thread=np.array([r[4] for r in rows], dtype=np.int64), error_codes=errors, started=started,
        finished=finished, client_cpu_seconds=tuple(c for _, c, _ in collected),
        client_wall_seconds=tuple(w for _, _, w in collected))
    if result.busiest_worker_cores > SATURATED_CORE:
        warning = (f"the load generator saturated a core ({result.busiest_worker_cores:.2f} cores in one "
                   f"worker process): response times may include client queueing")
        result = replace(result, warnings=(warning,))
    return result


__all__ = ["SATURATED_CORE", "LoadError", "LoadPlan", "LoadResult", "run_load"]
