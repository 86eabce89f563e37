"""How noisy is one trial's measurement? The same configuration measured 5 times in a row.

Runs a real `optdse study mnist-pareto --trials 4 --repeats 5` (local backend, a fresh
SQLite storage in a temporary directory) twice, side by side: once with the study file's
load (its stability rule) and once with the seed's fixed 1000 requests per measurement.
Each trial deploys one configuration and measures it 5 times in a row; it records the
coefficient of variation (stdev / mean) of ART and ACU over those 5, which is what every
study run with --repeats reports. Prints each trial and the median CV per load setting;
the last line is the median CV of the study file's setting and of the fixed count.

Run from the repository root:  .venv/bin/python benchmarks/repeatability.py [--trials 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from rich.console import Console  # noqa: E402

from optdse.models import ensure_model  # noqa: E402
from optdse.record import TrialRecord  # noqa: E402

SETTINGS = {"stability rule (study file)": [], "1000 requests (the seed's count)": ["--requests", "1000"]}


def repeated_trials(study: str, trials: int, repeats: int, load: list[str]) -> list[TrialRecord]:
    """Run the study with --repeats and return its completed trials' records."""
    with tempfile.TemporaryDirectory(prefix="optdse-repeats-") as directory:
        storage = f"sqlite:///{directory}/repeats.db"
        command = [str(ROOT / ".venv" / "bin" / "optdse"), "study", study, "--trials", str(trials),
                   "--repeats", str(repeats), "--storage", storage, *load]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
        finished = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return [TrialRecord.of(t) for t in finished if t.state == TrialState.COMPLETE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="mnist-pareto")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ensure_model("mnist", Console(stderr=True))
    medians = {}
    for label, load in SETTINGS.items():
        attrs = repeated_trials(args.study, args.trials, args.repeats, load)
        print(f"{label}:")
        for record in attrs:
            m = record.measured
            print(f"  {record.config}: ART {m.art_ms:.2f} ms (CV {m.art_cv or 0:.1%}), "
                  f"ACU {m.acu_cores:.3f} cores (CV {m.acu_cv or 0:.1%}), window {m.window_s:.2f} s")
        medians[label] = (statistics.median(r.measured.art_cv or 0 for r in attrs),
                          statistics.median(r.measured.acu_cv or 0 for r in attrs))
        print(f"  median CV over {len(attrs)} configurations x {args.repeats} repeats: "
              f"ART {medians[label][0]:.1%}, ACU {medians[label][1]:.1%}")
    print("repeatability (median CV of ART, ACU): "
          + "; ".join(f"{label}: {art:.1%}, {acu:.1%}" for label, (art, acu) in medians.items()))


if __name__ == "__main__":
    main()
