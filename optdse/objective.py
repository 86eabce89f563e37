"""One configuration measured: deploy, load, monitor, cut the window, summarize.

`measure` is the single code path behind both a study trial and `optdse measure`.
"""

from __future__ import annotations

import time
from dataclasses import replace

from optdse.config import Config
from optdse.deploy.base import Backend
from optdse.load import LoadError, LoadPlan, run_load
from optdse.measurement import Measurement, cut_window, summarize
from optdse.monitor import Monitor
from optdse.payloads import build_payload


class MeasureError(RuntimeError):
    """The configuration was deployed but could not be measured (e.g. every request failed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def measure(backend: Backend, config: Config, client_processes: int = 0, deadline_s: float = 30.0) -> Measurement:
    """Deploy `config.server`, load it with `config.client`, and summarize the window.

    Also records where the trial's time went (`deploy_s`, `load_setup_s`, `load_s`), which
    the trial-overhead benchmark adds up."""
    began = time.perf_counter()
    endpoints = backend.apply(config.server)
    deployed = time.perf_counter()
    protocol = config.client.protocol
    payload = build_payload(config.server.model, config.client.file_size, protocol)
    plan = LoadPlan(targets=tuple(e.target_for(protocol) for e in endpoints), body=payload.body, batch=payload.batch,
                    threads=config.client.threads, requests=config.client.requests,
                    deadline_s=deadline_s, processes=client_processes, duration_s=config.client.duration_s,
                    protocol=protocol, path=payload.path)
    monitor = Monitor(backend)
    monitor.start()
    try:
        load = run_load(plan)
    except LoadError as error:
        raise MeasureError("load", str(error)) from None
    finally:
        samples = monitor.stop()
    backend.check()  # a replica that died under load (OOM) fails the trial with its reason
    if not load.ok.any():
        codes = ", ".join(f"{code} x{n}" for code, n in load.error_codes.items())
        raise MeasureError("errors", f"all {len(load.ok)} requests failed ({codes})")
    window = cut_window(load, config.client.warmup_fraction)
    summary = summarize(load, samples, window, backend.memory_peaks(), backend.accounting, backend.limits_enforced)
    return replace(summary, request_bytes=payload.bytes_per_request, file_size_unit=payload.unit,
                   deploy_s=deployed - began, load_setup_s=load.started - deployed,
                   load_s=load.finished - load.started)


__all__ = ["MeasureError", "measure"]
