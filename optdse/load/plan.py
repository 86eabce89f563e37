"""What a load run is asked to do (`LoadPlan`) and what it saw (`LoadResult`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from optdse.config import PROTOCOLS, ApiName, ArrivalName, ProtocolName
from optdse.load.arrivals import schedule
from optdse.stability import StabilityJudge


class LoadError(RuntimeError):
    """The load generator itself failed (a worker died or the run overran its time bound)."""


@dataclass(frozen=True)
class LoadPlan:
    """Everything a run needs: where to send, what, how many, how concurrently.

    `requests` None: no count, the run goes on until it is told to stop (the stability rule)
    or `duration_s` has passed, so it needs a duration."""

    targets: tuple[str, ...]
    bodies: tuple[bytes, ...]  # requests sent in turn (optdse/payloads.py)
    batches: tuple[int, ...]   # rows the answer to each must carry
    threads: int
    requests: int | None
    deadline_s: float = 30.0
    processes: int = 0  # 0: one per core, at most one per thread
    duration_s: float | None = None  # stop sending after this long, even if requests remain
    protocol: ProtocolName = "grpc"  # "grpc": targets are gRPC host:port; "rest": REST host:port
    path: str = ""          # REST: the predict path, /v1/models/NAME:predict (v2: /v2/models/NAME/infer)
    api: ApiName = "tfserving"  # TF Serving's Predict API, or the Open Inference Protocol (optdse/oip.py)
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
        if self.requests is None and self.duration_s is None:
            raise ValueError("a plan without a request count needs a duration (runs are bounded)")
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
        """Open loop: when each request is due, in seconds from the start: `requests` of them,
        or without a count as many as `duration_s` holds."""
        assert self.rate_rps is not None
        count = self.requests
        if count is None:
            assert self.duration_s is not None
            count = int(np.ceil(self.rate_rps * self.duration_s)) + 1
        return schedule(self.rate_rps, count, self.arrival, self.seed)

    def thread_requests(self) -> list[int | None]:
        """Closed loop: requests per thread, the total split as evenly as it goes (None: no count)."""
        if self.requests is None:
            return [None] * self.threads
        base, extra = divmod(self.requests, self.threads)
        return [base + (1 if i < extra else 0) for i in range(self.threads)]


class Record(NamedTuple):
    """One request as a worker reports it. A named tuple: a run makes one per request, and
    sorting the gathered records by send time is a tuple sort."""

    send: float      # perf_counter at send, s (open loop: when it was due)
    latency: float   # s
    ok: bool
    code: str        # "OK" or the error's code
    retried: int     # sent again to another replica after a refusal (0 or 1)
    late: float      # open loop: how long after it was due it went out, s
    thread: int      # the run's thread index that sent it


@dataclass(frozen=True)
class WorkerReport:
    """What a load worker process sends the run every REPORT_S, and once when it is done."""

    worker: int
    records: list[Record]    # the requests finished since its last report
    watermark: float         # no request still to be reported was sent (due) before this time
    usage: tuple[float, float] | None = None  # in its last report: its CPU and wall seconds

    @property
    def done(self) -> bool:
        return self.usage is not None


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
    stopped_at: float | None = None   # when the run was told to stop sending (the stability rule), if it was
    judge: StabilityJudge | None = None  # with a stability rule: its windows and verdict

    @property
    def client_cpu_cores(self) -> float:
        wall = self.finished - self.started
        return sum(self.client_cpu_seconds) / wall if wall > 0 else 0.0

    @property
    def busiest_worker_cores(self) -> float:
        return max((c / w for c, w in zip(self.client_cpu_seconds, self.client_wall_seconds) if w > 0), default=0.0)


__all__ = ["LoadError", "LoadPlan", "LoadResult", "Record", "WorkerReport"]
