"""One load worker process: its threads send requests and it reports what they saw as it goes.

Closed loop: each of the worker's threads sends one request, waits for the answer, sends the
next (the seed's client). Open loop: the worker's share of the due times is taken in order by
a pool of sender threads, each waiting for its request's time; latency counts from when it was
due, and how late it went out is recorded.

Request k of a closed-loop thread i goes to replica (i + k) mod R; open-loop request k to
replica k mod R: every replica sees every thread.

Every `REPORT_S` the worker sends the parent the records its threads added since the last
report and a watermark: no request it has yet to report was sent (or due) before that time.
The parent judges a window of the run only once every worker's watermark has passed its end
(optdse/stability.py), and can lower the shared stop time to end the run early. Threads
append a record before they move their bound on, and the reporter reads the bounds before
the records, so a report never misses a request sent before its watermark.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from optdse.load.callers import CLIENTS, Caller, CallFailed
from optdse.load.plan import LoadPlan, Record, WorkerReport

if TYPE_CHECKING:
    import multiprocessing
    from multiprocessing.sharedctypes import Synchronized

#: Failures a retrying client sends again elsewhere: the replica refused or dropped the call.
RETRYABLE = frozenset({"UNAVAILABLE"})
#: How long a retrying client leaves a replica that refused a call alone (gRPC's first
#: reconnect backoff is 1 s too).
FAILOVER_HOLD_S = 1.0
#: Seconds between a worker's reports to the parent.
REPORT_S = 0.1


class LoadWorker:
    """The threads of one worker process and what they record.

    `work` is each thread's request count (closed loop; None: until stopped) or this worker's
    share of the due times in seconds from the start (open loop). `start` and `stop_at` are
    shared with the parent: its clock reading at go, and the time after which nothing more
    is sent (the parent may lower it)."""

    def __init__(self, plan: LoadPlan, thread_ids: list[int], work: list[int | None] | np.ndarray,
                 start: Synchronized[float], stop_at: Synchronized[float]) -> None:
        self.plan = plan
        self.thread_ids = thread_ids
        self.work = work
        self.start = start
        self.stop_at = stop_at
        self.client = CLIENTS[plan.protocol](plan)  # connects before the clock starts
        self.callers = [self.client.caller() for _ in thread_ids]
        self.records: list[list[Record]] = [[] for _ in thread_ids]
        self.reported = [0] * len(thread_ids)
        self.checked: list[set[int]] = [set() for _ in thread_ids]  # bodies whose answer each thread has checked
        self.held_until = [0.0] * len(plan.targets)  # a retrying client leaves a refusing replica alone until then
        # Watermark bookkeeping: every future record of a thread is sent (due) at or after its bound.
        self.bounds = [0.0] * len(thread_ids)
        self.due_at = np.asarray(work if plan.open_loop else [], dtype=np.float64)
        self.next_due = 0            # open loop: the next due time no sender has taken yet
        self.take_lock = threading.Lock()

    # -- sending -------------------------------------------------------------------------------

    def pick(self, target: int, now: float) -> int:
        """`target`, or with retries on, the next replica not held off (if any)."""
        targets = len(self.plan.targets)
        if self.plan.retries:
            for step in range(targets):
                candidate = (target + step) % targets
                if self.held_until[candidate] <= now:
                    return candidate
        return target

    def send(self, caller: Caller, target: int, which: int) -> tuple[bytes | None, str, int]:
        """Request `which`, retried elsewhere as the plan allows: (answer, code, retries used)."""
        plan = self.plan
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
                self.held_until[target] = now + FAILOVER_HOLD_S
                target = self.pick((target + 1) % len(plan.targets), now)
        raise AssertionError("unreachable")

    def timed(self, slot: int, target: int, which: int, due: float | None) -> float:
        """Send request `which` to `target` and record it; open loop: from `due`, how late it
        went out. Returns when it was answered."""
        caller = self.callers[slot]
        t0 = time.perf_counter()
        answer, code, retried = self.send(caller, self.pick(target, t0), which)
        t1 = time.perf_counter()
        if answer is not None and which not in self.checked[slot]:  # once per thread and body: a row per input row
            self.checked[slot].add(which)
            if caller.rows(answer) != {self.plan.batches[which]}:
                code = "BAD_RESPONSE"
        start_at = t0 if due is None else due
        self.records[slot].append(Record(start_at, t1 - start_at, code == "OK", code, retried,
                                         0.0 if due is None else t0 - due, self.thread_ids[slot]))
        return t1

    def run_closed(self, slot: int) -> None:
        thread, count = self.thread_ids[slot], self.work[slot]
        targets, bodies = len(self.plan.targets), len(self.plan.bodies)
        k = 0
        while count is None or k < count:
            if time.perf_counter() >= self.stop_at.value:
                break
            self.bounds[slot] = self.timed(slot, (thread + k) % targets, (thread + k) % bodies, None)
            k += 1
        self.bounds[slot] = float("inf")

    def take(self, slot: int) -> int | None:
        """Open loop: the next due request for sender `slot`, or None when none is left."""
        with self.take_lock:
            k = self.next_due
            if k >= len(self.due_at):
                self.bounds[slot] = float("inf")
                return None
            self.next_due += 1
            self.bounds[slot] = self.start.value + float(self.due_at[k])
            return k

    def run_open(self, slot: int) -> None:
        targets, bodies = len(self.plan.targets), len(self.plan.bodies)
        while (k := self.take(slot)) is not None:
            due = self.start.value + float(self.due_at[k])
            if due >= self.stop_at.value:
                with self.take_lock:  # nothing after it will go out either
                    self.next_due = len(self.due_at)
                    self.bounds[slot] = float("inf")
                break
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.timed(slot, k % targets, k % bodies, due)

    # -- reporting -----------------------------------------------------------------------------

    def watermark(self) -> float:
        """No record yet to be reported was sent (due) before this time."""
        with self.take_lock:
            low = min(self.bounds, default=float("inf"))
            if self.plan.open_loop and self.next_due < len(self.due_at):
                low = min(low, self.start.value + float(self.due_at[self.next_due]))
            return low

    def new_records(self) -> list[Record]:
        """Records added since the last call."""
        rows: list[Record] = []
        for slot, records in enumerate(self.records):
            end = len(records)
            rows.extend(records[self.reported[slot]:end])
            self.reported[slot] = end
        return rows

    def run(self, results: multiprocessing.Queue, index: int) -> None:  # type: ignore[type-arg]
        """Run the threads from the shared start and report every REPORT_S until they are done."""
        start_bound = self.start.value
        self.bounds = [start_bound] * len(self.thread_ids)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        run = self.run_open if self.plan.open_loop else self.run_closed
        remaining, all_done, count_lock = [len(self.thread_ids)], threading.Event(), threading.Lock()

        def thread_main(slot: int) -> None:
            try:
                run(slot)
            finally:
                with count_lock:
                    remaining[0] -= 1
                    if not remaining[0]:
                        all_done.set()

        for slot in range(len(self.thread_ids)):
            threading.Thread(target=thread_main, args=(slot,), daemon=True).start()
        while not all_done.wait(REPORT_S):
            mark = self.watermark()  # before the records: see the module docstring
            results.put(WorkerReport(index, self.new_records(), mark))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        results.put(WorkerReport(index, self.new_records(), float("inf"), (cpu, wall)))
        self.client.close()


def worker_main(plan: LoadPlan, index: int, thread_ids: list[int], work: list[int | None] | np.ndarray,
                ready: multiprocessing.Queue, go: multiprocessing.synchronize.Event,  # type: ignore[type-arg]
                results: multiprocessing.Queue, start: Synchronized[float],  # type: ignore[type-arg]
                stop_at: Synchronized[float]) -> None:
    """Entry point of one worker process: connect, wait for `go`, run and report."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides (it stops
    # the workers itself), so a worker does not die mid-request with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if plan.netns:  # before any thread or socket exists: all of them then live in it
        from optdse.relay import enter_netns

        enter_netns(plan.netns)
    worker = LoadWorker(plan, thread_ids, work, start, stop_at)
    ready.put(os.getpid())
    go.wait(60)
    worker.run(results, index)


__all__ = ["FAILOVER_HOLD_S", "REPORT_S", "RETRYABLE", "LoadWorker", "worker_main"]
