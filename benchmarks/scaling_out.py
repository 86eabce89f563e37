"""Time per trial with the replicas on other Swarm nodes, against one node.

Builds the multi-node bed of tests/multinode.py (three Docker engines, each in network and UTS
namespaces of its own, joined over link-local addresses that exist only inside them), labels
its two workers for replicas and loads the serving image into every engine. Then the same study,
mnist-pareto started from --replicas replicas (its one-factor start points are fixed, so both
runs measure the same configurations in the same order), runs twice in one go:

  one node   the host's Docker engine as a single-node swarm on 127.0.0.1 (--swarm-init),
             replicas on loopback, their CPU read from this host's cgroups;
  three nodes  optdse on the bed's manager, the replicas spread over the two workers at their
             swarm addresses, their CPU read through each worker's Docker engine (the stats API).

Prints, for each: the nodes and replicas per node, wall time, the first trial's deployment
(the service created and every replica answering), the median time per trial and its parts
(deploying, starting the load generator, the load), and each trial's ART and ACU side by side.

The bed's nodes share this machine's cores, so more nodes add no capacity: the figures
measure what other nodes cost a trial (placement, the network path between namespaces,
reading CPU through the engines), not a speed-up.

Run from the repository root (as root, with dockerd running and serving/build-image.sh's image):
  .venv/bin/python benchmarks/scaling_out.py [--trials 6] [--replicas 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from rich.console import Console  # noqa: E402

from optdse.deploy.swarm_nodes import SERVE_LABEL  # noqa: E402
from optdse.models import ensure_model  # noqa: E402
from optdse.record import TrialRecord  # noqa: E402
from tests.multinode import Bed  # noqa: E402

OPTDSE = str(ROOT / ".venv" / "bin" / "optdse")
IMAGE = "optdse/serving"


def project(directory: Path, replicas: int) -> Path:
    """A working directory with mnist-pareto's study file, started from `replicas` replicas."""
    shutil.copytree(ROOT / "search_spaces", directory / "search_spaces")
    (directory / "studies").mkdir()
    text = (ROOT / "studies" / "mnist-pareto.yaml").read_text()
    text = re.sub(r"^  - \{replicas: \d+", f"  - {{replicas: {replicas}", text, count=1, flags=re.MULTILINE)
    (directory / "studies" / "mnist-pareto.yaml").write_text(text)
    (directory / "results" / "models").mkdir(parents=True)
    (directory / "results" / "models" / "mnist").symlink_to(ensure_model("mnist", Console(stderr=True)))
    return directory


def run_study(prefix: list[str], directory: Path, storage: str, trials: int, *options: str) -> float:
    """Run the study to `trials` finished trials; its wall time."""
    started = time.monotonic()
    subprocess.run([*prefix, OPTDSE, "study", "mnist-pareto", "--backend", "swarm", "--image", IMAGE,
                    "--storage", storage, "--trials", str(trials), *options], cwd=directory, check=True)
    return time.monotonic() - started


def per_trial(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    """Each finished trial's time, start to end, in seconds."""
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]  # type: ignore[operator]


def summary(name: str, storage: str, wall: float) -> list[optuna.trial.FrozenTrial]:
    trials = [t for t in optuna.load_study(study_name="mnist-pareto", storage=storage).trials if t.state.is_finished()]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    seconds = per_trial(trials)

    measured = {t.number: TrialRecord.of(t).measured for t in done}

    def median(key: str) -> float:
        return statistics.median(getattr(m, key) for m in measured.values())

    first = measured[done[0].number]
    per_node = ", ".join(f"{node} {count}" for node, count in sorted(first.replicas_by_node.items()))
    rest = statistics.median(spent - measured[t.number].deploy_s - measured[t.number].load_setup_s
                             - measured[t.number].load_s for spent, t in zip(seconds, trials, strict=True) if t in done)
    print(f"{name}: replicas per node {per_node} ({first.accounting}); {len(done)} of {len(trials)} trials "
          f"complete; wall {wall:.0f} s; first deployment {first.deploy_s:.1f} s; per trial median "
          f"{statistics.median(seconds):.1f} s (deploy {median('deploy_s'):.1f} s, load set-up "
          f"{median('load_setup_s'):.1f} s, load {median('load_s'):.1f} s, the rest {rest:.1f} s)")
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optdse-scaling-out-"))
    directory = project(work / "project", args.replicas)
    one, two = f"sqlite:///{work / 'one.db'}", f"sqlite:///{work / 'two.db'}"
    one_wall = run_study([], directory, one, args.trials, "--swarm-init")
    started = time.monotonic()
    bed = Bed.start(3, seed=IMAGE)
    try:
        for worker in bed.workers:
            bed.label(worker, SERVE_LABEL, "true")
        bed.load_image(IMAGE, bed.nodes)  # only where seeding was impossible
        print(f"the bed: 3 nodes, the image in every engine, in {time.monotonic() - started:.0f} s")
        two_wall = run_study(bed.manager_command(), directory, two, args.trials, *bed.engine_options())
    finally:
        bed.stop()
    ones, twos = summary("one node", one, one_wall), summary("three nodes", two, two_wall)
    print("trial | configuration | ART ms one / three | ACU cores one / three | windows one / three | load s one / three")
    for a, b in zip(ones, twos, strict=False):
        if a.state == b.state == optuna.trial.TrialState.COMPLETE:
            ma, mb = TrialRecord.of(a).measured, TrialRecord.of(b).measured
            print(f"{a.number} | {a.params} | {a.values[0]:.2f} / {b.values[0]:.2f} | {a.values[1]:.3f} / {b.values[1]:.3f}"
                  f" | {len(ma.windows)} / {len(mb.windows)} | {ma.load_s:.1f} / {mb.load_s:.1f}")
        else:
            print(f"{a.number} | {a.params} | {a.state.name} / {b.state.name}")
    pairs = [(a, b) for a, b in zip(ones, twos, strict=False) if a.state == b.state == optuna.trial.TrialState.COMPLETE]
    print(f"three nodes / one node: wall per trial **{two_wall / len(twos) / (one_wall / len(ones)):.2f}**, "
          f"median per trial {statistics.median(per_trial(twos)) / statistics.median(per_trial(ones)):.2f}; "
          f"same configurations: ART {statistics.median(b.values[0] / a.values[0] for a, b in pairs):.2f}, "
          f"ACU {statistics.median(b.values[1] / a.values[1] for a, b in pairs):.2f} (medians of {len(pairs)} trials)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
