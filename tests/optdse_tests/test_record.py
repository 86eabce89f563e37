"""The trial record round trip: what the study loop writes is what every reader gets back,
through a real SQLite storage (JSON in between)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
from optuna.trial import TrialState

from optdse.measurement import Measurement
from optdse.record import records, retry_attrs, write_failed, write_configuration, write_measured, write_owner


def _measurement() -> Measurement:
    """A Measurement with a distinct value in every field."""
    values = {}
    for number, f in enumerate(dataclasses.fields(Measurement), start=1):
        kind = str(f.type)
        values[f.name] = (
            [float(number), 0.5] if kind.startswith("list[float]") else
            {"node-a": float(number)} if kind.startswith("dict[str, float]") else
            {"node-a": number} if kind.startswith("dict[str, int]") and "bool" not in kind else
            {"max_batch_size": number} if kind.startswith("dict[str, int | bool]") else
            [f"text {number}"] if kind.startswith("list[str]") else
            [{"t": float(number)}] if kind.startswith("list[dict") else
            number % 2 == 0 if kind == "bool" else
            number if kind == "int" else
            f"text {number}" if kind == "str" else
            float(number) + 0.25)
    return Measurement(**values)


def test_a_measured_trial_reads_back_whole(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", directions=["minimize", "minimize"])
    trial = study.ask()
    trial.suggest_int("threads", 1, 8)
    measured = _measurement()
    write_owner(trial, {"host": "h", "pid": 7, "pid_started": 1.5, "backend": "local", "host_shared_with": [9]})
    write_configuration(trial, {"model": "mnist", "model_path": "built-in"}, {"replicas": 2, "cpus": 0.5},
                        "a configuration", 300, None)
    write_measured(trial, measured, [-1.0, 0.5], ["error_rate <= 0.01", "p99_ms <= 5"])
    study.tell(trial, [measured.art_ms, measured.acu_cores])
    record, = records(study)
    assert record.measurement == measured
    assert record.parameters == {"threads": trial.params["threads"], "replicas": 2, "cpus": 0.5}
    assert (record.host, record.pid, record.backend, record.host_shared_with) == ("h", 7, "local", (9,))
    assert (record.model, record.config, record.requests, record.duration_s) == ("mnist", "a configuration", 300, None)
    assert record.constraints == (-1.0, 0.5) and not record.feasible  # 0.5 > 0: over the p99 bound
    assert record.values == (measured.art_ms, measured.acu_cores) and record.state == TrialState.COMPLETE


def test_failed_and_retried_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}")
    failed = study.ask()
    write_failed(failed, "oom", "replica 1 was killed")
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs=retry_attrs(failed.number))
    study.tell(study.ask(), 1.0)
    first, retry = records(study)
    assert (first.fail_reason, first.fail_message, first.measurement) == ("oom", "replica 1 was killed", None)
    assert retry.retry_of == first.number and retry.fail_reason is None
    assert retry.feasible  # completed, no constraints recorded
    try:
        _ = first.measured
    except ValueError as error:
        assert "no measurement" in str(error)
    else:
        raise AssertionError("a failed trial has no measurement")
