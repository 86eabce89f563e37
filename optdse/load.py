"""The load generator: closed-loop client threads sending Predict, timed per request.

Predict goes over gRPC (the seed's client) or TF Serving's REST API (`protocol: rest`: a JSON
POST to /v1/models/NAME:predict on one persistent HTTP/1.1 connection per thread and replica).
Each protocol is a small client class (`_GrpcClient`, `_RestClient`) that opens its
connections before the clock starts and gives every thread a caller; the timing loop is the
same for both.

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

Every request has a deadline (`deadline_s`, 30 s by default); one not answered by then is an
error (DEADLINE_EXCEEDED), like any failure. With `retries` > 0 the client behaves as a real
one with a retry policy would when a replica dies: a request refused as UNAVAILABLE is sent
again to the next replica (within what is left of its deadline, at most `retries` times), and
the refusing replica is skipped for FAILOVER_HOLD_S. With `retries` 0 (the seed's client)
every failure is an error. With `netns` set, the workers enter that network namespace before
they open a connection (optdse/network.py's netem method).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

from optdse import signals
from optdse.config import PROTOCOLS, ProtocolName
from optdse.http1 import KeptAliveConnection, ProtocolError

#: A worker that has used more than this share of one core was likely the bottleneck.
SATURATED_CORE = 0.9
#: Failures a retrying client sends again elsewhere: the replica refused or dropped the call.
RETRYABLE = frozenset({"UNAVAILABLE"})
#: How long a retrying client leaves a replica that refused a call alone (gRPC's first
#: reconnect backoff is 1 s too).
FAILOVER_HOLD_S = 1.0


class LoadError(RuntimeError):
    """The load generator itself failed (a worker died or the run overran its time bound)."""


@dataclass(frozen=True)
class LoadPlan:
    """Everything a run needs: where to send, what, how many, how concurrently."""

    targets: tuple[str, ...]
    bodies: tuple[bytes, ...]  # requests sent in turn (optdse/payloads.py)
    batches: tuple[int, ...]   # rows the answer to each must carry
    threads: int
    requests: int
    deadline_s: float = 30.0
    processes: int = 0  # 0: one per core, at most one per thread
    duration_s: float | None = None  # stop sending after this long, even if requests remain
    protocol: ProtocolName = "grpc"  # "grpc": targets are gRPC host:port; "rest": REST host:port
    path: str = ""          # REST: the predict path, /v1/models/NAME:predict
    retries: int = 0        # times a refused request is sent again to another replica
    netns: str | None = None  # a network namespace (/run/netns/NAME) the workers enter first

    def __post_init__(self) -> None:
        if not self.bodies or len(self.bodies) != len(self.batches):
            raise ValueError(f"a plan needs one batch size per body (got {len(self.bodies)} bodies, "
                             f"{len(self.batches)} batch sizes)")
        if self.retries < 0 or self.deadline_s <= 0:
            raise ValueError(f"retries must be >= 0 and the deadline > 0 (got {self.retries}, {self.deadline_s:g} s)")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if self.protocol == "rest" and not self.path.startswith("/"):
            raise ValueError(f"a REST plan needs the predict path, e.g. /v1/models/NAME:predict (got {self.path!r})")

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
    retried: int = 0        # requests sent again to another replica (each retry counted)

    @property
    def client_cpu_cores(self) -> float:
        wall = self.finished - self.started
        return sum(self.client_cpu_seconds) / wall if wall > 0 else 0.0

    @property
    def busiest_worker_cores(self) -> float:
        return max((c / w for c, w in zip(self.client_cpu_seconds, self.client_wall_seconds) if w > 0), default=0.0)


class CallFailed(Exception):
    """One request failed; `code` is what the run records for it."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Caller(Protocol):
    """What a load thread needs of a protocol."""

    def call(self, target: int, timeout: float, which: int) -> bytes:
        """Send the plan's request `which` to target `target` and return the answer's bytes, or raise
        CallFailed with a code: a gRPC status name (UNAVAILABLE, DEADLINE_EXCEEDED) or HTTP_<status>.
        gRPC gives up after `timeout` s; REST after the plan's deadline (a socket option)."""
        ...

    def rows(self, answer: bytes) -> set[int]:
        """The first dimension of every output in `answer` (one row per input is expected)."""
        ...


class _Client(Protocol):
    """One worker's connections for a protocol, opened before the clock starts."""

    def caller(self) -> _Caller:
        """A caller for one thread (threads may share one, where the protocol allows)."""
        ...

    def close(self) -> None: ...


