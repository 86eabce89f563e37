"""The load generator: client threads sending Predict, closed-loop or open-loop, timed per request.

Predict goes over gRPC (the seed's client) or TF Serving's REST API (`protocol: rest`: a JSON
POST to /v1/models/NAME:predict on one persistent HTTP/1.1 connection per thread and replica).
Each protocol is a small client class (optdse/callers.py) that opens its connections before
the clock starts and gives every thread a caller; the timing loop is the same for both.

Like the seed's client, each of N threads sends one request, waits for the answer, sends the
next. Python's GIL would make one process the bottleneck it measures, so the threads are
spread over several worker processes (one per core by default); each worker records every
request's send time and latency (`time.perf_counter`, CLOCK_MONOTONIC, comparable across
processes) and its own CPU time, which is reported as the client's CPU and never as ACU.

Requests are spread over replicas round robin: request k of thread i goes to replica
(i + k) mod R, so every replica sees every thread.

Open loop (`rate_rps`): requests are due on a schedule fixed before the start
(optdse/arrivals.py), split over the worker processes; in each, a pool of sender threads
takes the next due request, waits for its time and sends it. Its latency counts from when it
was due, and how late it went out is recorded: a send is late when every sender was still
waiting for an answer (the pool, `in_flight` in all, was too small) or the client could not
keep up, and a run with many late sends does not measure the offered rate.

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

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

from optdse import signals
from optdse.arrivals import schedule
from optdse.config import PROTOCOLS, ArrivalName, ProtocolName
from optdse.callers import CLIENTS, CallFailed, Caller

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
    rate_rps: float | None = None  # open loop: requests offered per second; None: closed loop (`threads`)
    arrival: ArrivalName = "constant"  # open loop: constant gaps or a Poisson process
    seed: int = 0           # of a Poisson schedule
    in_flight: int = 64     # open loop: sender threads in all, so requests that may wait for answers at once

    def __post_init__(self) -> None:
        if not self.bodies or len(self.bodies) != len(self.batches):
            raise ValueError(f"a plan needs one batch size per body (got {len(self.bodies)} bodies, "
                             f"{len(self.batches)} batch sizes)")
        if self.rate_rps is not None and not (0 < self.rate_rps < float("inf")) or self.in_flight < 1:
            raise ValueError(f"an open-loop plan needs a rate > 0 and in_flight >= 1 (got {self.rate_rps}, "
                             f"{self.in_flight})")
        if self.retries < 0 or self.deadline_s <= 0:
            raise ValueError(f"retries must be >= 0 and the deadline > 0 (got {self.retries}, {self.deadline_s:g} s)")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if self.protocol == "rest" and not self.path.startswith("/"):
            raise ValueError(f"a REST plan needs the predict path, e.g. /v1/models/NAME:predict (got {self.path!r})")

    @property
    def open_loop(self) -> bool:
        return self.rate_rps is not None

    def describe_loop(self) -> str:
        """Which loop drove the load, as the output says it."""
        if self.rate_rps is None:
            return f"closed loop, {self.threads} threads"
        return f"open loop, {self.rate_rps:g} req/s {self.arrival}, up to {self.in_flight} in flight"

    def worker_count(self) -> int:
        wanted = self.processes or (os.cpu_count() or 1)
        return max(1, min(self.in_flight if self.open_loop else self.threads, wanted))

    def due_times(self) -> np.ndarray:
        """Open loop: when each of the `requests` is due, in seconds from the start."""
        assert self.rate_rps is not None
        return schedule(self.rate_rps, self.requests, self.arrival, self.seed)

    def thread_requests(self) -> list[int]:
        """Requests per thread: the total split as evenly as it goes."""
        base, extra = divmod(self.requests, self.threads)
        return [base + (1 if i < extra else 0) for i in range(self.threads)]


@dataclass(frozen=True)
class LoadResult:
    """Every request of a run, sorted by send time, and what the client itself cost."""

    send: np.ndarray        # perf_counter at send (open loop: when it was due), s
    latency: np.ndarray     # s, from `send`
    ok: np.ndarray          # bool
    thread: np.ndarray      # global thread index
    error_codes: dict[str, int]
    started: float
    finished: float
    client_cpu_seconds: tuple[float, ...]  # per worker process
    client_wall_seconds: tuple[float, ...]
    warnings: tuple[str, ...] = field(default=())
    retried: int = 0        # requests sent again to another replica (each retry counted)
    late: np.ndarray = field(default_factory=lambda: np.zeros(0))  # open loop: actual send - due, s
    loop: str = ""          # which loop drove it (LoadPlan.describe_loop)
    offered_rps: float | None = None  # open loop: the plan's rate

    @property
    def client_cpu_cores(self) -> float:
        wall = self.finished - self.started
        return sum(self.client_cpu_seconds) / wall if wall > 0 else 0.0

    @property
    def busiest_worker_cores(self) -> float:
        return max((c / w for c, w in zip(self.client_cpu_seconds, self.client_wall_seconds) if w > 0), default=0.0)


def _worker(plan: LoadPlan, thread_ids: list[int], work: list[int] | np.ndarray, ready: multiprocessing.Queue,
            go: multiprocessing.Event, results: multiprocessing.Queue,  # type: ignore[type-arg]
            start: Synchronized[float]) -> None:
    """Entry point of one worker process: connect, wait for `go`, run the threads. `work` is
    each thread's request count (closed loop) or this worker's share of the due times (open loop).

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
    records: list[list[tuple[float, float, bool, str, int, float]]] = [[] for _ in thread_ids]
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

    def send(caller: Caller, target: int, which: int) -> tuple[bytes | None, str, int]:
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

    checked: list[set[int]] = [set() for _ in thread_ids]  # bodies whose answer each thread has checked

    def timed(slot: int, target: int, which: int, due: float | None) -> None:
        """Send request `which` to `target` and record it; open loop: from `due`, how late it went."""
        caller = callers[slot]
        t0 = time.perf_counter()
        answer, code, retried = send(caller, pick(target, t0), which)
        t1 = time.perf_counter()
        if answer is not None and which not in checked[slot]:  # once per thread and body: a row per input row
            checked[slot].add(which)
            if caller.rows(answer) != {plan.batches[which]}:
                code = "BAD_RESPONSE"
        start_at = t0 if due is None else due
        records[slot].append((start_at, t1 - start_at, code == "OK", code, retried, 0.0 if due is None else t0 - due))

    def run_closed(slot: int) -> None:
        thread = thread_ids[slot]
        for k in range(int(work[slot])):
            if stop_at is not None and time.perf_counter() >= stop_at:
                break
            timed(slot, (thread + k) % targets, (thread + k) % bodies, None)

    due_at = np.asarray(work if plan.open_loop else [], dtype=np.float64)  # open loop: this worker's share, s
    taken = iter(range(len(due_at)))  # the senders' shared queue: next() is atomic under the GIL

    def run_open(slot: int) -> None:
        for k in taken:
            due = start.value + float(due_at[k])
            if stop_at is not None and due >= stop_at:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            timed(slot, k % targets, k % bodies, due)

    ready.put(os.getpid())
    go.wait(60)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stop_at = None if plan.duration_s is None else start.value + plan.duration_s
    run = run_open if plan.open_loop else run_closed
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
    workers = plan.worker_count()
    shares: list[tuple[list[int], list[int] | np.ndarray]] = []  # per worker: thread ids, their work
    if plan.open_loop:  # request k is due at due[k]; worker w sends k = w, w + W, ... with its senders
        due = plan.due_times()
        senders = -(-plan.in_flight // workers)
        shares = [(list(range(w * senders, (w + 1) * senders)), due[w::workers]) for w in range(workers)]
    else:
        counts = plan.thread_requests()
        shares = [(ids, [counts[i] for i in ids]) for ids in (list(range(w, plan.threads, workers))
                                                              for w in range(workers))]
    processes = []
    collected: list[tuple[list[tuple[float, float, bool, str, int, float, int]], float, float]] = []
    try:
        for w, (ids, work) in enumerate(shares):
            p = context.Process(target=_worker, args=(plan, ids, work, ready, go, results, start),
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
        thread=np.array([r[6] for r in rows], dtype=np.int64), error_codes=errors, started=started,
        finished=finished, client_cpu_seconds=tuple(c for _, c, _ in collected),
        client_wall_seconds=tuple(w for _, _, w in collected), retried=sum(r[4] for r in rows),
        late=np.array([r[5] for r in rows]), loop=plan.describe_loop(), offered_rps=plan.rate_rps)
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


__all__ = ["SATURATED_CORE", "LoadError", "LoadPlan", "LoadResult", "run_load",
           "stop_helpers"]
