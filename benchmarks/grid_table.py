"""Measure the exhaustive grid that the sample-efficiency benchmark replays, and save it as CSV.

Runs `optdse grid STUDY --levels L` (real replicas, real load; it resumes if interrupted),
then writes every grid point with its outcome to benchmarks/data/STUDY-grid-L.csv: the study's
parameters (the five, or a workload study's knobs), the trial state, ART, ACU, p99, cost, error
rate, the constraint values the trial recorded (Optuna's format, <= 0 feasible) and, for a
failed point, why (OOM, ...).
Failed points stay in the table: a sampler that proposes one pays an evaluation for nothing,
as in a real study. How the committed table was made is in benchmarks/data/README.md.

Run from the repository root (about 35 minutes for MNIST at 4 levels on a 2-core machine):
  .venv/bin/python benchmarks/grid_table.py [--study mnist-pareto] [--levels 4]
      [--requests 100000 --duration 1.5] [--storage sqlite:///results/grid-table.db]
  (--duration 0: each point measured by the study file's own rule, e.g. its stability windows)
The last line says how many points were measured and how many are feasible.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from optdse.export import parameter_columns  # noqa: E402
from optdse.record import NOT_THE_CONFIGURATION, records  # noqa: E402
from optdse.study_file import load_study  # noqa: E402

#: Figures kept per grid point (fields of its Measurement).
COLUMNS = ("art_ms", "acu_cores", "p95_ms", "p99_ms", "cost_cores", "throughput_rps", "error_rate", "window_s",
           "requests_in_window")


def grid_frame(grid: optuna.Study) -> pd.DataFrame:
    """One row per measured grid point; a point measured again after an interruption keeps
    only its last measurement."""
    rows = []
    for record in records(grid):
        if record.fail_reason in NOT_THE_CONFIGURATION or not record.state.is_finished():
            continue
        row: dict[str, object] = dict(record.parameters)
        row["state"] = record.state.name
        row.update({name: getattr(record.measurement, name, None) for name in COLUMNS})
        row["constraints"] = json.dumps(list(record.constraints)) if record.constraints else ""
        row["fail_reason"] = record.fail_reason or ""
        rows.append(row)
    parameters = parameter_columns(rows)
    frame = pd.DataFrame(rows)
    return frame.drop_duplicates(subset=parameters, keep="last").sort_values(parameters, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="mnist-pareto")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=1.5, help="seconds of load per grid point")
    parser.add_argument("--storage", default=f"sqlite:///{ROOT / 'results' / 'grid-table.db'}")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/data/STUDY-grid-LEVELS.csv")
    args = parser.parse_args()
    (ROOT / "results").mkdir(exist_ok=True)
    bounded = ["--requests", str(args.requests), "--duration", str(args.duration)] if args.duration else []
    command = [str(ROOT / ".venv" / "bin" / "optdse"), "grid", args.study, "--levels", str(args.levels),
               *bounded, "--storage", args.storage]
    print("$ " + " ".join(command), flush=True)
    if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
        sys.exit("optdse grid did not finish; run this again to resume it")
    study = load_study(args.study)
    grid = optuna.load_study(study_name=f"{study.name}-grid", storage=args.storage)
    frame = grid_frame(grid)
    output = args.output or ROOT / "benchmarks" / "data" / f"{study.name}-grid-{args.levels}.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(output, index=False)
    feasible = frame["constraints"].map(lambda c: bool(c) and max(json.loads(c)) <= 0) & (frame["state"] == "COMPLETE")
    print(f"{output.relative_to(ROOT)}: {len(frame)} grid points, {int(feasible.sum())} feasible")


if __name__ == "__main__":
    main()
