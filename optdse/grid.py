"""`optdse grid`: the exhaustive baseline the Bayesian study is measured against.

Each varied parameter of the study's search space gets `levels` values spread over its range
(geometrically on log ranges, on the step grid where there is one, de-duplicated after
rounding to whole numbers); fixed parameters keep their value. Optuna's GridSampler visits
every combination once, in a study named NAME-grid in the same storage, so the report can
draw both fronts on one reference point. The points are visited in deployment order (server
parameters outermost, memory rising) so the backend updates one deployment in place instead
of starting replicas for most points. A killed grid resumes where it stopped: grid points
whose trial was interrupted or abandoned are measured again; all other failures (OOM, say)
are that point's result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from optdse.knobs import KNOBS, TRITON_KNOBS
from optdse.levels import grid_space
from optdse.optuna_internals import sort_grid
from optdse.record import NOT_THE_CONFIGURATION, TrialRecord, retry_attrs
from optdse.spec import Study
from optdse.study import open_study

#: Visiting order: the slowest change to deploy outermost. A new replica count starts or stops
#: processes; memory is raised in place (lowering it below use restarts a replica, so it
#: rises within each replica count); CPU quotas, the network's impairment (a new relay or
#: qdisc per trial anyway) and client parameters change for free. A server knob is a new
#: command line, so every replica restarts: knobs are outermost.
DEPLOYMENT_ORDER = ("model", *dict.fromkeys([*KNOBS, *TRITON_KNOBS]), "replicas", "memory_mb", "cpus", "delay_ms", "jitter_ms", "loss_pct", "file_size",
                    "threads", "rate_rps")


class AskTellGridSampler(GridSampler):
    """GridSampler for ask-and-tell, visiting the points in `DEPLOYMENT_ORDER`.

    Optuna's GridSampler shuffles the points (so distributed workers rarely collide) and calls
    `study.stop()` after the last one, which only works inside `study.optimize`. A grid runs
    in one process, so the points are sorted instead, and the trial loop counts them itself
    (a grid of N points is N finished trials, retried ones replaced by their retries), so
    nothing needs stopping. The sort goes through
    optdse.optuna_internals (GridSampler keeps its points private); a test checks the order."""

    def __init__(self, search_space: dict[str, list[float]], seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        names = sorted(search_space, key=lambda name: (DEPLOYMENT_ORDER.index(name) if name in DEPLOYMENT_ORDER
                                                       else len(DEPLOYMENT_ORDER), name))
        sort_grid(self, lambda point: tuple(point[name] for name in names))

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass


def grid_size(space: dict[str, list[float]]) -> int:
    return math.prod(len(values) for values in space.values())


def grid_name(study: Study) -> str:
    return f"{study.name}-grid"


def open_grid_study(study: Study, storage: str | BaseStorage, levels: int) -> optuna.Study:
    """The NAME-grid study with its GridSampler; the levels are stored, and a different
    --levels for an existing grid is refused (its points would not be one grid)."""
    space = grid_space(study, levels)
    grid = open_study(study, storage, name=grid_name(study), sampler=AskTellGridSampler(space, seed=0))
    stored = grid.user_attrs.get("levels")
    if stored is None:
        grid.set_user_attr("levels", levels)
        grid.set_user_attr("grid", space)
    elif stored != levels:
        raise ValueError(f"{grid_name(study)} in {storage} was started with --levels {stored}; "
                         f"use --levels {stored} to resume it, or another --storage")
    return grid


def retry_interrupted(grid: optuna.Study) -> int:
    """Enqueue again each grid point whose trial was interrupted or abandoned (once; the
    study's `fail_lost` already enqueues the abandoned ones it finds)."""
    trials = grid.get_trials(deepcopy=False)
    kept = [TrialRecord.of(trial) for trial in trials]  # each trial read once
    retried = {record.retry_of for record in kept}
    count = 0
    for trial, record in zip(trials, kept, strict=True):
        if (record.state == TrialState.FAIL and record.fail_reason in NOT_THE_CONFIGURATION
                and record.number not in retried):
            grid.enqueue_trial(dict(trial.params), user_attrs=retry_attrs(record.number))
            count += 1
    return count


__all__ = ["DEPLOYMENT_ORDER", "AskTellGridSampler", "grid_name", "grid_size", "open_grid_study",
           "retry_interrupted"]
