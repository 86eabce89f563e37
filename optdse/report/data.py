"""What `optdse report` shows, computed from a study's trials; drawing is in page.py.

Everything here is plain data (pandas frames, dicts, floats), so tests check the numbers and
the page only lays them out. Hypervolume, Pareto fronts and importances come from Optuna.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from optdse.export import parameter_columns
from optdse.histograms import LatencyHistogram
from optdse.optuna_internals import compute_hypervolume
from optdse.record import records

#: At most this many Pareto-optimal trials get a latency time series panel.
MAX_TIMESERIES = 6


@dataclass(frozen=True)
class TimeSeries:
    trial: int
    label: str
    rows: pd.DataFrame          # t, requests, art_ms, acu_cores, in_window, ...
    window: tuple[float, float]  # seconds since the load started
    distribution: list[tuple[float, float]] = field(default_factory=list)  # (percentile, ms) from its histogram


@dataclass(frozen=True)
class StudySummary:
    """One study's trials and the figures derived from them."""

    name: str
    trials: pd.DataFrame        # one row per trial: number, state, params, objectives, feasible, pareto, fail_reason
    pareto: pd.DataFrame        # the Pareto-optimal trials, sorted by the first objective
    hypervolume: pd.DataFrame   # evaluations (finished trials so far), hypervolume

    @property
    def completed(self) -> int:
        return int((self.trials["state"] == "COMPLETE").sum()) if len(self.trials) else 0

    @property
    def final_hypervolume(self) -> float:
        return float(self.hypervolume["hypervolume"].iloc[-1]) if len(self.hypervolume) else 0.0


@dataclass(frozen=True)
class ReportData:
    study: StudySummary
    objectives: list[str]       # metric names, in the study's order
    directions: list[str]       # "minimize" / "maximize"
    parameters: list[str]       # the parameters that vary in this study
    reference_point: list[float]  # for hypervolume, in the objectives' own units
    importances: dict[str, dict[str, float]] = field(default_factory=dict)  # objective -> parameter -> share
    correlations: pd.DataFrame | None = None  # parameters x objectives, Spearman
    timeseries: list[TimeSeries] = field(default_factory=list)
    grid: StudySummary | None = None
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why
    model: str = ""             # which model the trials measured, and what file size counts for it
    cheapest: str = ""          # with SLO constraints: the cheapest configuration that met them

    @property
    def hypervolume_ratio(self) -> float | None:
        """The study's final hypervolume over the grid's (same reference point)."""
        if self.grid is None or self.grid.final_hypervolume <= 0:
            return None
        return self.study.final_hypervolume / self.grid.final_hypervolume


def trials_frame(study: optuna.Study, objectives: list[str]) -> pd.DataFrame:
    """One row per finished or running trial, with what the report plots and tables need."""
    best = {t.number for t in study.best_trials}
    rows = []
    for record in records(study):
        row: dict[str, object] = {"number": record.number, "state": record.state.name, "feasible": record.feasible,
                                  "pareto": record.number in best, "fail_reason": record.fail_reason,
                                  "fail_message": record.fail_message,
                                  "error_rate": record.measurement.error_rate if record.measurement else None}
        row.update(record.parameters)
        values = record.values if record.state == TrialState.COMPLETE and record.values else [None] * len(objectives)
        row.update(dict(zip(objectives, values, strict=True)))
        rows.append(row)
    columns = ["number", "state", "feasible", "pareto", "fail_reason", "fail_message", "error_rate",
               *parameter_columns(rows), *objectives]
    return pd.DataFrame(rows, columns=columns)


def _as_losses(values: np.ndarray, directions: list[str]) -> np.ndarray:
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return values * signs


