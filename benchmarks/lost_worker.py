"""How long a study takes to notice a dead worker, and whether it loses anything.

Starts a PostgreSQL server of its own on 127.0.0.1 (tests/postgres.py), then two
`optdse worker STUDY --trials N` processes on this machine: worker a in a UTS namespace of its
own with another hostname and state directory (so to the study it is another host, and its
trials can only be found by their heartbeat), worker b as it is. Worker a is SIGKILLed
--kill-after seconds after it started. Reports how long after the kill b marked a's trial
FAIL: a trial is stale once its last heartbeat is 3 intervals old, and that heartbeat was up
to one interval old at the kill, so 2-3 intervals, plus whatever b was measuring then (b
looks between trials), the study's trials by host and
state, whether the lost trial was measured again, and the wall time; then stops a's orphaned
replicas with `optdse clean` and the server.

Both workers share this machine's CPUs, so their figures are not measurements of the
configurations: the point is the mechanism and its timing.

Run from the repository root:  .venv/bin/python benchmarks/lost_worker.py [--trials 24] [--kill-after 25]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from rich.console import Console  # noqa: E402

from optdse.models import ensure_model  # noqa: E402
from optdse.record import TrialRecord  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

OPTDSE = str(ROOT / ".venv" / "bin" / "optdse")
OTHER_HOST = "lost-worker-a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="mnist-pareto")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--kill-after", type=float, default=25.0, help="seconds after worker a started")
    parser.add_argument("--heartbeat", type=int, default=10)
    args = parser.parse_args()
    ensure_model("mnist", Console(stderr=True))
    server = PostgresServer.start()
    state = Path(tempfile.mkdtemp(prefix="optdse-lost-worker-"))
    try:
        url = server.new_database()
        worker = [OPTDSE, "worker", args.study, "--storage", url, "--trials", str(args.trials),
                  "--requests", str(args.requests), "--heartbeat", str(args.heartbeat)]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT}
        started = time.monotonic()
        a = subprocess.Popen(["unshare", "--uts", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh", *worker],
                             env={**os.environ, "OPTDSE_STATE_DIR": str(state)}, **quiet)
        time.sleep(min(8.0, args.kill_after / 2))  # a creates the study; b joins it
        b = subprocess.Popen(worker, **quiet)
        time.sleep(max(0.0, args.kill_after - (time.monotonic() - started)))
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed_at = time.time()
        b.wait(timeout=1800)
        wall = time.monotonic() - started
        trials = optuna.load_study(study_name=args.study, storage=url).trials
        subprocess.run([OPTDSE, "clean"], env={**os.environ, "OPTDSE_STATE_DIR": str(state)}, check=False, **quiet)
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)

    print(f"worker b exit {b.returncode}; wall {wall:.1f} s for {len(trials)} trials (--trials {args.trials})")
    kept = {t.number: TrialRecord.of(t) for t in trials}
    for (state_name, host, reason), count in sorted(collections.Counter(
            (r.state.name, r.host, r.fail_reason) for r in kept.values()).items(), key=str):
        print(f"  {count:3d} {state_name:8s} host {host}" + (f" ({reason})" if reason else ""))
    lost = [t for t in trials if kept[t.number].fail_reason == "abandoned"]
    for trial in lost:
        print(f"  trial {trial.number}: {kept[trial.number].fail_message}")
    if len(lost) != 1 or lost[0].datetime_complete is None:
        sys.exit(f"expected one abandoned trial, found {len(lost)}")
    noticed = lost[0].datetime_complete.timestamp() - killed_at
    retries = [t for t in trials if kept[t.number].retry_of == lost[0].number]
    again = ", ".join(f"trial {t.number} {t.state.name}" for t in retries) or "NOT measured again"
    hb = args.heartbeat  # stale once its last heartbeat (0..hb s old at the kill) is 3 hb old; b looks between trials
    print(f"lost worker's trial failed **{noticed:.0f} s** after the kill (expected {2 * hb}-{3 * hb} s plus b's current "
          f"trial), retried as {again}; {len(trials)} trials for --trials {args.trials}, wall {wall:.0f} s")

if __name__ == "__main__":
    main()
