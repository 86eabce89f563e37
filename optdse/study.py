"""The study: Optuna asks for a configuration, `measure` answers, Optuna is told.

The study storage is the source of truth. Every measured figure is a trial user attr; a
configuration that fails is recorded FAIL with its reason (`fail_reason`, `fail_message`);
one that runs but exceeds the error-rate limit is COMPLETE but infeasible, through the
samplers' constraints (what optuna-dashboard displays). Running the same study again resumes
it: trials a killed run left RUNNING are failed first, then the missing trials are run.

Several processes, on several hosts, can run trials of one study through one shared RDB
storage (`optdse worker`, docs/scaling-out.md). Every trial sends Optuna's RDB
heartbeat while it is measured; a trial whose heartbeat stops (its worker crashed, or its host
went away) is failed as `abandoned` by whichever worker notices first, and measured again
once, as a new trial enqueued with the same parameters (`retry_of`). A failure that was
retried does not count towards the study's number of trials: its retry does.
"""

from __future__ import annotations

import socket
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Protocol

import optuna
import psutil
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from optdse import signals
from optdse.config import GRACE_HEARTBEATS, Config
from optdse.dashboard import failure_note, save_hypervolume_plot, save_trial_note, trial_note
from optdse.deploy.base import Backend, DeployError
from optdse.deploy.runs import live_process, other_live_runs
from optdse.knobs import switches
from optdse.levels import grid_space
from optdse.measurement import MAX_LATE_FRACTION, Measurement, combine_repeats, combine_scenarios
from optdse.objective import MeasureError, measure
from optdse.optuna_internals import heartbeat, heartbeat_s, set_constraints, stale_trial_ids, storage_of, trial_id
from optdse.record import (
    TrialRecord,
    constraints_of,
    records,
    retry_attrs,
    retry_of,
    write_abandoned,
    write_failed,
    write_measured,
    write_configuration,
    write_owner,
)
from optdse.space import active, fixed_values, suggest_scenarios
from optdse.spec import METRICS, Study, StudySpec
from optdse.storage import shown_url

FINISHED = (TrialState.COMPLETE, TrialState.FAIL)


def constraints(trial: FrozenTrial) -> list[float]:
    """Optuna's constraint format (<= 0 is feasible), as optdse records it (a trial that
    recorded none counts as feasible)."""
    return constraints_of(trial) or [0.0]


def make_sampler(study: Study) -> BaseSampler:
    """The study file's sampler, with the error-rate constraint wired in.

    Optuna 5 deprecates `constraints_func` in favour of `Trial.set_constraint`, but
    optuna-dashboard 0.21 reads only the system attr that `constraints_func` writes, so
    infeasible trials would look feasible there. Kept until the dashboard reads both."""
    spec = study.spec.sampler
    with warnings.catch_warnings():  # the deprecation warning, at construction only
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        if spec.name == "tpe":
            # multivariate: the five dimensions interact (threads x replicas x cpus), which
            # independent per-parameter TPE cannot model.
            return TPESampler(n_startup_trials=spec.n_startup_trials, multivariate=True, seed=spec.seed,
                              constraints_func=constraints)
        if spec.name == "nsga2":
            return NSGAIISampler(seed=spec.seed, constraints_func=constraints)
    return RandomSampler(seed=spec.seed)


