"""`optdse study`, `worker` and `grid`: one trial loop under this host's measuring lock, with a
progress bar, resumable after Ctrl-C or a kill."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from optdse import signals
from optdse.cli.backends import backend_for
from optdse.cli.output import cannot_open, console, fail, quiet_optuna, shown, warn


def study(args: argparse.Namespace, command: str = "study") -> int:
    from optdse.study import open_study

    def prepare(study: Any, storage: Any) -> tuple[Any, int]:
        optuna_study = open_study(study, storage, seed=True)
        _resume(optuna_study)
        return optuna_study, args.trials or study.spec.trials

    return _run_trials(command, args, prepare)


def grid(args: argparse.Namespace) -> int:
    from optdse.grid import grid_size, open_grid_study, retry_interrupted
    from optdse.levels import grid_space

    def prepare(study: Any, storage: Any) -> tuple[Any, int]:
        grid = open_grid_study(study, storage, args.levels)
        _resume(grid)
        retried = retry_interrupted(grid)
        if retried:
            console.print(f"resuming: {retried} interrupted grid point(s) will be measured again")
        space = grid_space(study, args.levels)
        size = grid_size(space)
        console.print(f"grid of {study.name} ({study.model.name}, file size: {study.model.unit}): {size} configurations ("
                      + " x ".join(f"{len(v)} {k}" for k, v in space.items()) + ")")
        return grid, size

    return _run_trials("grid", args, prepare)


def worker(args: argparse.Namespace) -> int:
    """`optdse study` for one of several hosts sharing a storage: the same trial loop."""
    return study(args, command="worker")


def _resume(optuna_study: Any) -> None:
    from optdse.study import fail_lost

    lost = fail_lost(optuna_study)
    if lost:
        console.print(f"resuming: trials {lost} were left RUNNING by a worker that is gone; "
                      "marked FAIL (abandoned) and enqueued again")


def _run_trials(command: str, args: argparse.Namespace, prepare: Callable[[Any, Any], tuple[Any, int]]) -> int:
    """What `study`, `worker` and `grid` share: load the study file, open its storage, take
    this host's measuring lock, deploy, run the trials with a progress bar, stop everything on
    Ctrl-C, print the front."""
    from optdse.deploy.runs import measuring_lock, other_live_runs
    from optdse.spec import SpecError
    from optdse.study_file import load_study
    from optdse.storage import OPEN_ERRORS, default_storage, open_storage

    quiet_optuna()
    try:
        study = load_study(args.name, args.server).with_load(args.requests, args.duration, args.repeats)
    except SpecError as error:
        return fail(command, str(error))
    url = args.storage or default_storage()
    try:
        optuna_study, target = prepare(study, open_storage(url, args.heartbeat))
    except ValueError as error:  # objectives or grid levels differ from the stored study's
        return fail(command, str(error))
    except OPEN_ERRORS as error:  # a URL Optuna/SQLAlchemy cannot open: say which, no traceback
        return cannot_open(command, url, error)
    with measuring_lock() as alone:
        if not alone:
            others = other_live_runs()
            already = (f"optdse process {', '.join(map(str, others))}" if others else "another optdse process") + \
                " is already running trials on this host"
            if not args.share_host:
                return fail(command, f"{already}; trials measured at the same time share the host's CPUs and "
                                      "falsify ART and ACU. Run one worker per host, or pass --share-host to run "
                                      "anyway (each trial then records host_shared_with)", code=1)
            warn(f"{already} (--share-host): concurrent trials share the CPUs, so ART and ACU are not "
                  "those of the configuration alone; each trial records host_shared_with")
        return _measure_trials(command, args, study, url, optuna_study, target)


def _measure_trials(command: str, args: argparse.Namespace, study: Any, url: str, optuna_study: Any,
                    target: int) -> int:
    from optdse.deploy.base import DeployError, beyond_host
    from optdse.spec import server_problem
    from optdse.progress import StudyProgress
    from optdse.study import repeatability, run_study

    for warning in beyond_host(study.largest("cpus"), study.largest("memory_mb"), f"{study.path}: cpus up to",
                               f"{study.path}: memory_mb up to"):
        warn(warning)
    backend_name, image = args.backend or study.spec.backend, args.image or study.spec.image
    problem = server_problem(study.spec.server, backend_name, image)
    if problem:
        return fail(command, f"--backend {backend_name}: {problem}")
    try:
        backend = backend_for(backend_name, study.model, args, image, study.spec.server)
    except DeployError as error:
        return fail(command, error.message, code=1)
    try:
        with StudyProgress(console, optuna_study, study, target) as progress:
            run_study(optuna_study, study, backend, target, progress)
    except KeyboardInterrupt as interrupt:
        console.print(f"stopped by {signals.signal_name(interrupt)}: a trial being measured is recorded as FAIL "
                      "(interrupted); run the same command again to resume")
        return signals.exit_code(interrupt)
    finally:
        with signals.atomic():  # one more Ctrl-C waits for the replicas to stop; a third one does not
            backend.close()
    from optdse.export import pareto_frame

    name = optuna_study.study_name
    console.print(f"\nPareto front of {name} ({len(pareto_frame(optuna_study))} configurations; model "
                  f"{study.model.name}, file size = {study.model.unit}):")
    console.print(StudyProgress.pareto_table(optuna_study))
    noise = repeatability(optuna_study)
    if noise is not None:
        trials, repeats, art_cv, acu_cv = noise
        console.print(f"repeatability: {trials} trials measured {repeats} times in a row; median coefficient of "
                      f"variation ART {art_cv:.1%}, ACU {acu_cv:.1%} (differences smaller than a few CVs are noise)")
    option = f" --storage {shown(url)}" if args.storage else ""
    console.print(f"storage: {shown(url)}\n  optdse report {study.name} --output report.html{option}"
                  f"\n  optdse dashboard {study.name}{option}\n  optdse export {study.name} --pareto pareto.csv{option}")
    return 0


__all__ = ["grid", "study", "worker"]