class _GrpcClient:
    """gRPC: one channel per target, shared by the worker's threads (gRPC multiplexes calls),
    the request sent as pre-serialized bytes."""

    def __init__(self, plan: LoadPlan) -> None:
        import grpc

        from optdse.protos import PREDICT_METHOD, predict_pb2

        self._grpc, self._response = grpc, predict_pb2.PredictResponse
        self._bodies, self._deadline = plan.bodies, plan.deadline_s
        self._channels = [grpc.insecure_channel(t, options=[("grpc.max_receive_message_length", 256 << 20)])
                          for t in plan.targets]
        self._calls = [ch.unary_unary(PREDICT_METHOD) for ch in self._channels]  # bytes in, bytes out
        for channel in self._channels:
            try:
                grpc.channel_ready_future(channel).result(timeout=30)
            except grpc.FutureTimeoutError:
                pass  # requests will record UNAVAILABLE

    def caller(self) -> _GrpcClient:
        return self

    def call(self, target: int, timeout: float, which: int) -> bytes:
        try:
            return self._calls[target](self._bodies[which], timeout=timeout)
        except self._grpc.RpcError as error:
            raise CallFailed(error.code().name if error.code() else "UNKNOWN") from None

    def rows(self, answer: bytes) -> set[int]:
        outputs = self._response.FromString(answer).outputs
        return {o.tensor_shape.dim[0].size for o in outputs.values() if o.tensor_shape.dim}

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


