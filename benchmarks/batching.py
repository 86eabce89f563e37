"""Does server-side batching earn its place? CPU per request and throughput, with and without it,
at the same offered rate, side by side in one run.

For each model, one replica loaded open loop (Poisson arrivals, seeded) at one rate, by
`optdse measure --json` (a fresh replica per run, as a trial deploys); rounds alternate
plain / batched so that drift of a shared machine hits both. Reported per model: the median
over rounds of throughput, replica CPU per answered request (`cpu_ms_per_request`), p99 and
ACU, and the batched / plain ratios. Cases:
  mnist      one image per request, 1 CPU, 300 req/s (the mnist-slo workload)
  inception  one 299-px JPEG per request, 2 CPUs, near one replica's capacity
Batching merges only the model call; what a request costs outside it (gRPC, decoding the
request, encoding the answer) is paid per request either way, so batching can only win
where the model call dominates. docs/benchmarks.md has the figures and their cause.

Run from the repository root:  .venv/bin/python benchmarks/batching.py [--rounds 3] [--models mnist inception]
The last line per model is its ratio.
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

from rich.console import Console  # noqa: E402

from optdse.models import ensure_model  # noqa: E402

#: model -> (the load and limits both runs share, the batching options of the batched run)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "mnist": (["--rate", "300", "--file-size", "1", "--cpus", "1.0", "--memory", "1000", "--duration", "8"],
              ["--max-batch-size", "32", "--batch-timeout-micros", "1000", "--num-batch-threads", "1"]),
    "inception": (["--rate", "8", "--file-size", "299", "--cpus", "2.0", "--memory", "2048", "--duration", "20"],
                  ["--max-batch-size", "8", "--batch-timeout-micros", "50000", "--num-batch-threads", "1"]),
}
FIGURES = ("throughput_rps", "cpu_ms_per_request", "p99_ms", "acu_cores", "late_fraction")


def measure(model: str, options: list[str]) -> dict[str, float]:
    command = [str(ROOT / ".venv" / "bin" / "optdse"), "measure", "--model", model, "--arrival", "poisson",
               *options, "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout)
    return {figure: float(result[figure]) for figure in FIGURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="plain/batched pairs per model")
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=["mnist", "inception"])
    args = parser.parse_args()
    for model in args.models:
        ensure_model(model, Console(stderr=True))  # exported once beforehand: part of no figure
        shared, batching = CASES[model]
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "batched": []}
        for round_ in range(args.rounds):
            for kind, extra in (("plain", []), ("batched", ["--enable-batching", *batching])):
                figures = measure(model, shared + extra)
                runs[kind].append(figures)
                print(f"  {model} round {round_ + 1} {kind:>7}: {figures['throughput_rps']:.1f} req/s, "
                      f"{figures['cpu_ms_per_request']:.3f} ms CPU/request, p99 {figures['p99_ms']:.2f} ms, "
                      f"ACU {figures['acu_cores']:.3f}, late {figures['late_fraction']:.1%}", flush=True)
        median = {kind: {f: statistics.median(r[f] for r in results) for f in FIGURES} for kind, results in runs.items()}
        plain, batched = median["plain"], median["batched"]
        print(f"{model} ({' '.join(shared)}; batching {' '.join(batching)}), medians of {args.rounds} rounds: "
              f"plain {plain['throughput_rps']:.1f} req/s at {plain['cpu_ms_per_request']:.3f} ms CPU/request "
              f"(p99 {plain['p99_ms']:.2f} ms), batched {batched['throughput_rps']:.1f} req/s at "
              f"{batched['cpu_ms_per_request']:.3f} ms (p99 {batched['p99_ms']:.2f} ms): CPU per request "
              f"{batched['cpu_ms_per_request'] / plain['cpu_ms_per_request']:.2f}x, throughput "
              f"{batched['throughput_rps'] / plain['throughput_rps']:.2f}x")


if __name__ == "__main__":
    main()
