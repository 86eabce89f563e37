"""How many evaluations the default sampler needs to find a configuration within 5% of the
cheapest SLO-feasible one, against random search: tabular replay of a measured knob grid.

The ground truth is benchmarks/data/mnist-slo-knobs-grid-10.csv, measured once with real
replicas by `benchmarks/grid_table.py --study benchmarks/data/mnist-slo-knobs.yaml --levels 10
--duration 0`: studies/mnist-slo.yaml's workload (300 req/s, one image), objectives (p99,
cost_cores), constraints (p99 <= 10 ms, error rate) and stability rule, over a space small
enough to measure every point (search_spaces/mnist-slo-knobs.yaml: 1-3 replicas x 0.15-0.6
CPU per replica x batching off/on, 60 points). Each trial of a replayed study is suggested by
the study's own code (optdse.space.suggest), snapped to the grid, and answered with that
point's measured p99 and cost and the constraint values the measured trial recorded, so the
sampler sees exactly what it would have seen.

A run "finds" the answer at the first evaluation whose point is feasible and costs at most
1.05 x the cheapest feasible point's cost. Samplers, --seeds runs each:
  default   the study file's sampler (multivariate TPE, 10 start-up trials, the constraints)
            after its enqueued configuration, as `optdse study` runs it
  random    Optuna's RandomSampler after the same enqueued configuration
Printed: per sampler, the median evaluations to find it (">N" when the median run did not
within N) and how many runs did within 10 / 20 / 40; the last line the ratio.

Run from the repository root:  .venv/bin/python benchmarks/slo_efficiency.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.samplers import BaseSampler  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from benchmarks.sample_efficiency import samplers as sample_efficiency_samplers  # noqa: E402
from optdse.space import active, distributions, fixed_values, suggest  # noqa: E402
from optdse.spec import Study  # noqa: E402
from optdse.study_file import load_study  # noqa: E402

WITHIN = 1.05
CHECKPOINTS = (10, 20, 40)


class KnobGrid:
    """The measured grid: a configuration snaps to its nearest point, which answers with its
    measured objectives and constraints (None for a failed point, e.g. OOM)."""

    def __init__(self, frame: pd.DataFrame, study: Study) -> None:
        self.study = study
        self.varied = list(distributions(study))  # what the sampler chooses; the rest is held
        self.levels = {name: sorted(float(v) for v in frame[name].unique()) for name in self.varied}
        self.metrics = [objective.metric for objective in study.spec.objectives]
        self.outcomes: dict[tuple[float, ...], tuple[list[float], list[float]] | None] = {}
        for row in frame.to_dict("records"):
            key = tuple(float(row[name]) for name in self.varied)
            self.outcomes[key] = (None if row["state"] != "COMPLETE" else
                                  ([float(row[m]) for m in self.metrics], json.loads(row["constraints"])))
        feasible_costs = [values[self.metrics.index("cost_cores")] for values, limits in
                          filter(None, self.outcomes.values()) if max(limits) <= 0]
        self.cheapest = min(feasible_costs)
        self.feasible = len(feasible_costs)

    def lookup(self, values: dict[str, float]) -> tuple[list[float], list[float]] | None:
        key = tuple(min(self.levels[name], key=lambda level: abs(level - float(values[name]))) for name in self.varied)
        return self.outcomes[key]

    def found(self, answer: tuple[list[float], list[float]] | None) -> bool:
        if answer is None:
            return False
        values, limits = answer
        return max(limits) <= 0 and values[self.metrics.index("cost_cores")] <= WITHIN * self.cheapest + 1e-9


def replay(grid: KnobGrid, sampler: BaseSampler, budget: int) -> int | None:
    """Evaluations until a run finds a configuration within 5% of the cheapest (None: not within `budget`)."""
    directions = [objective.direction for objective in grid.study.spec.objectives]
    study = optuna.create_study(directions=directions, sampler=sampler)
    for point in grid.study.spec.enqueue:
        study.enqueue_trial(dict(point))
    for evaluation in range(1, budget + 1):
        trial = study.ask()
        suggest(trial, grid.study)  # the study's own suggestion: conditional knobs and all
        answer = grid.lookup(active(fixed_values(grid.study) | trial.params))
        if answer is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            values, limits = answer
            trial.set_user_attr("constraints", limits)
            study.tell(trial, values)
        if grid.found(answer):
            return evaluation
    return None


def samplers(study: Study) -> dict[str, Callable[[int], BaseSampler]]:
    """The study file's sampler and random search, made as the hypervolume replay makes them."""
    every = sample_efficiency_samplers(study)
    return {name: every[name] for name in ("default", "random")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "data" / "mnist-slo-knobs-grid-10.csv")
    parser.add_argument("--study", default=str(ROOT / "benchmarks" / "data" / "mnist-slo-knobs.yaml"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=int, default=60, help="evaluations per run (the grid's size)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = load_study(args.study)
    grid = KnobGrid(pd.read_csv(args.table), study)
    print(f"grid: {args.table.name}, {len(grid.outcomes)} points ({' x '.join(grid.varied)}), {grid.feasible} "
          f"SLO-feasible; cheapest feasible cost {grid.cheapest:g} cores, target <= {WITHIN * grid.cheapest:.3g}")
    medians = {}
    for name, make in samplers(study).items():
        counts = [replay(grid, make(seed), args.budget) for seed in range(args.seeds)]
        median = statistics.median(c if c is not None else math.inf for c in counts)
        medians[name] = median
        within = " ".join(f"{sum(c is not None and c <= k for c in counts)}/{len(counts)} by {k}" for k in CHECKPOINTS)
        shown = f">{args.budget}" if math.isinf(median) else f"{median:g}"
        print(f"{name:<8} median {shown:>4} evaluations; found {within}", flush=True)
    print(f"default sampler: within 5% of the cheapest SLO-feasible configuration in {medians['default']:g} "
          f"evaluations (median of {args.seeds} seeds); random search {medians['random']:g}: "
          f"{medians['random'] / medians['default']:.1f}x")


if __name__ == "__main__":
    main()
