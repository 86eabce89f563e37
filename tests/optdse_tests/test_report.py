"""`optdse report` on real studies: the computed data checked against Optuna, the page opened
in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from optdse.report.data import compute
from optdse.report.page import figures
from optdse.study_file import load_study
from optdse.study import open_study
from tests.optdse_tests.conftest import SPACE as TEST_SPACE
from tests.optdse_tests.conftest import make_project, optdse, write_study

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

# Varied, so every panel has something to draw; the 100 MB one fails OOM (a recorded failure).
ENQUEUE = "[" + ", ".join((
    "{threads: 1, file_size: 1, replicas: 1, cpus: 1.0, memory_mb: 1000}",
    "{threads: 4, file_size: 8, replicas: 2, cpus: 0.3, memory_mb: 1000}",
    "{threads: 2, file_size: 2, replicas: 1, cpus: 0.5, memory_mb: 600}",
    "{threads: 4, file_size: 1, replicas: 2, cpus: 1.0, memory_mb: 800}",
    "{threads: 1, file_size: 8, replicas: 1, cpus: 0.2, memory_mb: 100}")) + "]"
SPACE = TEST_SPACE.replace("memory_mb: {value: 1000}", "memory_mb: {low: 100, high: 1000}")


@pytest.fixture(scope="module")
def studied(tmp_path_factory: pytest.TempPathFactory, mnist_base_path: Path) -> Path:
    """A project with a real 5-trial study (its enqueued points; one fails OOM) in its SQLite storage."""
    with pytest.MonkeyPatch.context() as patch:  # module scope: no monkeypatch fixture
        project = make_project(tmp_path_factory.mktemp("report"), mnist_base_path, patch)
        write_study(project, "seen", space=SPACE, trials=5, requests=300, enqueue=ENQUEUE)
        result = optdse(project, "study", "seen")
    assert result.returncode == 0, result.stdout + result.stderr
    return project


def stored(project: Path, name: str = "seen") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project}/results/optdse.db")


def test_the_computed_data_agrees_with_optuna(studied: Path) -> None:
    study = stored(studied)
    data = compute(study)
    trials = data.study.trials
    assert len(trials) == 5 and set(trials["state"]) == {"COMPLETE", "FAIL"}
    failed = trials[trials["state"] == "FAIL"]
    assert list(failed["fail_reason"]) == ["OOM"] and list(failed["memory_mb"]) == [100]
    assert sorted(data.study.pareto["number"]) == sorted(t.number for t in study.best_trials)
    # The reference point lies beyond every feasible trial, so each adds to the hypervolume.
    done = trials[trials["feasible"]]
    assert all(done[o].max() < r for o, r in zip(data.objectives, data.reference_point, strict=True))
    # Hypervolume: never falls, and matches Optuna's own hypervolume history at every step.
    history = data.study.hypervolume["hypervolume"].to_numpy()
    assert np.all(np.diff(history) >= 0) and history[-1] > 0
    ours = dict(zip(data.study.hypervolume["trial"], history, strict=True))
    optuna_figure = optuna.visualization.plot_hypervolume_history(study, data.reference_point)
    theirs = dict(zip(optuna_figure.data[0].x, optuna_figure.data[0].y, strict=True))
    assert len(theirs) >= 4 and all(np.isclose(ours[trial], value) for trial, value in theirs.items())
    assert set(data.importances) == {"art_ms", "acu_cores"}
    for shares in data.importances.values():
        assert set(shares) <= set(data.parameters) and abs(sum(shares.values()) - 1) < 1e-6
    assert data.correlations is not None
    assert list(data.correlations.columns) == ["art_ms", "acu_cores"]
    assert set(data.correlations.index) == set(data.parameters)
    assert np.all(np.abs(data.correlations.to_numpy()) <= 1)
    assert data.timeseries and {s.trial for s in data.timeseries} <= set(data.study.pareto["number"])
    for series in data.timeseries:
        start, end = series.window
        assert 0 <= start < end <= series.rows["t"].max() + series.rows["t"].diff().max()
        assert series.rows["in_window"].any() and not series.rows["in_window"].all()  # the cut removed something
        # The distribution the trial stored: percentiles rise, and p50 is the trial's own p50.
        percentiles, latencies = zip(*series.distribution)
        assert percentiles[0] == 50 and np.all(np.diff(latencies) >= 0)
        assert latencies[0] == pytest.approx(study.trials[series.trial].user_attrs["p50_ms"])
    assert [anchor for anchor, _ in figures(data)] == ["front", "hypervolume", "parameters", "parallel",
                                                       "importances", "correlations", "timeseries", "latency"]


def test_a_study_with_zero_or_one_completed_trial_gives_a_page_that_says_so(
        studied: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = f"sqlite:///{studied}/results/optdse.db"
    for name in ("empty", "single"):
        write_study(studied, name, space=SPACE, trials=1, requests=100)
    open_study(load_study(str(studied / "studies" / "empty.yaml")), storage)
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    assert optdse(studied, "study", "single").returncode == 0
    for name, completed in (("empty", 0), ("single", 1)):
        output = tmp_path / f"{name}.html"
        result = optdse(studied, "report", name, "--output", str(output))
        assert result.returncode == 0, result.stderr
        page = output.read_text()
        assert f"this study has {completed} completed trial(s)" in page


def test_report_of_an_unknown_study_is_one_line_and_exit_2(studied: Path) -> None:
    result = optdse(studied, "report", "nope")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nope" in result.stderr


def test_every_plot_draws_in_chromium_without_a_javascript_error(studied: Path, tmp_path: Path) -> None:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        message = "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    output = tmp_path / "report.html"
    result = optdse(studied, "report", "seen", "--output", str(output))
    assert result.returncode == 0, result.stderr
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1300,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.get(output.as_uri())
        plots = driver.execute_script("""
            return [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
                id: p.id, laidOut: !!p._fullLayout, traces: (p._fullData || []).length,
                svgs: p.querySelectorAll('svg.main-svg').length}));""")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert errors == []
    assert [p["id"] for p in plots] == [f"plot-{anchor}" for anchor in
                                        ("front", "hypervolume", "parameters", "parallel", "importances",
                                         "correlations", "timeseries", "latency")]
    assert all(p["laidOut"] and p["traces"] > 0 and p["svgs"] > 0 for p in plots), plots
