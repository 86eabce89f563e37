"""Draw ReportData as one self-contained HTML page: plotly figures with plotly.js embedded
once (the page works offline), tables from pandas. No computation here beyond layout."""

from __future__ import annotations

import html
from datetime import datetime, timezone

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from optdse.report.data import ReportData, StudySummary

UNITS = {"art_ms": "ART (ms)", "acu_cores": "ACU (cores)", "p50_ms": "p50 (ms)", "p90_ms": "p90 (ms)",
         "p95_ms": "p95 (ms)", "p99_ms": "p99 (ms)", "energy_j": "energy (J)", "throughput_rps": "throughput (req/s)"}
BAYES_COLOUR, GRID_COLOUR, MUTED = "#d62728", "#1f77b4", "#9a9a9a"


def label(name: str) -> str:
    return UNITS.get(name, name)


def front_figure(data: ReportData) -> go.Figure:
    """All trials in objective space: the Pareto front joined by a line, infeasible trials as
    crosses, and the grid's trials and front when there is one."""
    x, y = data.objectives[0], data.objectives[1]
    figure = go.Figure()
    studies: list[tuple[StudySummary, str, str]] = [(data.study, "study", BAYES_COLOUR)]
    if data.grid is not None:
        studies.insert(0, (data.grid, "grid", GRID_COLOUR))
    for summary, name, colour in studies:
        done = summary.trials[summary.trials["state"] == "COMPLETE"]
        feasible, infeasible = done[done["feasible"]], done[~done["feasible"]]
        hover = "trial %{customdata}<br>" + f"{label(x)} %{{x:.3g}}<br>{label(y)} %{{y:.3g}}<extra></extra>"
        figure.add_scatter(x=feasible[x], y=feasible[y], mode="markers", name=f"{name}: trials",
                           marker={"color": colour, "opacity": 0.35, "size": 7},
                           customdata=feasible["number"], hovertemplate=hover)
        if len(infeasible):
            figure.add_scatter(x=infeasible[x], y=infeasible[y], mode="markers", name=f"{name}: infeasible (errors)",
                               marker={"color": colour, "symbol": "x", "size": 9},
                               customdata=infeasible["number"], hovertemplate=hover)
        front = summary.pareto
        figure.add_scatter(x=front[x], y=front[y], mode="lines+markers", name=f"{name}: Pareto front",
                           line={"color": colour, "shape": "hv"}, marker={"color": colour, "size": 10},
                           customdata=front["number"], hovertemplate=hover)
    figure.update_layout(title="Trials in objective space", xaxis_title=label(x), yaxis_title=label(y))
    figure.update_xaxes(type="log")
    return figure


def hypervolume_figure(data: ReportData) -> go.Figure:
    figure = go.Figure()
    for summary, name, colour in ((data.study, "study", BAYES_COLOUR), (data.grid, "grid", GRID_COLOUR)):
        if summary is not None:
            figure.add_scatter(x=summary.hypervolume["evaluations"], y=summary.hypervolume["hypervolume"],
                               mode="lines", name=name, line={"color": colour, "shape": "hv"})
    reference = ", ".join(f"{label(o)} {v:.4g}" for o, v in zip(data.objectives, data.reference_point, strict=True))
    figure.update_layout(title=f"Hypervolume after each evaluation (reference point: {reference})",
                         xaxis_title="evaluations (finished trials)", yaxis_title="hypervolume")
    return figure


