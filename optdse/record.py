"""What optdse stores on each Optuna trial: written here and read back here, nowhere else.

A trial's record grows in steps, each written whole by the study loop (`signals.atomic`):

- owned (`write_owner`, first of all, right after the trial is asked): who measures it
  (host, pid, backend), so a resumed study tells a killed run's trial from one being measured;
- configured (`write_configuration`): the model, the parameters the space or the workload
  held (Optuna records only suggested ones) and the configuration as text;
- measured (`write_measured`): every field of the `Measurement`, and the constraints;
- failed (`write_failed`, or `write_abandoned` for another worker's lost trial): the reason
  and message;
- `retry_attrs`: the attrs of a trial enqueued again in place of a failed one.

Everything is an Optuna user attr (JSON), so optuna-dashboard and plain Optuna show it too.
Readers (the CLI's progress, export, the report, benchmarks) take `TrialRecord.of(trial)`:
typed fields instead of string keys, so a renamed figure breaks at one place, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from optdse.measurement import Measurement
from optdse.spec import ALL_PARAMETERS

#: Failure reasons that say nothing about the configuration (it is measured again).
NOT_THE_CONFIGURATION = ("interrupted", "abandoned")

_MEASUREMENT_FIELDS = {f.name: f for f in dataclasses.fields(Measurement)}
_REQUIRED = [name for name, f in _MEASUREMENT_FIELDS.items()
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


@dataclass(frozen=True)
class TrialRecord:
    """One trial as optdse recorded it."""

    number: int
    state: TrialState
    values: tuple[float, ...] | None
    parameters: dict[str, Any]          # suggested and held, in ALL_PARAMETERS' order
    config: str = ""                    # the configuration as one line
    host: str | None = None             # where it was measured, by which process
    pid: int | None = None
    pid_started: float | None = None
    backend: str | None = None
    host_shared_with: tuple[int, ...] = ()  # other optdse processes with replicas on the host
    model: str | None = None            # the model and where its inputs came from
    model_path: str = "built-in"
    signature: str | None = None
    request_file: str = ""
    size_axis: str | None = None
    requests: int | None = None         # the load's requests per client, or its duration
    duration_s: float | None = None
    retry_of: int | None = None         # the failed trial this one measures again
    fail_reason: str | None = None
    fail_message: str | None = None
    constraints: tuple[float, ...] = ()  # <= 0 is feasible, in constraint_names' order
    constraint_names: tuple[str, ...] = ()
    measurement: Measurement | None = field(default=None, repr=False)

    @property
    def feasible(self) -> bool:
        """Completed, and within every constraint."""
        return self.state == TrialState.COMPLETE and all(c <= 0 for c in self.constraints)

    @property
    def measured(self) -> Measurement:
        """The measurement of a completed trial (a ValueError for any other)."""
        if self.measurement is None:
            raise ValueError(f"trial {self.number} has no measurement ({self.state.name})")
        return self.measurement

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        present = [name for name in ALL_PARAMETERS if name in trial.params or f"fixed_{name}" in attrs]
        return cls(
            number=trial.number, state=trial.state,
            values=tuple(trial.values) if trial.values is not None else None,
            parameters={name: trial.params.get(name, attrs.get(f"fixed_{name}")) for name in present},
            config=str(attrs.get("config", "")), host=attrs.get("host"), pid=attrs.get("pid"),
            pid_started=attrs.get("pid_started"), backend=attrs.get("backend"),
            host_shared_with=tuple(attrs.get("host_shared_with", ())),
            model=attrs.get("model"), model_path=attrs.get("model_path", "built-in"), signature=attrs.get("signature"),
            request_file=attrs.get("request_file", ""), size_axis=attrs.get("size_axis"),
            requests=attrs.get("requests"), duration_s=attrs.get("duration_s"), retry_of=retry_of(trial),
            fail_reason=attrs.get("fail_reason"), fail_message=attrs.get("fail_message"),
            constraints=tuple(constraints_of(trial)), constraint_names=tuple(attrs.get("constraint_names", ())),
            measurement=_measurement(attrs))


def _measurement(attrs: Mapping[str, Any]) -> Measurement | None:
    """The Measurement stored in `attrs`; None where there is none (not measured, or
    recorded by an optdse too old to store every required field)."""
    if any(name not in attrs for name in _REQUIRED):
        return None
    return Measurement(**{name: attrs[name] for name in _MEASUREMENT_FIELDS if name in attrs})


def constraints_of(trial: FrozenTrial) -> list[float]:
    """The trial's constraints ([]: none recorded); what the samplers' constraints_func reads."""
    return list(trial.user_attrs.get("constraints", []))


def records(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[TrialRecord]:
    """Every trial of the study (in the given states), as records."""
    return [TrialRecord.of(t) for t in study.get_trials(deepcopy=False, states=states)]


def write_owner(trial: optuna.Trial, who: Mapping[str, Any]) -> None:
    """Who measures the trial: host, pid, pid_started, backend (and host_shared_with)."""
    for key, value in who.items():
        trial.set_user_attr(key, value)


def write_configuration(trial: optuna.Trial, model: Mapping[str, Any], held: Mapping[str, Any], config: str,
                        requests: int | None, duration_s: float | None) -> None:
    """The trial's model (`Model.record()`), what it holds without suggesting, and the
    configuration as text."""
    for key, value in {**model, **{f"fixed_{n}": v for n, v in held.items()}, "config": config,
                       "requests": requests, "duration_s": duration_s}.items():
        trial.set_user_attr(key, value)


def write_measured(trial: optuna.Trial, measurement: Measurement, constraints: list[float], names: list[str]) -> None:
    for key, value in measurement.as_dict().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("constraints", constraints)
    trial.set_user_attr("constraint_names", names)


def write_failed(trial: optuna.Trial, reason: str, message: str) -> None:
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("fail_message", message)


def write_abandoned(storage: BaseStorage, trial_id: int, message: str) -> None:
    """The failure of a trial whose worker is gone, written by another worker (through the storage)."""
    storage.set_trial_user_attr(trial_id, "fail_reason", "abandoned")
    storage.set_trial_user_attr(trial_id, "fail_message", message)


def retry_attrs(failed: int) -> dict[str, int]:
    """The user attrs of a trial enqueued to measure trial `failed` again."""
    return {"retry_of": failed}


def retry_of(trial: FrozenTrial) -> int | None:
    """The failed trial that `trial` measures again, if any: TrialRecord.of(trial).retry_of
    without reading the rest (the progress bar asks it of every trial at every poll)."""
    return trial.user_attrs.get("retry_of")


__all__ = ["NOT_THE_CONFIGURATION", "TrialRecord", "constraints_of", "records", "retry_attrs", "retry_of", "write_abandoned",
           "write_configuration", "write_failed", "write_measured", "write_owner"]
