"""The Pareto front as a table (pandas), for CSV export and the CLI's summary."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from optdse.spec import ALL_PARAMETERS, NETWORK_PARAMETERS, PARAMETERS

#: Measured figures exported beside the parameters, in this order.
FIGURES = ("art_ms", "acu_cores", "p95_ms", "p99_ms", "p999_ms", "throughput_rps", "energy_j")
#: How it was measured: which loop drove the load, and whether its windows agreed (optdse/stability.py).
MEASURING = ("loop", "stable")
#: What each request was: which model, what its file size counts, its rows and bytes.
REQUEST = ("model", "file_size_unit", "rows_per_request", "request_bytes")


def trial_parameters(trial: optuna.trial.FrozenTrial) -> dict[str, object]:
    """Every parameter of the trial's configuration: the suggested ones and the fixed ones
    (stored as `fixed_NAME` user attrs, since Optuna does not record unsuggested values),
    and the network's where its space has a network block."""
    present = [name for name in ALL_PARAMETERS if name in trial.params or f"fixed_{name}" in trial.user_attrs]
    return {name: trial.params.get(name, trial.user_attrs.get(f"fixed_{name}")) for name in present}


def parameter_columns(rows: list[dict[str, object]]) -> list[str]:
    """The parameter columns of a table of trials: those any trial has (the five, or rate_rps instead
    of threads, and the network's), in ALL_PARAMETERS' order."""
    return [name for name in ALL_PARAMETERS if any(name in row for row in rows)] or list(PARAMETERS)


def pareto_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per Pareto-optimal (and feasible) trial, sorted by ART."""
    figures = [*FIGURES, *(m for m in study.metric_names or [] if m not in FIGURES)]  # and any other objective
    rows = []
    for trial in study.best_trials:  # Optuna's front; respects constraints when they exist
        row: dict[str, object] = {"trial": trial.number}
        for name, value in trial_parameters(trial).items():
            row[name] = round(value, 6) if isinstance(value, float) else value  # 0.9500000000000001 -> 0.95
        for name in figures:
            row[name] = trial.user_attrs.get(name)
        row["energy_is_estimate"] = trial.user_attrs.get("energy_is_estimate")
        row["host"] = trial.user_attrs.get("host")  # which worker's host measured it
        for name in (*REQUEST, *MEASURING):
            row[name] = trial.user_attrs.get(name)
        if any(name in row for name in NETWORK_PARAMETERS):  # a network study: how, and what it cost
            row["error_rate"] = trial.user_attrs.get("error_rate")
            row["network_method"] = trial.user_attrs.get("network_method")
        rows.append(row)
    network = ["error_rate", "network_method"] if any("network_method" in row for row in rows) else []
    columns = ["trial", *parameter_columns(rows), *figures, "energy_is_estimate", "host", *REQUEST, *MEASURING, *network]
    return pd.DataFrame(rows, columns=columns).sort_values("art_ms", ignore_index=True)


def write_pareto_csv(study: optuna.Study, path: Path) -> pd.DataFrame:
    frame = pareto_frame(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


__all__ = ["FIGURES", "MEASURING", "REQUEST", "parameter_columns", "pareto_frame", "trial_parameters", "write_pareto_csv"]
