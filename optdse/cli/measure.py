"""`optdse measure`: one configuration, measured as a trial would be, printed or as JSON."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace

from optdse import signals
from optdse.cli.backends import backend_for
from optdse.cli.output import console, fail, warn
from optdse.stability import StabilityRule

DEFAULT_RULE = StabilityRule()


def measure(args: argparse.Namespace) -> int:
    from optdse.config import ClientConfig, Config, NetworkConfig, ServerConfig
    from optdse.deploy.base import DeployError, beyond_host
    from optdse.knobs import SERVERS, KnobError, knobs_of
    from optdse.spec import SERVER_PARAMETERS, server_problem
    from optdse.models import ModelError, resolve
    from optdse.objective import MeasureError, measure

    try:
        model = resolve(args.model, args.signature, args.request_file, args.size_axis)
    except ModelError as error:
        option = {"path": "--model", "name": "--model", "signature": "--signature", "request_file": "--request-file",
                  "size_axis": "--size-axis"}[error.key]
        return fail("measure", f"{option}: {error}")
    network = NetworkConfig(args.delay_ms, args.jitter_ms, args.loss_pct, args.network_method)
    try:
        stability = replace(DEFAULT_RULE, window_s=args.window, max_s=args.max_duration)
    except ValueError:
        least = DEFAULT_RULE.warmup_s + DEFAULT_RULE.windows * args.window
        return fail("measure", f"--max-duration: must leave room for the warm-up and {DEFAULT_RULE.windows} windows "
                                f"of --window (at least {least:g} s)")
    given = {name: getattr(args, name) for name in SERVER_PARAMETERS if getattr(args, name) is not None}
    foreign = sorted(set(given) - set(SERVERS[args.server]))
    if foreign:
        return fail("measure", f"--{foreign[0].replace('_', '-')}: not a knob of {args.server} (--server)")
    problem = server_problem(args.server, args.backend, args.image)
    if problem:
        return fail("measure", f"--server {args.server}: {problem}")
    try:
        knobs = knobs_of(args.server, given)
    except KnobError as error:
        message = re.sub(r"\b(enable_batching|dynamic_batching|max_batch_size)\b", lambda m: "--" + m[1].replace("_", "-"),
                         error.message)
        return fail("measure", f"--{error.knob.replace('_', '-')}: {message}")
    config = Config(ServerConfig(model, args.replicas, args.cpus, args.memory, knobs, args.server),
                    ClientConfig(args.threads, args.file_size, args.requests, args.warmup_fraction, args.duration,
                                 args.protocol, network=network, deadline_s=args.deadline_ms / 1e3,
                                 retries=args.retries, chaos_kill_after_s=args.kill_replica_after,
                                 rate_rps=args.rate, arrival=args.arrival, in_flight=args.in_flight,
                                 stability=stability))
    for warning in beyond_host(args.cpus, args.memory):
        warn(warning)
    try:
        backend = backend_for(args.backend, model, args, args.image, args.server)
    except DeployError as error:
        return fail("measure", error.message, code=1)
    try:
        with console.status(f"measuring {config.describe()} ..."):
            result = measure(backend, config, warn=warn)
    except (DeployError, MeasureError) as error:
        return fail("measure", f"{error.reason}: {error.message}", code=1)
    finally:
        with signals.atomic():
            backend.close()
    figures = {"config": config.describe(), "protocol": config.client.protocol, **model.record(), **result.as_dict()}
    if args.json:
        print(json.dumps(figures))
        return 0
    figures["windows"] = ", ".join(f"{w['throughput_rps']:.0f} req/s {w['art_ms']:.3f} ms" for w in result.windows)
    for key, value in figures.items():
        if key not in ("timeseries", "latency_histogram"):  # too long to read; --json has them
            print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    return 0


__all__ = ["DEFAULT_RULE", "measure"]