class _RestClient:
    """REST: every thread gets its own HTTP/1.1 connection to each target, kept open across
    requests and reopened after a connection error (optdse/http1.py says why not http.client)."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self._callers: list[_RestCaller] = []

    def caller(self) -> _RestCaller:
        caller = _RestCaller(self.plan)
        self._callers.append(caller)
        return caller

    def close(self) -> None:
        for caller in self._callers:
            caller.close()


class _RestCaller:
    """One thread's connections, each with its request's bytes built once."""

    def __init__(self, plan: LoadPlan) -> None:
        self._connections = []
        for target in plan.targets:
            host, _, port = target.rpartition(":")
            connection = KeptAliveConnection(host, int(port), plan.path, plan.bodies, "application/json",
                                             plan.deadline_s)
            try:
                connection.connect()  # before the clock starts; a refused one is retried per request
            except OSError:
                connection.close()
            self._connections.append(connection)

    def call(self, target: int, timeout: float, which: int) -> bytes:
        try:
            status, answer = self._connections[target].post(which)
        except TimeoutError:
            raise CallFailed("DEADLINE_EXCEEDED") from None
        except OSError:  # refused, reset, closed early: the next request reconnects
            raise CallFailed("UNAVAILABLE") from None
        except ProtocolError:
            raise CallFailed("BAD_RESPONSE") from None
        if status != 200:
            raise CallFailed(f"HTTP_{status}")
        return answer

    def rows(self, answer: bytes) -> set[int]:
        try:
            answer_json = json.loads(answer)
        except ValueError:
            return set()
        if isinstance(answer_json, dict) and isinstance(answer_json.get("predictions"), list):
            return {len(answer_json["predictions"])}  # the row format: one prediction per row
        outputs = answer_json.get("outputs") if isinstance(answer_json, dict) else None
        columns = outputs.values() if isinstance(outputs, dict) else [outputs]  # columnar: one output, or named
        return {len(column) for column in columns if isinstance(column, list)}

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


#: The client class of each protocol (LoadPlan.protocol).
CLIENTS: dict[str, Callable[[LoadPlan], _Client]] = {"grpc": _GrpcClient, "rest": _RestClient}


def _worker(plan: LoadPlan, thread_ids: list[int], counts: list[int], ready: multiprocessing.Queue,
            go: multiprocessing.Event, results: multiprocessing.Queue,  # type: ignore[type-arg]
            start: Synchronized[float]) -> None:
    """Entry point of one worker process: connect, wait for `go`, run the threads.

    The duration counts from `start`, the parent's clock reading when it said go
    (perf_counter is CLOCK_MONOTONIC, shared by all processes), not from when this worker
    woke up: on a loaded machine a worker can wake tens of milliseconds late, and would
    then send past the end of the run."""
    import signal

    # Ctrl-C in a terminal reaches the whole process group; the parent decides (it stops
    # the workers itself), so a worker does not die mid-request with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    if plan.netns:  # before any thread or socket exists: all of them then live in it
        from optdse.relay import enter_netns

        enter_netns(plan.netns)
    client = CLIENTS[plan.protocol](plan)  # connects before the clock starts
    callers = [client.caller() for _ in thread_ids]
    records: list[list[tuple[float, float, bool, str, int]]] = [[] for _ in thread_ids]
    targets, bodies = len(plan.targets), len(plan.bodies)
    held_until = [0.0] * targets  # a retrying client leaves a refusing replica alone until then

    def pick(target: int, now: float) -> int:
        """`target`, or with retries on, the next replica not held off (if any)."""
        if plan.retries:
            for step in range(targets):
                candidate = (target + step) % targets
                if held_until[candidate] <= now:
                    return candidate
        return target

    def send(caller: _Caller, target: int, which: int) -> tuple[bytes | None, str, int]:
        """Request `which`, retried elsewhere as the plan allows: (answer, code, retries used)."""
        t0 = time.perf_counter()
        for attempt in range(plan.retries + 1):
            left = plan.deadline_s - (time.perf_counter() - t0)
            if left <= 0:
                return None, "DEADLINE_EXCEEDED", attempt
            try:
                return caller.call(target, left, which), "OK", attempt
            except CallFailed as failure:
                if failure.code not in RETRYABLE or attempt == plan.retries:
                    return None, failure.code, attempt
                now = time.perf_counter()
                held_until[target] = now + FAILOVER_HOLD_S
                target = pick((target + 1) % targets, now)
        raise AssertionError("unreachable")

    def run(slot: int) -> None:
        thread, out, caller = thread_ids[slot], records[slot], callers[slot]
        checked: set[int] = set()
        for k in range(counts[slot]):
            if stop_at is not None and time.perf_counter() >= stop_at:
                break
            which = (thread + k) % bodies
            t0 = time.perf_counter()
            answer, code, retried = send(caller, pick((thread + k) % targets, t0), which)
            t1 = time.perf_counter()
            if answer is not None and which not in checked:  # one full check per thread and body: a row per input row
                checked.add(which)
                if caller.rows(answer) != {plan.batches[which]}:
                    code = "BAD_RESPONSE"
            out.append((t0, t1 - t0, code == "OK", code, retried))

    ready.put(os.getpid())
    go.wait(60)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stop_at = None if plan.duration_s is None else start.value + plan.duration_s
    threads = [threading.Thread(target=run, args=(slot,), daemon=True) for slot in range(len(thread_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    flat = [(*r, tid) for tid, rs in zip(thread_ids, records) for r in rs]
    results.put((flat, cpu, wall))
    client.close()


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


def run_load(plan: LoadPlan, timeout_s: float = 3600.0, on_start: Callable[[], None] | None = None) -> LoadResult:
    """Run the plan to completion (bounded by `timeout_s`) and return every request's record.
    `on_start` is called as the clock starts (the chaos option arms its timer there)."""
    # gRPC does not survive a fork of a process that has used it, and the study's process has
    # (readiness checks). A fork server is a clean process started once per study, with this
    # module (and numpy) already imported: forking workers from it takes ~0.3 s less per
    # trial than spawning a fresh interpreter each time, and they import gRPC themselves.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["optdse.load"])
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    start = context.Value("d", 0.0)
    counts = plan.thread_requests()
    workers = plan.worker_count()
    processes = []
    collected: list[tuple[list[tuple[float, float, bool, str, int, int]], float, float]] = []
    try:
        for w in range(workers):
            ids = list(range(w, plan.threads, workers))
            p = context.Process(target=_worker, args=(plan, ids, [counts[i] for i in ids], ready, go, results, start),
                                name=f"optdse-load-{w}", daemon=True)
            # A stop between the fork and the append would leave a worker the `finally` cannot
            # kill: at exit multiprocessing unlinks the queues' semaphores before it terminates
            # daemons, and a worker still unpickling them prints a FileNotFoundError traceback.
            with signals.atomic():
                p.start()
                processes.append(p)
        _wait_ready(ready, processes)
        started = start.value = time.perf_counter()
        go.set()
        if on_start is not None:
            on_start()
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
        thread=np.array([r[5] for r in rows], dtype=np.int64), error_codes=errors, started=started,
        finished=finished, client_cpu_seconds=tuple(c for _, c, _ in collected),
        client_wall_seconds=tuple(w for _, _, w in collected), retried=sum(r[4] for r in rows))
    if result.busiest_worker_cores > SATURATED_CORE:
        warning = (f"the load generator saturated a core ({result.busiest_worker_cores:.2f} cores in one "
                   f"worker process): response times may include client queueing")
        result = replace(result, warnings=(warning,))
    return result


def stop_helpers() -> None:
    """Stop the load generator's fork server and multiprocessing's resource tracker now, and
    wait until they have exited. Left alone, each exits by itself once this process has gone,
    a few milliseconds later: a command would return with its helpers still running (the
    signal tests saw one). Python has no public API for this; `_stop` is what CPython's own
    tests use, and a test here fails if a new Python drops it (tests/optdse_tests/test_load.py)."""
    import gc
    from multiprocessing import forkserver, resource_tracker

    gc.collect()  # finished runs' queues unlink their semaphores first, or the tracker reports them leaked
    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):  # noqa: SLF001
        helper._stop()  # noqa: SLF001  # a no-op where it never started


__all__ = ["CLIENTS", "SATURATED_CORE", "CallFailed", "LoadError", "LoadPlan", "LoadResult", "run_load",
           "stop_helpers"]