def parameter_figure(data: ReportData) -> go.Figure:
    """The seed's single-factor figures, drawn from the study's trials: each objective against
    each parameter (other parameters vary too, so read trends, not curves)."""
    parameters = data.parameters or ["threads"]
    figure = make_subplots(rows=len(data.objectives), cols=len(parameters), shared_yaxes=True,
                           horizontal_spacing=0.03, vertical_spacing=0.12)
    done = data.study.trials[data.study.trials["state"] == "COMPLETE"]
    for row, objective in enumerate(data.objectives, start=1):
        for col, parameter in enumerate(parameters, start=1):
            figure.add_scatter(x=done[parameter], y=done[objective], mode="markers", showlegend=False,
                               marker={"color": done["pareto"].map({True: BAYES_COLOUR, False: MUTED})},
                               customdata=done["number"], row=row, col=col,
                               hovertemplate="trial %{customdata}<br>%{x}, %{y:.3g}<extra></extra>")
            figure.update_xaxes(title_text=parameter if row == len(data.objectives) else None, row=row, col=col)
        figure.update_yaxes(title_text=label(objective), type="log", row=row, col=1)
    figure.update_layout(title="Each objective against each parameter (red: Pareto-optimal)",
                         height=300 * len(data.objectives))
    return figure


def parallel_figure(data: ReportData) -> go.Figure:
    done = data.study.trials[data.study.trials["state"] == "COMPLETE"]
    first = data.objectives[0]
    dimensions = [{"label": p, "values": done[p]} for p in data.parameters]
    dimensions += [{"label": label(o), "values": done[o]} for o in data.objectives]
    return go.Figure(go.Parcoords(line={"color": done[first], "colorscale": "Viridis", "showscale": True,
                                        "colorbar": {"title": label(first)}}, dimensions=dimensions),
                     layout={"title": "Parallel coordinates of the completed trials"})


def importance_figure(data: ReportData) -> go.Figure:
    figure = go.Figure()
    for objective, shares in data.importances.items():
        figure.add_bar(x=list(shares), y=list(shares.values()), name=label(objective))
    figure.update_layout(title="Parameter importances per objective (Optuna's default evaluator)", barmode="group",
                         yaxis_title="share of variance")
    return figure


def correlation_figure(correlations: pd.DataFrame) -> go.Figure:
    return go.Figure(go.Heatmap(z=correlations.values, x=[label(c) for c in correlations.columns],
                                y=list(correlations.index), zmin=-1, zmax=1, colorscale="RdBu_r",
                                text=correlations.round(2).values, texttemplate="%{text}"),
                     layout={"title": "Spearman correlation of each parameter with each objective"})


def timeseries_figure(data: ReportData) -> go.Figure:
    """Latency over each Pareto-optimal trial's run, the measured window shaded: what the
    warm-up and cool-down cut removed."""
    figure = make_subplots(rows=len(data.timeseries), cols=1, vertical_spacing=0.06,
                           subplot_titles=[f"trial {s.trial}: {s.label}" for s in data.timeseries])
    for row, series in enumerate(data.timeseries, start=1):
        figure.add_scatter(x=series.rows["t"], y=series.rows["art_ms"], mode="lines+markers", showlegend=False,
                           line={"color": BAYES_COLOUR, "shape": "hv"}, row=row, col=1)
        figure.add_vrect(x0=series.window[0], x1=series.window[1], fillcolor="green", opacity=0.12,
                         line_width=0, row=row, col=1)
        figure.update_yaxes(title_text="ART (ms)", row=row, col=1)
    figure.update_xaxes(title_text="seconds since the load started", row=len(data.timeseries), col=1)
    figure.update_layout(title="Latency over the run (shaded: the measurement window)",
                         height=220 * len(data.timeseries) + 120)
    return figure


def distribution_figure(data: ReportData) -> go.Figure:
    """Each Pareto-optimal trial's latency by percentile, from the HdrHistogram it stored: the
    x axis stretches the tail (1 / (1 - percentile), logarithmic), as HdrHistogram's plots do."""
    figure = go.Figure()
    for series in data.timeseries:
        if series.distribution:
            percentiles, latencies = zip(*series.distribution)
            figure.add_scatter(x=[1 / (1 - p / 100) for p in percentiles], y=latencies, mode="lines",
                               name=f"trial {series.trial}", line={"shape": "hv"},
                               customdata=percentiles, hovertemplate="p%{customdata}: %{y:.3f} ms")
    ticks = [50, 90, 99, 99.9, 99.99]
    figure.update_xaxes(type="log", title_text="percentile", tickvals=[1 / (1 - p / 100) for p in ticks],
                        ticktext=[f"p{p:g}" for p in ticks])
    figure.update_layout(title="Latency by percentile in the measurement window (Pareto-optimal trials)",
                         yaxis_title="latency (ms)")
    return figure