def reference_point(frames: list[pd.DataFrame], objectives: list[str], directions: list[str]) -> list[float]:
    """The worst feasible value of each objective over all the given studies, 10% beyond;
    shared, so hypervolumes of different studies compare."""
    feasible = pd.concat([f[f["feasible"]] for f in frames]) if frames else pd.DataFrame()
    if feasible.empty:
        return [0.0] * len(objectives)
    point = []
    for name, direction in zip(objectives, directions, strict=True):
        column = feasible[name].astype(float)
        worst, best = (column.max(), column.min()) if direction == "minimize" else (column.min(), column.max())
        span = abs(worst - best) or abs(worst) or 1.0
        point.append(float(worst + 0.1 * span if direction == "minimize" else worst - 0.1 * span))
    return point


def hypervolume_history(trials: pd.DataFrame, objectives: list[str], directions: list[str],
                        reference: list[float]) -> pd.DataFrame:
    """Hypervolume of the feasible trials among the first k finished ones, for every k."""
    finished = trials[trials["state"].isin(["COMPLETE", "FAIL"])].sort_values("number")
    losses = _as_losses(np.array(reference, dtype=float), directions)
    rows, points = [], []
    for k, (_, trial) in enumerate(finished.iterrows(), start=1):
        if trial["feasible"]:
            loss = _as_losses(np.array([trial[o] for o in objectives], dtype=float), directions)
            if np.all(loss < losses):
                points.append(loss)
        volume = compute_hypervolume(np.array(points), losses) if points else 0.0
        rows.append({"evaluations": k, "trial": int(trial["number"]), "hypervolume": float(volume)})
    return pd.DataFrame(rows, columns=["evaluations", "trial", "hypervolume"])


def summarize_study(study: optuna.Study, objectives: list[str], directions: list[str],
                    reference: list[float], trials: pd.DataFrame | None = None) -> StudySummary:
    trials = trials_frame(study, objectives) if trials is None else trials
    pareto = trials[trials["pareto"]].sort_values(objectives[0]) if len(trials) else trials
    return StudySummary(study.study_name, trials, pareto,
                        hypervolume_history(trials, objectives, directions, reference))


