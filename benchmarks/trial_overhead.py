"""Where a real study's wall time goes: measuring, or everything around it.

Runs `optdse study mnist-pareto --trials 20` end to end (a fresh SQLite storage in a temporary
directory, the local backend, each trial's load as the study file says — its stability rule —
or a fixed --duration), timing the whole
command, and adds up what every trial recorded: `deploy_s` (starting, resizing, parking
replicas), `load_setup_s` (starting the load generator's processes and connecting), `load_s`
(the load, warm-up and cool-down included) and `window_s` (the measurement window kept after
the cut). Everything else (Python start-up, the sampler, the storage, teardown) is the rest.
A failed trial (OOM, say) measured nothing: all its time is overhead.

Side by side in the same run, --compare also runs the same study with replica parking off
(OPTDSE_PARK_IDLE=0: every trial that needs more replicas starts them afresh), the behaviour
before parking existed, and --postgresql runs it with its storage on a PostgreSQL server of
its own on 127.0.0.1 (tests/postgres.py; what workers on several hosts share) instead of
SQLite: the difference is what the shared storage costs each trial.

Run from the repository root:  .venv/bin/python benchmarks/trial_overhead.py [--duration 5] [--compare]
The last line is the share of wall time spent outside the load and outside the kept windows
(target <= 15%; benchmarks/measurement_targets.py reports it beside the repeatability target).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from rich.console import Console  # noqa: E402

from optdse.models import ensure_model  # noqa: E402
from optdse.record import TrialRecord  # noqa: E402


@dataclass(frozen=True)
class Breakdown:
    wall_s: float
    trials: int
    failed: int
    deploy_s: float
    load_setup_s: float
    load_s: float
    window_s: float

    @property
    def rest_s(self) -> float:
        return self.wall_s - self.deploy_s - self.load_setup_s - self.load_s

    @property
    def outside_load(self) -> float:
        return 1 - self.load_s / self.wall_s

    @property
    def outside_window(self) -> float:
        return 1 - self.window_s / self.wall_s


def run_study(study: str, trials: int, duration: float | None, park: bool, storage: str | None = None) -> Breakdown:
    """One real `optdse study` in a fresh storage (SQLite, or the empty database `storage`),
    each trial's load as the study file says or `duration` seconds; its wall time and its
    trials' timings."""
    with tempfile.TemporaryDirectory(prefix="optdse-overhead-") as directory:
        storage = storage or f"sqlite:///{directory}/overhead.db"
        load = [] if duration is None else ["--duration", str(duration), "--requests", "1000000"]
        command = [str(ROOT / ".venv" / "bin" / "optdse"), "study", study, "--trials", str(trials),
                   *load, "--storage", storage]
        env = {**os.environ, "OPTDSE_PARK_IDLE": "1" if park else "0"}
        started = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
        # Finished trials only: the start points the run did not reach are still WAITING.
        finished = optuna.load_study(study_name=study, storage=storage).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    done = [TrialRecord.of(t).measured for t in finished if t.state == TrialState.COMPLETE]
    return Breakdown(wall_s=wall, trials=len(finished), failed=len(finished) - len(done),
                     deploy_s=sum(m.deploy_s for m in done), load_setup_s=sum(m.load_setup_s for m in done),
                     load_s=sum(m.load_s for m in done), window_s=sum(m.window_s for m in done))


def show(label: str, b: Breakdown) -> None:
    def part(seconds: float) -> str:
        return f"{seconds:6.1f} s {seconds / b.wall_s:6.1%}"

    print(f"{label}: {b.trials} trials ({b.failed} failed), wall {b.wall_s:.1f} s")
    print(f"  load (measuring)       {part(b.load_s)}   of which the kept window {part(b.window_s)}")
    print(f"  deploy                 {part(b.deploy_s)}")
    print(f"  load generator set-up  {part(b.load_setup_s)}")
    print(f"  rest (start-up, sampler, storage, teardown) {part(b.rest_s)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="mnist-pareto")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--duration", type=float,
                        help="a fixed load per trial, seconds (default: the study file's, its stability rule)")
    parser.add_argument("--compare", action="store_true", help="also run with replica parking off")
    parser.add_argument("--postgresql", action="store_true", help="also run with a PostgreSQL storage")
    args = parser.parse_args()
    ensure_model("mnist", Console(stderr=True))  # exported once beforehand: not part of any study's time
    parked = run_study(args.study, args.trials, args.duration, park=True)
    show("parking on (default)", parked)
    if args.postgresql:
        from tests.postgres import PostgresServer

        server = PostgresServer.start()
        try:
            shared = run_study(args.study, args.trials, args.duration, park=True, storage=server.new_database())
        finally:
            server.stop()
        show("PostgreSQL storage", shared)
        print(f"per trial outside the load: SQLite {parked.rest_s / parked.trials:.2f} s, PostgreSQL "
              f"{shared.rest_s / shared.trials:.2f} s (ratio {shared.rest_s / shared.trials / (parked.rest_s / parked.trials):.2f}); "
              f"wall per trial ratio {shared.wall_s / shared.trials / (parked.wall_s / parked.trials):.2f}")
    if args.compare:
        fresh = run_study(args.study, args.trials, args.duration, park=False)
        show("parking off", fresh)
        print(f"outside the load: {fresh.outside_load:.1%} without parking")
    print(f"trial overhead: {parked.outside_load:.1%} of wall time outside the load, "
          f"{parked.outside_window:.1%} outside the kept windows ({args.trials} trials, "
          + (f"{args.duration:g} s each)" if args.duration else "the study file's stability rule)"))


if __name__ == "__main__":
    main()