def figures(data: ReportData) -> list[tuple[str, go.Figure]]:
    """(anchor, figure) for every plot the data supports."""
    drawn: list[tuple[str, go.Figure]] = []
    if data.study.completed >= 1 and len(data.objectives) >= 2:
        drawn.append(("front", front_figure(data)))
    if data.study.completed >= 1:
        drawn.append(("hypervolume", hypervolume_figure(data)))
        drawn.append(("parameters", parameter_figure(data)))
    if data.study.completed >= 2 and data.parameters:
        drawn.append(("parallel", parallel_figure(data)))
    if data.importances:
        drawn.append(("importances", importance_figure(data)))
    if data.correlations is not None:
        drawn.append(("correlations", correlation_figure(data.correlations)))
    if data.timeseries:
        drawn.append(("timeseries", timeseries_figure(data)))
    if any(series.distribution for series in data.timeseries):
        drawn.append(("latency", distribution_figure(data)))
    return drawn


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="table", na_rep="", float_format=lambda v: f"{v:.4g}")


def render(data: ReportData, pareto_table: pd.DataFrame) -> str:
    """The page: headline, notes, every figure, the Pareto table, the failed trials."""
    trials = data.study.trials
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    infeasible = int(((trials["state"] == "COMPLETE") & ~trials["feasible"]).sum()) if len(trials) else 0
    headline = (f"{len(trials)} trials: {counts.get('COMPLETE', 0)} complete ({infeasible} infeasible), "
                f"{counts.get('FAIL', 0)} failed, {counts.get('RUNNING', 0)} running; "
                f"{len(data.study.pareto)} Pareto-optimal.")
    parts = [f"<h1>optdse report: {html.escape(data.study.name)}</h1>"]
    if data.cheapest:  # the operator's question first
        parts.append(f"<p class='cheapest'><b>{html.escape(data.cheapest)}</b></p>")
    parts.append(f"<p>{html.escape(headline)}</p>")
    if data.model:
        parts.append(f"<p class='model'>{html.escape(data.model)}</p>")
    if data.grid is not None and data.hypervolume_ratio is not None:
        parts.append(f"<p class='grid'>Against the exhaustive grid ({data.grid.completed} completed of "
                     f"{len(data.grid.trials)} configurations): hypervolume ratio "
                     f"<b>{data.hypervolume_ratio:.3f}</b> after {len(data.study.hypervolume)} evaluations "
                     f"vs {len(data.grid.hypervolume)} for the grid.</p>")
    if data.study.completed < 2:
        parts.append("<p class='empty'><b>Not enough data yet:</b> this study has "
                     f"{data.study.completed} completed trial(s). Run more with "
                     f"<code>optdse study {html.escape(data.study.name)}</code>.</p>")
    for note in data.notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for index, (anchor, figure) in enumerate(figures(data)):
        figure.update_layout(template="plotly_white")
        parts.append(f"<section id='{anchor}'>"
                     + figure.to_html(full_html=False, include_plotlyjs=index == 0, div_id=f"plot-{anchor}")
                     + "</section>")
    if len(pareto_table):
        parts.append("<h2>Pareto front</h2>" + _table(pareto_table))
    failed = trials[trials["state"] == "FAIL"][["number", "fail_reason", "fail_message"]] if len(trials) else trials
    if len(failed):
        parts.append("<h2>Failed trials</h2>" + _table(failed))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p class='footer'>Generated by optdse at {generated}. ACU and ART as defined in the "
                 "README; energy figures are estimates unless the trial says rapl.</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             ".table{border-collapse:collapse;font-size:13px}.table td,.table th{padding:3px 8px;"
             "border-bottom:1px solid #ddd;text-align:right}.note,.empty{color:#8a5a00}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>optdse report: "
            f"{html.escape(data.study.name)}</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


__all__ = ["figures", "render"]
