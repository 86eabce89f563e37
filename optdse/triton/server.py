"""One tritonserver process as a replica: its command line, its readiness, its statistics.

Every listener binds 127.0.0.1; on SIGTERM it waits at most 5 s for open requests and
connections (Triton's default is 30 s); metrics are off (Triton's metrics thread polls the CPU and
would add its own work to what ACU measures). The model repository is optdse's
(repository.py), loaded at start (`--model-control-mode=none`), and each model instance is
a backend stub process, a child of tritonserver and so inside the replica's cgroup.

Triton's statistics extension (`GET /v2/models/NAME/stats`) counts, per model, the requests
that succeeded and the time they spent queued and in compute (input, inference, output), and
how many model executions served them. The counters are cumulative, so a trial reads them
before and after its load (`Statistics.since`): where a request's time went, and the mean
batch the dynamic batcher formed. Neither optdse-serve nor TF Serving says this.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optdse.deploy.base import HOST
from optdse.triton.install import TritonInstall


def command(install: TritonInstall, repository: Path, grpc_port: int, http_port: int) -> list[str]:
    """tritonserver serving `repository` on 127.0.0.1's `grpc_port` and `http_port`."""
    return [str(install.server), f"--model-repository={repository}", f"--backend-directory={install.backends}",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true", "--exit-timeout-secs=5",
            f"--grpc-address={HOST}", f"--grpc-port={grpc_port}", f"--http-address={HOST}", f"--http-port={http_port}",
            "--allow-metrics=false", "--log-info=false"]


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_ready(http_port: int, model: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll the model's ready endpoint (200 once every instance has loaded) until `timeout`;
    ChildProcessError if the server dies meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise ChildProcessError(f"{HOST}:{http_port}")
        try:
            if _get(http_port, f"/v2/models/{model}/ready")[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{model} on {HOST}:{http_port} not ready after {timeout:g} s")


#: The inference_stats durations Triton keeps, each {"count", "ns"}.
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Statistics:
    """Cumulative counters of one model on one or more servers (summed)."""

    requests: int = 0     # successful requests (inference_stats.success.count)
    rows: int = 0         # the inferences they carried, one per row (inference_count)
    executions: int = 0   # model executions that served them (fewer: the dynamic batcher merged some)
    failures: int = 0
    phase_ns: tuple[int, ...] = (0,) * len(PHASES)

    def __add__(self, other: Statistics) -> Statistics:
        return Statistics(self.requests + other.requests, self.rows + other.rows, self.executions + other.executions,
                          self.failures + other.failures, tuple(a + b for a, b in zip(self.phase_ns, other.phase_ns)))

    def since(self, before: Statistics) -> dict[str, float]:
        """What happened between `before` and these counters: ms per successful request in
        each phase, and how many requests and rows one model execution served on average."""
        requests = self.requests - before.requests
        executions = self.executions - before.executions
        per_request = {f"{phase}_ms": (now - then) / 1e6 / requests if requests else 0.0
                       for phase, now, then in zip(PHASES, self.phase_ns, before.phase_ns)}
        return {"requests": float(requests), "executions": float(executions),
                "failures": float(self.failures - before.failures),
                "requests_per_execution": requests / executions if executions else 0.0,
                "rows_per_execution": (self.rows - before.rows) / executions if executions else 0.0, **per_request}


def statistics(http_ports: list[int], model: str) -> Statistics:
    """The model's counters summed over the servers at `http_ports` (a server that does not
    answer counts nothing: it died, and the trial says so elsewhere)."""
    total = Statistics()
    for port in http_ports:
        try:
            status, body = _get(port, f"/v2/models/{model}/stats")
        except OSError:
            continue
        if status != 200:
            continue
        for entry in json.loads(body).get("model_stats", []):
            stats = entry.get("inference_stats", {})
            total += Statistics(int(stats.get("success", {}).get("count", 0)), int(entry.get("inference_count", 0)),
                                int(entry.get("execution_count", 0)), int(stats.get("fail", {}).get("count", 0)),
                                tuple(int(stats.get(phase, {}).get("ns", 0)) for phase in PHASES))
    return total


__all__ = ["PHASES", "Statistics", "command", "statistics", "wait_ready"]
