"""Search space -> Optuna distributions -> Config.

Fixed parameters are not suggested (Optuna would show a one-point distribution); they are
stored as trial user attrs so every trial still records its full configuration.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import BaseTrial

from optdse.config import ClientConfig, Config, NetworkConfig, ServerConfig
from optdse.knobs import SWITCH_KNOBS, knobs_of, switches
from optdse.spec import INTEGER_PARAMETERS, Choice, Fixed, Range, Study


def distributions(study: Study) -> dict[str, BaseDistribution]:
    """The varied parameters of the study's space as Optuna distributions (a switch such as
    enable_batching before the parameters `suggest` asks for only when it is on)."""
    result: dict[str, BaseDistribution] = {}
    for name, dist in study.space.dimensions.items():
        if isinstance(dist, Choice):
            kind = bool if name in SWITCH_KNOBS else int if name in INTEGER_PARAMETERS else float
            result[name] = CategoricalDistribution([kind(choice) for choice in dist.choices])
            continue
        if not isinstance(dist, Range):
            continue
        if name in INTEGER_PARAMETERS:
            result[name] = IntDistribution(int(dist.low), int(dist.high), log=dist.log, step=int(dist.step or 1))
        else:
            result[name] = FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    return result


def fixed_values(study: Study) -> dict[str, float]:
    return {name: dist.value for name, dist in study.space.dimensions.items() if isinstance(dist, Fixed)}


def active(values: dict[str, float], server: str = "optdse-serve") -> dict[str, float]:
    """`values` without the knobs whose switch is off (batching parameters with batching off):
    they would mean nothing to `server` (and nothing is passed for them)."""
    off = {name for name, switch in switches(server).items() if not values.get(switch)}
    return {name: value for name, value in values.items() if name not in off}


def suggest(trial: BaseTrial, study: Study) -> Config:
    """One configuration of the study's space from the sampler (under the workload's first
    scenario, where it has several)."""
    return suggest_scenarios(trial, study)[0][1]


def suggest_scenarios(trial: BaseTrial, study: Study) -> list[tuple[str, Config]]:
    """Ask the sampler for one configuration of the study's space, under each of the study's
    workload scenarios. Switched knobs (batching parameters) are suggested only when their switch is on
    (Optuna's conditional search space), so no sampler learns from values the server never saw."""
    values: dict[str, float] = dict(fixed_values(study))
    depends_on = switches(study.spec.server)
    for name, d in distributions(study).items():
        if name in depends_on and not values.get(depends_on[name]):
            continue
        if isinstance(d, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            values[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            assert isinstance(d, FloatDistribution)
            values[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return scenarios(active(values, study.spec.server), study)


def scenarios(values: dict[str, float], study: Study) -> list[tuple[str, Config]]:
    """The configuration under each of the study's workload scenarios, by name: the searched
    `values` with the workload's own ("" and one configuration without scenarios)."""
    workload = study.spec.workload
    if workload is None:
        return [("", _config(values, study))]
    return [(name, _config(values | load, study)) for name, load in workload.resolved()]


def to_config(values: dict[str, float], study: Study) -> Config:
    """The configuration of `values` (under the workload's first scenario, where it has several)."""
    return scenarios(values, study)[0][1]


def _config(values: dict[str, float], study: Study) -> Config:
    spec = study.spec
    server = ServerConfig(model=study.model, replicas=int(values["replicas"]), cpus=float(values["cpus"]),
                          memory_mb=int(values["memory_mb"]), server=spec.server,
                          knobs=knobs_of(spec.server, active(values, spec.server)))
    network = NetworkConfig(delay_ms=float(values.get("delay_ms", 0.0)), jitter_ms=float(values.get("jitter_ms", 0.0)),
                            loss_pct=float(values.get("loss_pct", 0.0)), method=spec.network_method)
    rate = values.get("rate_rps")
    client = ClientConfig(threads=int(values.get("threads", 1)), file_size=int(values["file_size"]),
                          requests=spec.requests, warmup_fraction=spec.warmup_fraction,
                          duration_s=spec.duration_s, protocol=spec.protocol, network=network,
                          deadline_s=spec.deadline_ms / 1e3, retries=spec.retries,
                          chaos_kill_after_s=spec.chaos.kill_replica_after_s if spec.chaos else None,
                          rate_rps=float(rate) if rate is not None else None, arrival=spec.arrival,
                          in_flight=spec.in_flight, stability=spec.stability.rule())
    return Config(server=server, client=client)


__all__ = ["active", "distributions", "fixed_values", "scenarios", "suggest", "suggest_scenarios", "to_config"]
