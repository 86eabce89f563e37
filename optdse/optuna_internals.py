"""Every use of Optuna beyond its public API, in one place, each with the reason.

optdse pins optuna 5.0 (pyproject.toml). tests/optdse_tests/test_optuna_internals.py runs each
function here against the installed Optuna, so a release that moves one of them fails that
test by name instead of failing a study halfway.

- Heartbeats: `Study.optimize` sends them; optdse's ask-and-tell loop must send them itself,
  and find other workers' stale trials to fail them (Optuna fails only its own, inside
  optimize). Optuna exposes neither outside optimize.
- Constraints: optuna-dashboard 0.21 reads a trial's constraints only from the list-valued
  system attr that samplers' `constraints_func` writes, not from `Trial.set_constraint`'s
  per-key attrs, so optdse writes that attr (Optuna's `best_trials` reads both forms).
- The grid's visiting order: GridSampler keeps its points in a private list, which
  `grid.AskTellGridSampler` sorts.
- Hypervolume: `optuna.visualization.plot_hypervolume_history` counts trials by number and
  skips failed ones; the report counts evaluations (a failed configuration cost one), so it
  computes the history with the same hypervolume routine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume as _compute_hypervolume
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat, BaseHeartbeatThread, get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial

#: The system attr Optuna's samplers (and optuna-dashboard) read a trial's constraints from.
CONSTRAINTS_ATTR = "constraints"

#: The storage calls a heartbeat storage adds to BaseStorage's (storage.PatientRDBStorage wraps them too).
HEARTBEAT_METHODS: frozenset[str] = frozenset(BaseHeartbeat.__abstractmethods__)


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage object behind a study (Optuna keeps it private)."""
    return study._storage  # noqa: SLF001


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage, which the storage's own calls take."""
    return trial._trial_id  # noqa: SLF001


def heartbeat_s(study: optuna.Study) -> int | None:
    """The storage's heartbeat interval; None where it sends none."""
    storage = storage_of(study)
    return storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None  # type: ignore[attr-defined]


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> BaseHeartbeatThread:
    """A context manager sending the trial's heartbeats while it runs (a no-op without them)."""
    return get_heartbeat_thread(trial_id(trial), storage_of(study))


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Storage ids of the RUNNING trials whose heartbeat is older than the grace period."""
    storage = storage_of(study)
    if not is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]  # noqa: SLF001


def set_constraints(trial: optuna.Trial, values: Sequence[float]) -> None:
    """Store the trial's constraints (<= 0 is feasible) where samplers, `best_trials` and
    optuna-dashboard read them."""
    trial.storage.set_trial_system_attr(trial_id(trial), CONSTRAINTS_ATTR, list(values))


def sort_grid(sampler: GridSampler, key: Callable[[dict[str, Any]], Any]) -> None:
    """Put a GridSampler's points in the order of `key`, called with each point as
    {parameter: value}; the sampler then visits them in that order."""
    names = sampler._param_names  # noqa: SLF001
    sampler._all_grids.sort(key=lambda point: key(dict(zip(names, point, strict=True))))  # noqa: SLF001


def grid_points(sampler: GridSampler) -> list[dict[str, Any]]:
    """A GridSampler's points in the order it visits them."""
    names = sampler._param_names  # noqa: SLF001
    return [dict(zip(names, point, strict=True)) for point in sampler._all_grids]  # noqa: SLF001


def compute_hypervolume(loss_points: np.ndarray, reference_point: np.ndarray) -> float:
    """The hypervolume that minimisation points dominate up to the reference point (Optuna's
    exact routine, the one its own plots use)."""
    return float(_compute_hypervolume(loss_points, reference_point))


__all__ = ["CONSTRAINTS_ATTR", "HEARTBEAT_METHODS", "compute_hypervolume", "grid_points",
           "heartbeat", "heartbeat_s", "set_constraints", "sort_grid", "stale_trial_ids", "storage_of", "trial_id"]
