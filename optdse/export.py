"""The Pareto front as a table (pandas), for CSV export and the CLI's summary."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from optdse.record import TrialRecord
from optdse.spec import ALL_PARAMETERS, NETWORK_PARAMETERS, PARAMETERS

#: Measured figures exported beside the parameters, in this order.
FIGURES = ("art_ms", "acu_cores", "p95_ms", "p99_ms", "p999_ms", "throughput_rps", "energy_j")
#: How it was measured: which loop drove the load, and whether its windows agreed (optdse/stability.py).
MEASURING = ("loop", "stable")
#: What each request was: what its file size counts, its rows and bytes (the measurement's) ...
MEASURED_REQUEST = ("file_size_unit", "rows_per_request", "request_bytes")
#: ... after which model (the trial record's).
REQUEST = ("model", *MEASURED_REQUEST)


def parameter_columns(rows: list[dict[str, object]]) -> list[str]:
    """The parameter columns of a table of trials: those any trial has (the five, or rate_rps instead
    of threads, and the network's), in ALL_PARAMETERS' order."""
    return [name for name in ALL_PARAMETERS if any(name in row for row in rows)] or list(PARAMETERS)


def pareto_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per Pareto-optimal (and feasible) trial, sorted by ART."""
    figures = [*FIGURES, *(m for m in study.metric_names or [] if m not in FIGURES)]  # and any other objective
    rows = []
    for trial in study.best_trials:  # Optuna's front; respects constraints when they exist
        record = TrialRecord.of(trial)
        measured = record.measurement  # None only for a trial an older optdse recorded: its figures stay empty
        row: dict[str, object] = {"trial": record.number}
        for name, value in record.parameters.items():
            row[name] = round(value, 6) if isinstance(value, float) else value  # 0.9500000000000001 -> 0.95
        for name in figures:
            row[name] = getattr(measured, name, None)
        row["energy_is_estimate"] = getattr(measured, "energy_is_estimate", None)
        row["host"] = record.host  # which worker's host measured it
        row["model"] = record.model
        for name in (*MEASURED_REQUEST, *MEASURING):
            row[name] = getattr(measured, name, None)
        if any(name in row for name in NETWORK_PARAMETERS):  # a network study: how, and what it cost
            row["error_rate"] = getattr(measured, "error_rate", None)
            row["network_method"] = getattr(measured, "network_method", None)
        rows.append(row)
    network = ["error_rate", "network_method"] if any("network_method" in row for row in rows) else []
    # An empty front (every trial failed or infeasible) still has the study's own parameters
    # as columns: an open-loop study's rate_rps, not the default threads.
    parameters = parameter_columns(rows) if rows else parameter_columns(
        [TrialRecord.of(t).parameters for t in study.get_trials(deepcopy=False)])
    columns = ["trial", *parameters, *figures, "energy_is_estimate", "host", *REQUEST, *MEASURING, *network]
    return pd.DataFrame(rows, columns=columns).sort_values("art_ms", ignore_index=True)


def write_pareto_csv(study: optuna.Study, path: Path) -> pd.DataFrame:
    frame = pareto_frame(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


__all__ = ["FIGURES", "MEASURED_REQUEST", "MEASURING", "REQUEST", "parameter_columns", "pareto_frame", "write_pareto_csv"]
