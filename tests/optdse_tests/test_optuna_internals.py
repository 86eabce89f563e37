"""Each private Optuna use in optdse.optuna_internals, against the installed Optuna: a release
that moves one fails here, by name."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.samplers import GridSampler, RandomSampler
from optuna.storages import RDBStorage
from optuna_dashboard._serializer import serialize_frozen_trial

from optdse import optuna_internals as internals


def test_constraints_reach_optuna_and_the_dashboard() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=RandomSampler(seed=0))
    for values, constraints in (([1.0, 1.0], [0.5]), ([2.0, 2.0], [-0.5])):
        trial = study.ask()
        internals.set_constraints(trial, constraints)
        study.tell(trial, values)
    first, second = study.get_trials()
    assert first.system_attrs[internals.CONSTRAINTS_ATTR] == [0.5] and second.system_attrs[internals.CONSTRAINTS_ATTR] == [-0.5]
    assert [t.number for t in study.best_trials] == [1]  # the infeasible trial, though better, is not on the front
    shown = serialize_frozen_trial(study._study_id, first, {})  # noqa: SLF001  # what the dashboard sends its page
    assert shown["constraints"] == [0.5]


def test_stale_trials_are_those_whose_heartbeats_stopped(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage)
    assert internals.heartbeat_s(study) == 1  # the storage is found behind Optuna's cache
    beating, stopped = study.ask(), study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
        with internals.heartbeat(study, beating):
            with internals.heartbeat(study, stopped):  # a worker that sent heartbeats, then died
                time.sleep(0.5)
            time.sleep(3.5)
            assert internals.stale_trial_ids(study) == {internals.trial_id(stopped)}
    assert internals.stale_trial_ids(optuna.create_study()) == set()  # in memory: no heartbeats
    assert internals.heartbeat_s(optuna.create_study()) is None
    assert internals.HEARTBEAT_METHODS and all(callable(getattr(RDBStorage, m)) for m in internals.HEARTBEAT_METHODS)


def test_a_sorted_grid_is_visited_in_its_order() -> None:
    space = {"a": [1, 2], "b": [10, 20, 30]}
    sampler = GridSampler(space, seed=0)
    internals.sort_grid(sampler, lambda point: (-point["b"], point["a"]))
    expected = [{"a": a, "b": b} for b in (30, 20, 10) for a in (1, 2)]
    assert internals.grid_points(sampler) == expected
    study = optuna.create_study(sampler=sampler)
    asked = []
    for _ in expected[:-1]:  # after the last point GridSampler stops the study, which needs optimize
        trial = study.ask({"a": optuna.distributions.CategoricalDistribution([1, 2]),
                           "b": optuna.distributions.CategoricalDistribution([10, 20, 30])})
        asked.append(trial.params)
        study.tell(trial, 0.0)
    assert asked == expected[:-1]


def test_hypervolume_of_two_points() -> None:
    points = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert internals.compute_hypervolume(points, np.array([3.0, 3.0])) == pytest.approx(3.0)