def importances(study: optuna.Study, objectives: list[str],
                directions: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Optuna's parameter importances (its default evaluator) per objective, over the completed
    trials. The evaluator ranks what leads to low values, so maximized objectives are negated."""
    result, notes = {}, []
    for index, (name, direction) in enumerate(zip(objectives, directions, strict=True)):
        sign = 1.0 if direction == "minimize" else -1.0
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*to achieve low `target` values")  # handled by sign
                result[name] = dict(optuna.importance.get_param_importances(
                    study, target=lambda t, i=index, s=sign: s * t.values[i]))
        except (RuntimeError, ValueError) as error:
            notes.append(f"importances for {name}: {error}")
    return result, notes


def correlations(trials: pd.DataFrame, parameters: list[str], objectives: list[str]) -> pd.DataFrame | None:
    """Spearman rank correlation of each parameter with each objective (the seed's plan asked
    how each factor moves ART and ACU); rank-based, because the effects are not linear."""
    complete = trials[trials["state"] == "COMPLETE"]
    if len(complete) < 3:
        return None
    frame = complete[parameters + objectives].astype(float)
    return frame.corr(method="spearman").loc[parameters, objectives]


def pareto_timeseries(study: optuna.Study, pareto: pd.DataFrame) -> list[TimeSeries]:
    by_number = {r.number: r for r in records(study)}
    series = []
    for number in pareto["number"].head(MAX_TIMESERIES):
        record = by_number[int(number)]
        measured = record.measurement
        if measured is None or not measured.timeseries:
            continue  # measured before optdse recorded the window
        encoded = measured.latency_histogram  # trials measured before histograms have none
        series.append(TimeSeries(int(number), record.config or f"trial {number}", pd.DataFrame(measured.timeseries),
                                 (measured.window_start_s, measured.window_end_s),
                                 LatencyHistogram.decode(encoded).distribution() if encoded else []))
    return series


def _objectives(study: optuna.Study) -> tuple[list[str], list[str]]:
    """The study's metric names and directions ("minimize"/"maximize"), in order."""
    objectives = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    return objectives, [d.name.lower() for d in study.directions]


def compute_hypervolume_only(study: optuna.Study) -> ReportData:
    """Just the trials and the hypervolume history (what the dashboard's saved plot needs)."""
    objectives, directions = _objectives(study)
    trials = trials_frame(study, objectives)
    reference = reference_point([trials], objectives, directions)
    return ReportData(study=summarize_study(study, objectives, directions, reference, trials),
                      objectives=objectives, directions=directions, parameters=[], reference_point=reference)


def compute(study: optuna.Study, grid: optuna.Study | None = None) -> ReportData:
    """Everything the report draws, for `study` and (optionally) its exhaustive grid."""
    objectives, directions = _objectives(study)
    trials = trials_frame(study, objectives)
    grid_trials = trials_frame(grid, objectives) if grid is not None else None
    reference = reference_point([f for f in (trials, grid_trials) if f is not None], objectives, directions)
    summary = summarize_study(study, objectives, directions, reference, trials)
    parameters = [p for p in parameter_columns(trials.to_dict("records")) if p in trials
                  and trials[p].nunique(dropna=True) > 1]
    notes: list[str] = []
    found_importances: dict[str, dict[str, float]] = {}
    if summary.completed < 2:
        notes.append(f"{summary.completed} completed trial(s): the front, importances and correlations need "
                     "at least 2; run more trials (optdse study NAME --trials N)")
    else:
        found_importances, notes = importances(study, objectives, directions)
    return ReportData(
        study=summary, objectives=objectives, directions=directions, parameters=parameters,
        reference_point=reference, importances=found_importances,
        correlations=correlations(trials, parameters, objectives),
        timeseries=pareto_timeseries(study, summary.pareto),
        grid=summarize_study(grid, objectives, directions, reference, grid_trials) if grid is not None else None,
        notes=notes, model=model_line(study), cheapest=cheapest_line(study))


def cheapest_line(study: optuna.Study) -> str:
    """With service-level objectives: the feasible trial that reserves the fewest cores (then
    the least memory), what it is and what it achieved; "" for a study without them."""
    complete = [r for r in records(study, (TrialState.COMPLETE,)) if r.measurement is not None]
    names = next((r.constraint_names for r in complete if r.constraint_names), ())
    if len(names) < 2:  # only the error rate: no SLO
        return ""
    feasible = [r for r in complete if r.feasible]
    if not feasible:
        return f"No configuration met the SLO ({', '.join(names)}) in {len(complete)} measured trials."
    best = min(feasible, key=lambda r: (r.measured.cost_cores, r.measured.cost_memory_mb))
    m = best.measured
    setting = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                        for name, value in best.parameters.items())
    return (f"Cheapest configuration meeting the SLO ({', '.join(names)}): trial {best.number}, {setting}: "
            f"{m.cost_cores:g} cores and {m.cost_memory_mb:g} MB reserved; p99 {m.p99_ms:.2f} ms, "
            f"ART {m.art_ms:.2f} ms, {m.throughput_rps:.0f} req/s, {m.cpu_ms_per_request:.3f} ms "
            f"of CPU per request ({len(feasible)} of {len(complete)} measured trials met the SLO). "
            f"Server: {m.server_command or '?'}"
            + (f" with batching file {m.batching_parameters.strip()!r}" if m.batching_parameters else "")
            + ".")


def model_line(study: optuna.Study) -> str:
    """The model the study measured and what its file size counts, from its first measured trial."""
    for record in records(study, (TrialState.COMPLETE,)):
        if record.model is not None and record.measurement is not None:
            where = record.model_path
            details = "built-in" if where == "built-in" else f"{where}, signature {record.signature}"
            return (f"Model {record.model} ({details}); file size counts {record.measured.file_size_unit or '?'}; "
                    f"inputs {record.measured.request_source or '?'}.")
    return ""


__all__ = ["ReportData", "StudySummary", "TimeSeries", "compute", "compute_hypervolume_only", "hypervolume_history", "reference_point"]
