"""How many evaluations each sampler needs to find the grid's Pareto front: tabular replay.

The exhaustive grid (benchmarks/data/mnist-pareto-grid-4.csv, measured once with real replicas
by benchmarks/grid_table.py) is the ground truth. Each sampler runs the study's own search
space (optdse.space.suggest, the same distributions and constraint as `optdse study`), but
instead of deploying, a proposed configuration is snapped to the nearest grid point (on a log
scale for log ranges) and its measured outcome is looked up: failed points (OOM) fail the
trial, points over the error-rate limit are infeasible through the same constraint.

Hypervolume is taken over the feasible points found so far, with both objectives normalised
over the grid's feasible points: ART on a log scale (it spans three orders of magnitude, and
a linear scale would let the slowest configurations decide), ACU linearly; the reference
point is 1.1 on both. The grid's own hypervolume is 100%.

Samplers, each over --seeds seeds (replay is cheap: no deployment):
  default      what `optdse study` does: the study file's sampler (make_sampler:
               multivariate TPE, 10 start-up trials, the error-rate constraint) after the
               one-factor-at-a-time start (optdse.study.start_points: the seed's setting,
               then each parameter over 4 values with the others held; 18 configurations)
  tpe-mv-N     multivariate TPE with N random start-up trials, after the study file's
               enqueued configuration only (tpe-mv-10 was the default before this benchmark)
  tpe          Optuna's TPESampler with its defaults (independent, 10 start-up trials)
  nsga2        Optuna's NSGAIISampler (population 50)
  gp, ofat+gp  Optuna's GPSampler (log-EHVI; needs PyTorch: see README), without and with
               the one-factor start; its proposals take seconds each on 2 cores, so it
               gets --gp-seeds runs of --gp-evaluations
  random       Optuna's RandomSampler
  ofat         the default's one-factor-at-a-time start alone (18 configurations, snapped
               to the grid like every proposal; then it has nothing left to try)
Printed per sampler: the median evaluations to reach 90/95/99% of the grid's hypervolume
(">N" when the median run did not within N), how many seeds reached 95%, and the median
hypervolume after 10/20/40 evaluations. The last line: the default sampler's median
evaluations to 95% and how many times fewer that is than random search's.

Run from the repository root (PyTorch for GPSampler is the `bench` extra):
  .venv/bin/pip install -q -e '.[bench]' && .venv/bin/python benchmarks/sample_efficiency.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optdse.optuna_internals import compute_hypervolume  # noqa: E402  # what Optuna's own plots use (pinned)
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from optdse.space import suggest  # noqa: E402
from optdse.spec import PARAMETERS, Range, Study  # noqa: E402
from optdse.study_file import load_study  # noqa: E402
from optdse.study import constraints, make_sampler, start_points  # noqa: E402

THRESHOLDS = (0.90, 0.95, 0.99)
CHECKPOINTS = (10, 20, 40)
REFERENCE = 1.1


@dataclass(frozen=True)
class Outcome:
    """One grid point as measured: objectives (ART ms, ACU cores) and feasibility, or failed."""

    failed: bool
    art_ms: float = math.nan
    acu_cores: float = math.nan
    error_rate: float = 0.0


class GridTable:
    """The measured grid: snap a configuration to its nearest point and look its outcome up."""

    def __init__(self, frame: pd.DataFrame, study: Study) -> None:
        self.study = study
        self.levels = {name: sorted(frame[name].unique()) for name in PARAMETERS}
        self.log = {name: isinstance(d, Range) and d.log for name, d in study.space.parameters.items()}
        self.outcomes: dict[tuple[float, ...], Outcome] = {}
        for row in frame.itertuples(index=False):
            key = tuple(float(getattr(row, name)) for name in PARAMETERS)
            self.outcomes[key] = (Outcome(failed=True) if row.state != "COMPLETE" else
                                  Outcome(False, float(row.art_ms), float(row.acu_cores), float(row.error_rate)))
        feasible = [o for o in self.outcomes.values() if self.feasible(o)]
        art = np.log10([o.art_ms for o in feasible])
        acu = np.array([o.acu_cores for o in feasible])
        self._art_range, self._acu_range = (art.min(), art.max()), (acu.min(), acu.max())
        self.hypervolume = self.hypervolume_of(feasible)

    def feasible(self, outcome: Outcome) -> bool:
        return not outcome.failed and outcome.error_rate <= self.study.spec.max_error_rate

    def snap(self, name: str, value: float) -> float:
        levels = np.array(self.levels[name], dtype=float)
        distance = np.abs(np.log(levels) - math.log(value)) if self.log.get(name) else np.abs(levels - value)
        return float(levels[int(np.argmin(distance))])

    def lookup(self, values: dict[str, float]) -> Outcome:
        return self.outcomes[tuple(self.snap(name, values[name]) for name in PARAMETERS)]

    def normalised(self, outcome: Outcome) -> tuple[float, float]:
        (a0, a1), (c0, c1) = self._art_range, self._acu_range
        return ((math.log10(outcome.art_ms) - a0) / (a1 - a0), (outcome.acu_cores - c0) / (c1 - c0))

    def hypervolume_of(self, outcomes: list[Outcome]) -> float:
        if not outcomes:
            return 0.0
        points = np.array([self.normalised(o) for o in outcomes])
        return float(compute_hypervolume(points, np.array([REFERENCE, REFERENCE])))


def replay(table: GridTable, sampler: BaseSampler, evaluations: int,
           first: list[dict[str, float]] | None = None) -> list[float]:
    """Run `evaluations` trials of the study against the table; the hypervolume share after each.
    `first`: configurations enqueued before the sampler proposes (default: the study file's)."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for point in table.study.spec.enqueue if first is None else first:
        study.enqueue_trial(dict(point))
    found: list[Outcome] = []
    history = []
    for _ in range(evaluations):
        trial = study.ask()
        config = suggest(trial, table.study)
        values = {"threads": config.client.threads, "file_size": config.client.file_size,
                  "replicas": config.server.replicas, "cpus": config.server.cpus,
                  "memory_mb": config.server.memory_mb}
        outcome = table.lookup(values)
        if outcome.failed:
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr("constraints", [outcome.error_rate - table.study.spec.max_error_rate])
            study.tell(trial, [outcome.art_ms, outcome.acu_cores])
            if table.feasible(outcome):
                found.append(outcome)
        history.append(table.hypervolume_of(found) / table.hypervolume)
    return history


def one_factor_at_a_time(table: GridTable, evaluations: int) -> list[float]:
    """The seed's plan alone: the default start's configurations (optdse.study.start_points),
    what a point leaves open at its lowest level, and nothing after them."""
    lowest = {name: table.levels[name][0] for name in PARAMETERS}
    found: list[Outcome] = []
    history = []
    for point in start_points(table.study)[:evaluations]:
        outcome = table.lookup({**lowest, **point})
        if table.feasible(outcome):
            found.append(outcome)
        history.append(table.hypervolume_of(found) / table.hypervolume)
    return history + [history[-1]] * (evaluations - len(history))  # nothing left to try


def samplers(study: Study) -> dict[str, Callable[[int], BaseSampler]]:
    def default(seed: int) -> BaseSampler:
        spec = study.spec.model_copy(update={"sampler": study.spec.sampler.model_copy(update={"seed": seed})})
        return make_sampler(study.model_copy(update={"spec": spec}))

    def tpe_mv(startup: int) -> Callable[[int], BaseSampler]:
        return lambda seed: TPESampler(n_startup_trials=startup, multivariate=True, seed=seed,
                                       constraints_func=constraints)

    def gp(seed: int) -> BaseSampler:
        from optuna.samplers import GPSampler  # imports torch

        return GPSampler(seed=seed, constraints_func=constraints)

    return {"default": default, "tpe-mv-10": tpe_mv(10), "tpe-mv-5": tpe_mv(5), "tpe-mv-20": tpe_mv(20),
            "tpe": lambda seed: TPESampler(seed=seed, constraints_func=constraints),
            "nsga2": lambda seed: NSGAIISampler(seed=seed, constraints_func=constraints), "gp": gp, "ofat+gp": gp,
            "random": lambda seed: RandomSampler(seed=seed)}


def evaluations_to(history: list[float], share: float) -> int | None:
    return next((i + 1 for i, value in enumerate(history) if value >= share), None)


def median_evaluations(histories: list[list[float]], share: float) -> tuple[float, int]:
    """Median evaluations to reach `share` (inf for a run that never did) and how many did."""
    counts = [evaluations_to(h, share) for h in histories]
    return statistics.median(c if c is not None else math.inf for c in counts), sum(c is not None for c in counts)


def shown(value: float, budget: int) -> str:
    return f">{budget}" if math.isinf(value) else f"{value:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "data" / "mnist-pareto-grid-4.csv")
    parser.add_argument("--study", default="mnist-pareto")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--evaluations", type=int, default=100, help="per run (random search: 4x as many)")
    parser.add_argument("--only", nargs="*", help="run only these samplers")
    parser.add_argument("--gp-evaluations", type=int, default=30, help="GPSampler: evaluations per run")
    parser.add_argument("--gp-seeds", type=int, default=3, help="GPSampler: runs")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if (not args.only or "gp" in args.only) and importlib.util.find_spec("torch") is None:
        print("benchmarks/sample_efficiency.py: Optuna's GPSampler needs PyTorch; install the CPU build with "
              "`.venv/bin/pip install -e '.[bench]'` (or leave gp out with --only)", file=sys.stderr)
        sys.exit(2)
    study = load_study(args.study)
    table = GridTable(pd.read_csv(args.table), study)
    feasible = sum(table.feasible(o) for o in table.outcomes.values())
    print(f"grid: {args.table.name}, {len(table.outcomes)} points, {feasible} feasible; "
          f"hypervolume over normalised (log ART, ACU), reference {REFERENCE}")
    results: dict[str, list[list[float]]] = {}
    budgets: dict[str, int] = {}
    for name, make in samplers(study).items():
        if args.only and name not in args.only:
            continue
        budget = args.evaluations * (4 if name == "random" else 1)
        seeds = args.seeds
        if name.endswith("gp"):  # seconds per proposal here (a GP fit per objective and constraint): fewer runs
            budget, seeds = min(budget, args.gp_evaluations), min(seeds, args.gp_seeds)
        started = time.perf_counter()
        first = start_points(study) if name in ("default", "ofat+gp") else list(study.spec.enqueue)
        results[name] = [replay(table, make(seed), budget, first) for seed in range(seeds)]
        budgets[name] = budget
        print(f"  {name}: {seeds} runs of {budget} evaluations in {time.perf_counter() - started:.0f} s",
              flush=True)
    if not args.only or "ofat" in args.only:
        results["ofat"] = [one_factor_at_a_time(table, args.evaluations)]
        budgets["ofat"] = args.evaluations

    header = (f"{'sampler':<12} " + " ".join(f"{f'to {int(s * 100)}%':>7}" for s in THRESHOLDS)
              + f" {'95% by':>7} " + " ".join(f"{f'HV@{c}':>7}" for c in CHECKPOINTS))
    print(header)
    medians: dict[str, float] = {}
    for name, histories in results.items():
        cells = []
        for share in THRESHOLDS:
            median, _ = median_evaluations(histories, share)
            cells.append(shown(median, budgets[name]))
            if share == 0.95:
                medians[name] = median
        reached = median_evaluations(histories, 0.95)[1]
        at = [f"{statistics.median(h[c - 1] for h in histories):.1%}" if c <= budgets[name] else "-"
              for c in CHECKPOINTS]  # "-": the runs were shorter (gp)
        print(f"{name:<12} " + " ".join(f"{c:>7}" for c in cells) + f" {f'{reached}/{len(histories)}':>7} "
              + " ".join(f"{a:>7}" for a in at))
    if "default" in medians and "random" in medians:
        ratio = medians["random"] / medians["default"]
        print(f"default sampler: 95% of the grid's hypervolume in {shown(medians['default'], budgets['default'])} "
              f"evaluations (median of {args.seeds} seeds); random search needs "
              f"{shown(medians['random'], budgets['random'])}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
