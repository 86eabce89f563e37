"""`optdse report`: a study's trials as one offline HTML page (data.py computes, page.py draws)."""

from __future__ import annotations

from pathlib import Path

import optuna

from optdse.export import pareto_frame
from optdse.report.data import ReportData, compute
from optdse.report.page import render


def write_report(study: optuna.Study, output: Path, grid: optuna.Study | None = None) -> ReportData:
    data = compute(study, grid)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(data, pareto_frame(study)), encoding="utf-8")
    return data


__all__ = ["write_report"]
