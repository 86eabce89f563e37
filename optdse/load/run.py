"""Running a load plan: worker processes started together, their reports gathered as they come.

Python's GIL would make one process the bottleneck it measures, so a plan's threads are
spread over several worker processes (one per core by default, optdse/load/worker.py); each
records every request's send time and latency (`time.perf_counter`, CLOCK_MONOTONIC,
comparable across processes) and its own CPU time, which is reported as the client's CPU and
never as ACU.

A run ends when its requests are sent, when `duration_s` has passed since the start, or,
with a stability rule, once the rule is met (optdse/stability.py: the workers' reports are
judged window by window as they arrive, and the shared stop time is lowered to the end of
the last window), whichever comes first. A thread never abandons a request it has sent; it
just sends no more once the time is up.

Every request has a deadline (`deadline_s`, 30 s by default); one not answered by then is an
error (DEADLINE_EXCEEDED), like any failure. With `retries` > 0 the client behaves as a real
one with a retry policy would when a replica dies: a request refused as UNAVAILABLE is sent
again to the next replica (within what is left of its deadline, at most `retries` times), and
the refusing replica is skipped for a second. With `netns` set, the workers enter that network
namespace before they open a connection (optdse/network.py's netem method).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from optdse import signals
from optdse.load.plan import LoadError, LoadPlan, LoadResult, Record, WorkerReport
from optdse.stability import StabilityJudge, StabilityRule

#: A worker that has used more than this share of one core was likely the bottleneck.
SATURATED_CORE = 0.9


class Gathered:
    """The workers' reports so far: their records, in arrival order, and their watermarks."""

    def __init__(self, workers: int) -> None:
        self.rows: list[Record] = []
        self.marks = [float("-inf")] * workers
        self.usage: dict[int, tuple[float, float]] = {}  # per finished worker: (cpu, wall) seconds
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, report: WorkerReport) -> None:
        self.rows.extend(report.records)
        self._arrays = None
        self.marks[report.worker] = max(self.marks[report.worker], report.watermark)  # inf once done
        if report.usage is not None:  # its last report: nothing more will come from it
            self.usage[report.worker] = report.usage

    @property
    def watermark(self) -> float:
        """No request still to be reported was sent (due) before this time."""
        return min(self.marks)

    @property
    def finished(self) -> bool:
        return len(self.usage) == len(self.marks)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(send, latency, ok) of the records so far."""
        if self._arrays is None:
            rows = self.rows
            self._arrays = (np.fromiter((r.send for r in rows), np.float64, len(rows)),
                            np.fromiter((r.latency for r in rows), np.float64, len(rows)),
                            np.fromiter((r.ok for r in rows), bool, len(rows)))
        return self._arrays


def _shares(plan: LoadPlan, workers: int) -> list[tuple[list[int], list[int | None] | np.ndarray]]:
    """Per worker: its global thread ids and their work (closed loop: request counts; open loop:
    its due times — request k is due at due[k], worker w sends k = w, w + W, ... with its senders)."""
    if plan.open_loop:
        due = plan.due_times()
        senders = -(-plan.in_flight // workers)
        return [(list(range(w * senders, (w + 1) * senders)), due[w::workers]) for w in range(workers)]
    counts = plan.thread_requests()
    return [(ids, [counts[i] for i in ids]) for ids in (list(range(w, plan.threads, workers)) for w in range(workers))]


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


def run_load(plan: LoadPlan, timeout_s: float = 3600.0, on_start: Callable[[], None] | None = None,
             rule: StabilityRule | None = None) -> LoadResult:
    """Run the plan (bounded by `timeout_s`) and return every request's record. With `rule`,
    the run stops once the rule is met (or at the plan's duration), and the result carries
    the judge with its windows. `on_start` is called as the clock starts (the chaos option
    arms its timer there)."""
    # gRPC does not survive a fork of a process that has used it, and the study's process has
    # (readiness checks). A fork server is a clean process started once per study, with the
    # worker module (and numpy) already imported: forking workers from it takes ~0.3 s less
    # per trial than spawning a fresh interpreter each time, and they import gRPC themselves.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["optdse.load.worker"])
    from optdse.load.worker import worker_main

    ready, results, go = context.Queue(), context.Queue(), context.Event()
    start, stop_at = context.Value("d", 0.0, lock=False), context.Value("d", float("inf"), lock=False)
    shares = _shares(plan, plan.worker_count())
    gathered = Gathered(len(shares))
    judge: StabilityJudge | None = None
    stopped_at: float | None = None
    processes = []
    try:
        for index, (ids, work) in enumerate(shares):
            p = context.Process(target=worker_main, args=(plan, index, ids, work, ready, go, results, start, stop_at),
                                name=f"optdse-load-{index}", daemon=True)
            # A stop between the fork and the append would leave a worker the `finally` cannot
            # kill: at exit multiprocessing unlinks the queues' semaphores before it terminates
            # daemons, and a worker still unpickling them prints a FileNotFoundError traceback.
            with signals.atomic():
                p.start()
                processes.append(p)
        _wait_ready(ready, processes)
        started = start.value = time.perf_counter()
        if plan.duration_s is not None:
            stop_at.value = started + plan.duration_s
        judge = StabilityJudge(rule, started) if rule is not None else None
        go.set()
        if on_start is not None:
            on_start()
        deadline = time.monotonic() + timeout_s
        while not gathered.finished:
            try:
                gathered.add(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise LoadError(f"load did not finish within {timeout_s:g} s") from None
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise LoadError(f"load worker {dead[0].name} exited with {dead[0].exitcode}") from None
                continue
            if judge is not None and stopped_at is None and gathered.watermark >= judge.next_end:
                stop = judge.update(*gathered.arrays(), gathered.watermark)
                if stop is not None:
                    stopped_at = stop_at.value = min(stop_at.value, stop)
        finished = time.perf_counter()
        if judge is not None and not judge.stable:  # the run reached its duration: close what it holds
            judge.update(*gathered.arrays(), gathered.watermark)
    finally:
        for p in processes:
            p.join(timeout=10 if gathered.finished else 0)  # an interrupted or failed run stops them now
            if p.is_alive():
                p.kill()
                p.join()
    return _result(plan, gathered, started, finished, judge, stopped_at)


def _result(plan: LoadPlan, gathered: Gathered, started: float, finished: float,
            judge: StabilityJudge | None, stopped_at: float | None) -> LoadResult:
    rows = sorted(gathered.rows)
    errors: dict[str, int] = {}
    for row in rows:
        if row.code != "OK":
            errors[row.code] = errors.get(row.code, 0) + 1
    usage = [gathered.usage[i] for i in sorted(gathered.usage)]
    result = LoadResult(
        send=np.array([r.send for r in rows]), latency=np.array([r.latency for r in rows]),
        ok=np.array([r.ok for r in rows], dtype=bool), thread=np.array([r.thread for r in rows], dtype=np.int64),
        error_codes=errors, started=started, finished=finished, client_cpu_seconds=tuple(c for c, _ in usage),
        client_wall_seconds=tuple(w for _, w in usage), retried=sum(r.retried for r in rows),
        late=np.array([r.late for r in rows]), loop=plan.describe_loop(), offered_rps=plan.rate_rps,
        stopped_at=stopped_at, judge=judge)
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


__all__ = ["SATURATED_CORE", "Gathered", "run_load", "stop_helpers"]
