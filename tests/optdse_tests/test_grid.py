"""`optdse grid`: the levels it spreads, a real grid run that is interrupted and resumed, and
the report's overlay of the grid against the Bayesian study."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optdse.grid import AskTellGridSampler
from optdse.levels import levels_of
from optdse.spec import Range
from tests.optdse_tests.conftest import optdse, write_study
from tests.serving_process import optdse_command

TWO_BY_TWO = """\
parameters:
  threads:   {low: 1, high: 4}
  file_size: {value: 1}
  replicas:  {value: 1}
  cpus:      {low: 0.3, high: 1.0, step: 0.1}
  memory_mb: {value: 1000}
"""


@pytest.mark.parametrize(("name", "dist", "levels", "expected"), [
    ("threads", Range(low=1, high=64, log=True), 4, [1, 4, 16, 64]),
    ("cpus", Range(low=0.1, high=2.0, step=0.05), 3, [0.1, 1.05, 2.0]),
    ("replicas", Range(low=1, high=2), 5, [1, 2]),  # whole numbers coincide: fewer levels
    ("memory_mb", Range(low=128, high=2048, log=True), 3, [128, 512, 2048]),
])
def test_levels_spread_over_the_range(name: str, dist: Range, levels: int, expected: list[float]) -> None:
    assert levels_of(name, dist, levels) == expected


def grid_study(project: Path) -> optuna.Study:
    return optuna.load_study(study_name="g-grid", storage=f"sqlite:///{project}/results/optdse.db")


def grid_trials(project: Path) -> list[optuna.trial.FrozenTrial]:
    return grid_study(project).trials


@pytest.mark.slow
def test_a_grid_is_measured_once_per_point_resumes_after_ctrl_c_and_overlays_the_study(project: Path) -> None:
    write_study(project, "g", space=TWO_BY_TWO, trials=3, requests=150, enqueue="[]")
    run = subprocess.Popen([*optdse_command(), "grid", "g", "--levels", "2"], cwd=project,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    # Wait until the second trial is being measured ("config" is set after ask() returns): a
    # Ctrl-C inside ask() leaves the trial RUNNING, to be failed as abandoned on resume instead.
    stored = None
    while stored is None or not any(t.state == TrialState.RUNNING and "config" in t.user_attrs
                                    for t in stored.get_trials(deepcopy=False)[1:]):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
        stored = stored or _grid_study_or_none(project)
    run.send_signal(signal.SIGINT)  # mid-grid, during the second trial
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, out + err
    interrupted = [t for t in grid_trials(project) if t.user_attrs.get("fail_reason") == "interrupted"]
    assert len(interrupted) == 1

    resumed = optdse(project, "grid", "g", "--levels", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    said = resumed.stdout + resumed.stderr  # rich's console writes to stderr
    assert "1 interrupted grid point(s) will be measured again" in said
    assert "4 configurations (2 threads x 2 cpus)" in said
    measured = [t for t in grid_trials(project) if t.user_attrs.get("fail_reason") != "interrupted"]
    points = sorted((t.params["threads"], t.params["cpus"]) for t in measured)
    assert points == [(1, 0.3), (1, 1.0), (4, 0.3), (4, 1.0)]  # each once, the interrupted one again
    assert any(t.user_attrs.get("retry_of") == interrupted[0].number for t in measured)

    again = optdse(project, "grid", "g", "--levels", "3")
    assert again.returncode == 2 and "--levels 2" in again.stderr

    assert optdse(project, "study", "g").returncode == 0
    report = optdse(project, "report", "g", "--output", "report.html")
    assert report.returncode == 0 and "grid g-grid (5 trials)" in report.stdout
    page = (project / "report.html").read_text()
    assert "hypervolume ratio" in page and "grid: Pareto front" in page


def _grid_study_or_none(project: Path) -> optuna.Study | None:
    """The grid's study, loaded once the run has created its storage and study (polling it
    through one study object: a load_study per poll costs ~50 ms of CPU)."""
    if not (project / "results" / "optdse.db").exists():
        return None
    try:
        return grid_study(project)
    except Exception:  # noqa: BLE001  # KeyError, or the schema being created right now
        return None


def test_the_grid_visits_points_in_deployment_order() -> None:
    """Replicas outermost and memory rising within them, so one deployment is updated in place."""
    space = {"threads": [1, 4], "replicas": [2, 1], "memory_mb": [512, 256], "cpus": [0.5, 1.0]}
    study = optuna.create_study(sampler=AskTellGridSampler(space, seed=0), directions=["minimize"])
    visited = []
    for _ in range(16):
        trial = study.ask()
        visited.append(tuple(trial.suggest_categorical(name, space[name])  # type: ignore[arg-type]
                             for name in ("replicas", "memory_mb", "cpus", "threads")))
        study.tell(trial, 0.0)
    assert visited == sorted(visited)
    assert len(set(visited)) == 16
