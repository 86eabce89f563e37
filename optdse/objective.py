"""One configuration measured: deploy, load, monitor, cut the window, summarize.

`measure` is the single code path behind both a study trial and `optdse measure`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from optdse.config import Config, ServerConfig
from optdse.deploy.base import Backend, DeployError, Endpoint
from optdse.knobs import ServerKnobs
from optdse.load import LoadError, LoadPlan, run_load
from optdse.measurement import Measurement, cut_window, summarize
from optdse.monitor import Monitor
from optdse.network import open_link
from optdse.payloads import build_payload


class MeasureError(RuntimeError):
    """The configuration was deployed but could not be measured (e.g. every request failed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def measure(backend: Backend, config: Config, client_processes: int = 0,
            warn: Callable[[str], None] = _warn) -> Measurement:
    """Deploy `config.server`, load it with `config.client` over the link its network block
    asks for, and summarize the window.

    With `chaos_kill_after_s`, one replica is killed that long into the load; the trial still
    reports what clients saw (errors, retries), and records the replica in `replicas_killed`.
    The backend drops it, and the next trial's `apply` starts a replacement. Any other replica
    that died (OOM under load) fails the trial with its reason.

    Also records where the trial's time went (`deploy_s`, `load_setup_s`, `load_s`), which
    the trial-overhead benchmark adds up."""
    began = time.perf_counter()
    endpoints = backend.apply(config.server)
    deployed = time.perf_counter()
    client = config.client
    payload = build_payload(config.server.model, client.file_size, client.protocol, config.server.api)
    statistics = TritonStatistics(config.server, endpoints, backend.server_command) if config.server.server == "triton" else None
    with open_link(client.network, tuple(e.target_for(client.protocol) for e in endpoints), backend.run,
                   warn) as link:
        rule = client.stop_rule()
        plan = LoadPlan(targets=link.targets, bodies=payload.bodies, batches=payload.batches, threads=client.threads,
                        requests=client.requests, deadline_s=client.deadline_s, processes=client_processes,
                        duration_s=rule.max_s if rule else client.duration_s, protocol=client.protocol, path=payload.path,
                        retries=client.retries, netns=link.client_netns, rate_rps=client.rate_rps,
                        arrival=client.arrival, in_flight=client.in_flight, api=payload.api)
        chaos = (threading.Timer(client.chaos_kill_after_s, _kill_one, (backend,))
                 if client.chaos_kill_after_s else None)
        monitor = Monitor(backend)
        monitor.start()
        try:
            load = run_load(plan, on_start=chaos.start if chaos else None, rule=rule)
        except LoadError as error:
            raise MeasureError("load", str(error)) from None
        finally:
            samples = monitor.stop()
            if chaos is not None:
                chaos.cancel()
                chaos.join()
    try:
        killed = backend.check()
    except DeployError as error:  # a replica died unbidden (OOM): the trial fails with its reason
        raise DeployError(error.reason, f"{error.message}, under load ({int(load.ok.sum())} of "
                                        f"{len(load.ok)} requests answered)") from None
    if not load.ok.any():
        codes = ", ".join(f"{code} x{n}" for code, n in load.error_codes.items())
        raise MeasureError("errors", f"all {len(load.ok)} requests failed ({codes})")
    window = cut_window(load, client.warmup_fraction)
    summary = summarize(load, samples, window, backend.memory_peaks(), backend.accounting, backend.limits_enforced)
    server = config.server
    if statistics is not None:
        summary = replace(summary, server_stats=statistics.since_start(), server_config=statistics.config)
    return replace(summary, server=server.server, cost_cores=server.replicas * server.cpus, cost_memory_mb=server.replicas * server.memory_mb,
                   request_bytes=payload.bytes_per_request, file_size_unit=payload.unit,
                   rows_per_request=payload.rows_per_request, request_source=payload.source,
                   deploy_s=deployed - began, load_setup_s=load.started - deployed,
                   load_s=load.finished - load.started, network_method=link.method,
                   deadline_ms=client.deadline_s * 1e3, replicas_killed=killed,
                   server_command=backend.server_command, server_knobs=server.knobs.set(),
                   batching_parameters=(server.knobs.batching_file() or "") if isinstance(server.knobs, ServerKnobs) else "")


class TritonStatistics:
    """Triton's own counters of the trial's replicas (optdse/triton/server.py), read when the
    load is about to start and again when it has ended: where a request's time went."""

    def __init__(self, server: ServerConfig, endpoints: list[Endpoint], server_command: str) -> None:
        from optdse.triton.repository import config_in
        from optdse.triton.server import statistics

        self._read = lambda: statistics([e.rest_port for e in endpoints if e.rest_port], server.model.name)
        self._before = self._read()
        self.config = config_in(server_command, server.model.name)

    def since_start(self) -> dict[str, float]:
        return self._read().since(self._before)


def _kill_one(backend: Backend) -> None:
    """The chaos option's fault: the last replica, killed without warning."""
    try:
        backend.kill_replica()
    except DeployError:  # nothing left to kill: the trial reports what it saw
        pass


__all__ = ["MeasureError", "measure"]
