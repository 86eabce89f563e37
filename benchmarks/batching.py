"""Does server-side batching earn its place? CPU per request and throughput, with and without it,
at the same offered rate, side by side in one run.

For each model, one replica loaded open loop (Poisson arrivals, seeded) at one rate, by
`optdse measure --json` (a fresh replica per run, as a trial deploys); rounds alternate
plain and the batched variants so that drift of a shared machine hits all of them. Reported
per model: the median over rounds of throughput, replica CPU per answered request (`cpu_ms_per_request`), p99 and
ACU, and the batched / plain ratios. Cases:
  mnist      one image per request, 1 CPU, 300 req/s (the mnist-slo workload)
  inception  one 299-px JPEG per request, 2 CPUs, near one replica's capacity
  deepspeech one 2-s clip per request, 2 CPUs, near one replica's capacity
Batching merges only the model call; what a request costs outside it (gRPC, decoding the
request, encoding the answer) is paid per request either way, so batching can only win
where the model call dominates, and only if a row costs less in a bigger batch: true of
DeepSpeech's LSTM (a batch-1 step reads all its weights for one row), not of Inception's
convolutions (compute-bound per image). docs/benchmarks.md has the figures and their cause.

First, in-process and without noise from gRPC or a client: the CPU the batcher itself adds to
a request (serving.batching.Batcher.submit against calling a trivial model directly), one and
four submitting threads, window 0 and 1000 us.

Run from the repository root:  .venv/bin/python benchmarks/batching.py [--rounds 3] [--models mnist inception deepspeech]
The last line per model is its ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from optdse.models import ensure_model  # noqa: E402
from serving.batching import Batcher, BatchingParameters  # noqa: E402

#: model -> (the load and limits every run shares, {variant: the batching options of a batched run}).
#: Window 0 batches only what queues while the model is busy; a window waits for company.
CASES: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "mnist": (["--rate", "300", "--file-size", "1", "--cpus", "1.0", "--memory", "1000", "--duration", "8"],
              {"window 0": ["--max-batch-size", "32", "--batch-timeout-micros", "0", "--num-batch-threads", "1"],
               "window 1 ms": ["--max-batch-size", "32", "--batch-timeout-micros", "1000", "--num-batch-threads", "1"]}),
    "inception": (["--rate", "8", "--file-size", "299", "--cpus", "2.0", "--memory", "2048", "--duration", "20"],
                  {"window 0": ["--max-batch-size", "8", "--batch-timeout-micros", "0", "--num-batch-threads", "1"],
                   "window 50 ms": ["--max-batch-size", "8", "--batch-timeout-micros", "50000",
                                    "--num-batch-threads", "1"]}),
    "deepspeech": (["--rate", "15", "--file-size", "2", "--cpus", "2.0", "--memory", "2048", "--duration", "15"],
                   {"window 0": ["--max-batch-size", "8", "--batch-timeout-micros", "0", "--num-batch-threads", "1"],
                    "window 100 ms": ["--max-batch-size", "8", "--batch-timeout-micros", "100000",
                                      "--num-batch-threads", "1"]}),
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


def batcher_overhead(threads: int, timeout_micros: int | None, requests: int) -> float:
    """CPU per request (us) of `requests` calls of a trivial model from `threads` threads,
    through a one-slot Batcher with that window, or directly when `timeout_micros` is None."""

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}

    batcher = None if timeout_micros is None else Batcher(
        BatchingParameters(max_batch_size=32, batch_timeout_micros=timeout_micros, num_batch_threads=1))
    call: Callable[[dict[str, np.ndarray]], object] = (
        model if batcher is None else (lambda inputs: batcher.submit("signature", inputs, model)))

    def client() -> None:
        inputs = {"x": np.ones((1, 784), np.float32)}
        for _ in range(requests // threads):
            call(inputs)

    clients = [threading.Thread(target=client) for _ in range(threads)]
    started = time.process_time()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    spent = time.process_time() - started
    if batcher is not None:
        batcher.close()
    return spent / (requests // threads * threads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="plain/batched pairs per model")
    parser.add_argument("--models", nargs="*", choices=sorted(CASES), default=list(CASES))
    args = parser.parse_args()
    for threads in (1, 4):
        direct = statistics.median(batcher_overhead(threads, None, 20000) for _ in range(3))
        for window in (0, 1000):
            # A window is waited out in full by a lone request: fewer of them, same CPU share.
            through = statistics.median(batcher_overhead(threads, window, 2000 if window else 20000) for _ in range(3))
            print(f"batcher, {threads} thread(s), window {window} us: {through:.1f} us CPU per request, "
                  f"direct call {direct:.1f} us: the batcher adds {through - direct:.1f} us", flush=True)
    for model in args.models:
        ensure_model(model, Console(stderr=True))  # exported once beforehand: part of no figure
        shared, variants = CASES[model]
        kinds = {"plain": [], **{name: ["--enable-batching", *options] for name, options in variants.items()}}
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for round_ in range(args.rounds):
            for kind, extra in kinds.items():
                figures = measure(model, shared + extra)
                runs[kind].append(figures)
                print(f"  {model} round {round_ + 1} {kind:>12}: {figures['throughput_rps']:.1f} req/s, "
                      f"{figures['cpu_ms_per_request']:.3f} ms CPU/request, p99 {figures['p99_ms']:.2f} ms, "
                      f"ACU {figures['acu_cores']:.3f}, late {figures['late_fraction']:.1%}", flush=True)
        median = {kind: {f: statistics.median(r[f] for r in results) for f in FIGURES} for kind, results in runs.items()}
        plain = median["plain"]
        print(f"{model} ({' '.join(shared)}), medians of {args.rounds} rounds: plain {plain['throughput_rps']:.1f} "
              f"req/s at {plain['cpu_ms_per_request']:.3f} ms CPU/request (p99 {plain['p99_ms']:.2f} ms)")
        for name, options in variants.items():
            batched = median[name]
            print(f"{model} batched, {name} ({' '.join(options)}): {batched['throughput_rps']:.1f} req/s at "
                  f"{batched['cpu_ms_per_request']:.3f} ms (p99 {batched['p99_ms']:.2f} ms): CPU per request "
                  f"{batched['cpu_ms_per_request'] / plain['cpu_ms_per_request']:.2f}x, throughput "
                  f"{batched['throughput_rps'] / plain['throughput_rps']:.2f}x")


if __name__ == "__main__":
    main()