def open_study(study: Study, storage: str | BaseStorage, name: str | None = None,
               sampler: BaseSampler | None = None, seed: bool = False) -> optuna.Study:
    """Create the study in `storage`, or load it if it exists (that is how a run resumes, and
    how a worker joins). `name` and `sampler` default to the study file's (the grid baseline
    sets both). With `seed`, the process that creates the study enqueues its start points
    (`start_points`): creating is atomic in the storage, so workers starting together
    enqueue them once."""
    name = name or study.name
    directions = [o.direction for o in study.spec.objectives]
    sampler = sampler or make_sampler(study)
    with signals.atomic():  # a created study gets its start points, even if Ctrl-C comes in between
        try:
            optuna_study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                               sampler=sampler)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            optuna_study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            created = False
        if seed and created:
            for point in start_points(study):
                optuna_study.enqueue_trial(point, skip_if_exists=True)
    if [d.name.lower() for d in optuna_study.directions] != directions:
        raise ValueError(f"study {name} in {shown_url(storage)} has objectives {optuna_study.directions}, "
                         f"the study file asks for {directions}; use another --storage or study name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna_study.set_metric_names([o.metric for o in study.spec.objectives])  # shown by the dashboard
    return optuna_study


def fail_lost(optuna_study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, as `abandoned`, and enqueue each one again
    (once: a retry that is lost too stays failed). Gone means: its heartbeat is older than the
    grace period (any host), or it was measured on this host by a process that has exited
    (found at once, without waiting for the grace period). Returns the failed trials' numbers.

    Several workers may find the same trial: Optuna lets only one of them fail it, and only
    that one enqueues the retry."""
    storage = storage_of(optuna_study)  # Optuna has no public "fail this trial" for others' trials
    stale = stale_trial_ids(optuna_study)
    failed = []
    for trial in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = TrialRecord.of(trial)
        here = record.host == socket.gethostname()
        if here and _process_gone(record.pid, record.pid_started):
            why = f"its run (pid {record.pid} on this host) was killed"
        elif trial_id(trial) in stale:
            why = (f"its worker (pid {record.pid} on host {record.host or '?'}) sent no heartbeat "
                   f"for {(heartbeat_s(optuna_study) or 0) * GRACE_HEARTBEATS} s")
        else:
            continue
        with signals.atomic():  # failed and enqueued again, or neither
            try:
                write_abandoned(storage, trial_id(trial), why)
                if not storage.set_trial_state_values(trial_id(trial), TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker failed it first
            failed.append(trial.number)
            if record.retry_of is None:
                optuna_study.enqueue_trial(dict(trial.params), user_attrs=retry_attrs(trial.number))
    return failed


def _process_gone(pid: int | None, started: float | None) -> bool:
    return pid is None or live_process(pid, started or 0.0) is None


def trial_counts(optuna_study: optuna.Study) -> tuple[int, int]:
    """(finished, running): trials that count towards the study's target, and trials being
    measured now (by any worker). A failed trial that a retry replaces does not count."""
    trials = optuna_study.get_trials(deepcopy=False)
    replaced = {retry_of(t) for t in trials}
    finished = sum(1 for t in trials if t.state in FINISHED and t.number not in replaced)
    return finished, sum(1 for t in trials if t.state == TrialState.RUNNING)


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: TrialState
    values: list[float] | None
    summary: str


def run_trial(optuna_study: optuna.Study, study: Study, backend: Backend) -> TrialOutcome:
    """Ask for one trial, measure it (sending heartbeats meanwhile) and tell its result.

    Whatever stops the trial once it exists is recorded on it: a stop signal or Ctrl-C as
    `interrupted`, a bug as `error`, then it propagates. Asking and telling are atomic
    (`optdse.signals`): a signal never leaves the storage with a trial half-written."""
    trial: optuna.Trial | None = None
    try:
        with warnings.catch_warnings(), signals.atomic():
            # Optuna warns that heartbeats belong to Study.optimize; run_trial sends them itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = optuna_study.ask()
        with heartbeat(optuna_study, trial):
            return _measure_trial(optuna_study, trial, study, backend)
    except BaseException as error:
        if trial is not None:
            _record_failure(optuna_study, trial, error)
        raise


def _measure_trial(optuna_study: optuna.Study, trial: optuna.Trial, study: Study, backend: Backend) -> TrialOutcome:
    config: Config | None = None
    try:  # from here on, whatever happens is recorded on the trial
        configs = _configure(trial, study, backend)
        results = []
        for _, config in configs:  # each workload scenario in turn, on the same deployment
            repeats = [measure(backend, config) for _ in range(study.spec.repeats)]
            results.append(repeats[0] if len(repeats) == 1 else combine_repeats(repeats))
        result: Measurement = (results[0] if len(results) == 1 else
                               combine_scenarios(results, [name for name, _ in configs], study.spec.workload.aggregate, METRICS))
        config = configs[0][1]
    except (DeployError, MeasureError) as error:
        with signals.atomic():
            write_failed(trial, error.reason, error.message)
            save_trial_note(trial, failure_note(config, error.reason, error.message))
            optuna_study.tell(trial, state=TrialState.FAIL)
        return TrialOutcome(trial.number, TrialState.FAIL, None, f"{error.reason}: {error.message}")
    values = [float(getattr(result, o.metric)) for o in study.spec.objectives]
    limits, names = constraint_values(result, study.spec), constraint_names(study.spec)
    with signals.atomic():  # the measured trial is recorded whole
        write_measured(trial, result, limits, names)
        # Also where Optuna's front and optuna-dashboard read them: TPE and NSGA-II write that on
        # tell themselves, but RandomSampler takes no constraints, so its infeasible trials would join the front.
        set_constraints(trial, limits)
        save_trial_note(trial, trial_note(config, result))
        optuna_study.tell(trial, values)
    summary = (f"ART {result.art_ms:.2f} ms, ACU {result.acu_cores:.3f} cores, p95 {result.p95_ms:.2f} ms, "
               f"{result.throughput_rps:.0f} req/s, errors {result.errors}")
    shown = ("art_ms", "acu_cores", "p95_ms", "throughput_rps")
    summary += "".join(f", {o.metric} {float(getattr(result, o.metric)):.4g}" for o in study.spec.objectives
                       if o.metric not in shown)  # every objective is on the line
    if result.retried_requests or result.replicas_killed:
        summary += f", {result.retried_requests} retried" + "".join(f", killed {name}" for name in result.replicas_killed)
    if result.offered_rps:
        summary += f", {result.late_sends} late sends" + ("" if result.generator_kept_up else " (INFEASIBLE)")
    missed = [name for name, value in zip(names, limits) if value > 0]
    if missed and result.error_rate <= study.spec.error_limit and limits[0] > 0:
        missed[0] = "a valid load (the generator fell behind)"  # the first constraint holds both
    if missed:
        summary += f", misses {', '.join(missed)} (infeasible)"
    if result.scenarios:
        summary += f", {result.aggregate} of {len(result.scenarios)} scenarios"
    if result.repeats > 1:
        summary += f", CV over {result.repeats} repeats: ART {result.art_cv:.1%}, ACU {result.acu_cv:.1%}"
    return TrialOutcome(trial.number, TrialState.COMPLETE, values, summary)


def feasibility(result: Measurement, max_error_rate: float) -> float:
    """The trial's first constraint (<= 0 feasible): its error rate over the limit, or in an
    open-loop run whose generator fell behind, its share of late sends over the limit."""
    excess = result.error_rate - max_error_rate
    return excess if result.generator_kept_up else max(excess, result.late_fraction - MAX_LATE_FRACTION)


def constraint_values(result: Measurement, spec: StudySpec) -> list[float]:
    """Every constraint of the study (<= 0 feasible), in constraint_names' order: the error
    rate (and the generator keeping up) first, then each SLO the study file sets, as its
    relative miss (0.2: 20% over an upper bound, or 20% under the throughput floor), so
    samplers that weigh violations compare them on one scale."""
    values = [feasibility(result, spec.error_limit)]
    slo = spec.constraints
    for metric in slo.UPPER:
        bound = getattr(slo, metric)
        if bound is not None:
            values.append(float(getattr(result, metric)) / bound - 1)
    if slo.min_throughput_rps is not None:
        values.append(1 - result.throughput_rps / slo.min_throughput_rps)
    return values


def constraint_names(spec: StudySpec) -> list[str]:
    """What each of constraint_values says, for the report and the note."""
    slo = spec.constraints
    return ([f"error_rate <= {spec.error_limit:g}"]
            + [f"{metric} <= {getattr(slo, metric):g}" for metric in slo.UPPER if getattr(slo, metric) is not None]
            + ([f"throughput_rps >= {slo.min_throughput_rps:g}"] if slo.min_throughput_rps is not None else []))


def _configure(trial: optuna.Trial, study: Study, backend: Backend) -> list[tuple[str, Config]]:
    """The trial's configuration under each workload scenario (one, unnamed, without them);
    records which process on which host measures it, so a resumed study can tell a trial
    whose run was killed from one still being measured."""
    me = psutil.Process()
    who: dict[str, object] = {"host": socket.gethostname(), "pid": me.pid, "pid_started": me.create_time(),
                              "backend": backend.name}
    others = other_live_runs()
    if others:  # another optdse process has replicas on this host: this trial shares its CPUs
        who["host_shared_with"] = others
    write_owner(trial, who)  # before anything that takes time: a run killed from here on is found at once
    configs = suggest_scenarios(trial, study)
    workload = study.spec.workload.resolved() if study.spec.workload else [("", {})]
    held = active(fixed_values(study) | trial.params, study.spec.server) | (workload[0][1] if len(workload) == 1 else {})
    # held by the space or the workload, not suggested (batching parameters only with batching on)
    held = {name: value for name, value in held.items() if name not in trial.params}
    config = configs[0][1]
    scenarios = ", ".join(name for name, _ in configs)
    described = (config.describe() if len(configs) == 1 else
                 f"{config.server_describe()}, under {len(configs)} scenarios: {scenarios}")
    write_configuration(trial, study.model.record(), held, described, config.client.requests, config.client.duration_s)
    return configs


def _record_failure(optuna_study: optuna.Study, trial: optuna.Trial, error: BaseException) -> None:
    """Fail a trial that is still RUNNING, with why. One more stop signal waits for this
    (`signals.atomic`); a storage error here must not hide the first error, and a trial left
    RUNNING is failed as abandoned when the study resumes."""
    interrupted = isinstance(error, KeyboardInterrupt)
    message = (f"stopped by {signals.signal_name(error)}" if interrupted  # type: ignore[arg-type]
               else f"{type(error).__name__}: {error}"[:1000])
    try:
        with signals.atomic():
            write_failed(trial, "interrupted" if interrupted else "error", message)
            optuna_study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.OptunaError, SQLAlchemyError) as record_error:  # not RUNNING any more, or no storage
        warnings.warn(f"trial {trial.number}: could not record why it stopped ({record_error})", stacklevel=2)


class TrialEvents(Protocol):
    """What `run_study` tells whoever shows its progress (optdse.progress.StudyProgress)."""

    def counted(self, finished: int) -> None: ...

    def trial_done(self, outcome: TrialOutcome) -> None: ...

    def waiting(self, running: int) -> None: ...

    def lost(self, numbers: list[int]) -> None: ...


def run_study(optuna_study: optuna.Study, study: Study, backend: Backend, target: int,
              events: TrialEvents | None = None) -> None:
    """Run trials until the study has `target` finished ones (COMPLETE or FAIL; see
    `trial_counts`), together with whatever other workers share its storage.

    When the trials still missing are all being measured elsewhere, this worker waits for them
    rather than leaving: if one of those workers dies, its trial is failed and retried here.
    Two workers that ask at the same instant for the last trial can overshoot the target by one."""
    poll_s = heartbeat_s(optuna_study) or 5
    while True:
        lost = fail_lost(optuna_study)
        if lost and events:
            events.lost(lost)
        finished, running = trial_counts(optuna_study)
        if events:
            events.counted(finished)  # other workers' trials count too
        if finished >= target:
            break
        if finished + running >= target:
            if events:
                events.waiting(running)
            time.sleep(poll_s)
            continue
        outcome = run_trial(optuna_study, study, backend)
        if events:
            events.trial_done(outcome)
    save_hypervolume_plot(optuna_study)


def repeatability(optuna_study: optuna.Study) -> tuple[int, int, float, float] | None:
    """(trials, repeats, median ART CV, median ACU CV) over the completed trials that were
    measured more than once; None when none were (the study ran with repeats 1)."""
    repeated = [r.measured for r in records(optuna_study, (TrialState.COMPLETE,))
                if r.measurement is not None and r.measurement.repeats > 1]
    if not repeated:
        return None
    return (len(repeated), max(m.repeats for m in repeated), statistics.median(m.art_cv or 0.0 for m in repeated),
            statistics.median(m.acu_cv or 0.0 for m in repeated))


#: Values per parameter in the one-factor-at-a-time start (the benchmark's grid had 4).
START_LEVELS = 4


def start_points(study: Study) -> list[dict[str, float]]:
    """The configurations a new study measures before its sampler proposes any: the study
    file's `enqueue` list, then (with `sampler.start: one-factor`) the seed report's plan
    around the first of them (what it leaves open at its lowest value): each varied parameter
    over START_LEVELS values spread over its range (as `optdse grid` spreads them), the others
    held. On the measured MNIST grid this
    start took multivariate TPE to 95% of the grid's hypervolume in 21.5 evaluations (median) instead
    of 72 (benchmarks/sample_efficiency.py): a low-load configuration and its neighbours span
    much of the front, and TPE then has a spread of good points to model."""
    points = [dict(point) for point in study.spec.enqueue]
    if study.spec.sampler.start == "none":
        return points
    levels = grid_space(study, START_LEVELS)
    base = dict(points[0]) if points else {}
    for name, values in levels.items():  # what the first point leaves open starts at its lowest value
        base.setdefault(name, values[0])
    # The first point is measured as the plan's centre, not with what it leaves open sampled:
    # every other start point differs from it in one parameter only.
    points = [dict(base), *points[1:]]
    for name, values in levels.items():
        # A batching parameter varied with batching off would not reach the server: turn it on.
        switch = switches(study.spec.server).get(name)
        turn_on = {switch: True} if switch in base else {}
        points += [{**base, name: value, **turn_on} for value in values if value != base[name]]
    points = [active(point, study.spec.server) for point in points]  # no batching parameters where batching is off
    return list({tuple(sorted(point.items())): point for point in points}.values())  # each once


__all__ = ["START_LEVELS", "TrialEvents", "constraint_names", "constraint_values", "constraints", "fail_lost", "make_sampler", "open_study", "repeatability", "run_study",
           "run_trial", "start_points", "trial_counts"]
