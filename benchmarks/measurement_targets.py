"""Can the optimizer trust one trial's numbers, and what do they cost? Both targets, one run.

1. Repeatability: the same configuration (4 threads, file size 4, 1 replica, 1 CPU, 1000 MB;
   the one issue 19 measured at CV 20%) measured by 5 fresh `optdse measure` commands in a
   row, each deploying its own replica and measuring with the default settings (the
   stability rule). Target: coefficient of variation (stdev / mean) of ART and of ACU <= 5%.
2. Trial overhead: a real 20-trial `optdse study mnist-pareto` at the study file's settings
   in a fresh SQLite storage (benchmarks/trial_overhead.py), timed as a whole against the
   kept windows its trials recorded. Target: wall time outside the kept windows <= 15%.

They run one after the other, never at once (each would measure the other). The last line
states both figures against their targets.

Run from the repository root:  .venv/bin/python benchmarks/measurement_targets.py [--runs 5] [--trials 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rich.console import Console  # noqa: E402
from trial_overhead import run_study, show  # noqa: E402

from optdse.models import ensure_model  # noqa: E402

CONFIGURATION = ["--threads", "4", "--file-size", "4", "--replicas", "1", "--cpus", "1", "--memory", "1000"]
CV_TARGET, OVERHEAD_TARGET = 0.05, 0.15


def fresh_measurements(runs: int) -> list[dict[str, object]]:
    """`runs` separate `optdse measure --json` commands of CONFIGURATION, at the defaults."""
    figures = []
    for run in range(runs):
        command = [str(ROOT / ".venv" / "bin" / "optdse"), "measure", *CONFIGURATION, "--json"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
        result = json.loads(done.stdout)
        figures.append(result)
        print(f"  measure {run + 1}: ART {result['art_ms']:.3f} ms, ACU {result['acu_cores']:.3f} cores, "
              f"{len(result['windows'])} windows, {'stable' if result['stable'] else 'NOT stable'}, "
              f"load {result['load_s']:.1f} s", flush=True)
    return figures


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh measurements of the one configuration")
    parser.add_argument("--trials", type=int, default=20, help="trials of the mnist-pareto study")
    args = parser.parse_args()
    ensure_model("mnist", Console(stderr=True))  # exported once beforehand: part of neither figure
    print(f"{args.runs} fresh measurements of {' '.join(CONFIGURATION)} (default settings):")
    figures = fresh_measurements(args.runs)
    art_cv = cv([float(f["art_ms"]) for f in figures])  # type: ignore[arg-type]
    acu_cv = cv([float(f["acu_cores"]) for f in figures])  # type: ignore[arg-type]
    print(f"  CV of ART {art_cv:.1%}, of ACU {acu_cv:.1%}")
    print(f"mnist-pareto, {args.trials} trials at the study file's settings:")
    breakdown = run_study("mnist-pareto", args.trials, None, park=True)
    show("  study", breakdown)

    def verdict(value: float, target: float) -> str:
        return f"{value:.1%} (target <= {target:.0%}: {'met' if value <= target else 'NOT met'})"

    print(f"measurement targets: CV over {args.runs} fresh measurements ART {verdict(art_cv, CV_TARGET)}, "
          f"ACU {verdict(acu_cv, CV_TARGET)}; trial overhead outside the kept windows "
          f"{verdict(breakdown.outside_window, OVERHEAD_TARGET)} ({args.trials} trials, wall {breakdown.wall_s:.0f} s)")


if __name__ == "__main__":
    main()
