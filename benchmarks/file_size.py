"""What "file size" costs for each of the seed's four models, measured side by side.

For each model, one replica (local backend: 1.0 CPU, 3000 MB) and one closed-loop client
thread measure a small and a large file, alternately for --rounds rounds, exactly as a study
trial does (optdse.objective.measure: warm-up cut, window, ART). Prints the README's table of
the four models (median ART of the rounds) and, last, the largest-to-smallest ART ratio of
each model. Models are exported to results/models/ on first use, as `optdse study` does.
Three of the models are random-initialised (see README): latency depends on shapes only.

Run from the repository root:  .venv/bin/python benchmarks/file_size.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from optdse.config import ClientConfig, Config, ServerConfig  # noqa: E402
from optdse.deploy.local import LocalBackend  # noqa: E402
from optdse.models import BUILTINS, ensure_model  # noqa: E402
from optdse.models import builtin  # noqa: E402
from optdse.objective import measure  # noqa: E402
from optdse.payloads import build_payload  # noqa: E402

# model -> (small, large) file sizes: the ends of each study's search space
SIZES = {"mnist": (1, 128), "inception": (64, 4096), "nmt": (16, 1171), "deepspeech": (1, 30)}


def _bytes(count: int) -> str:
    """A request's size for people: 560 B, 63 KiB, 3.4 MiB."""
    if count < 1024:
        return f"{count} B"
    return f"{count / 1024:.0f} KiB" if count < 1024**2 else f"{count / 1024**2:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per measurement at most")
    args = parser.parse_args()
    console = Console(stderr=True, soft_wrap=True)
    art: dict[str, dict[int, list[float]]] = {}
    for model, sizes in SIZES.items():
        backend = LocalBackend(ensure_model(model, console), warn=lambda text: console.print(f"warning: {text}"))
        art[model] = {size: [] for size in sizes}
        try:
            for round_index in range(args.rounds):
                for size in sizes:
                    config = Config(ServerConfig(builtin(model), replicas=1, cpus=1.0, memory_mb=3000),
                                    ClientConfig(threads=1, file_size=size, requests=200, duration_s=args.duration))
                    result = measure(backend, config)
                    art[model][size].append(result.art_ms)
                    console.print(f"round {round_index + 1}: {model} file size {size}: ART {result.art_ms:.1f} ms "
                                  f"({result.requests_in_window} requests in the window, errors {result.errors})")
        finally:
            backend.close()
    print("| model | file size means | small | ART | large | ART | ratio |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for model, sizes in SIZES.items():
        small, large = (statistics.median(art[model][s]) for s in sizes)
        sized = [f"{s} ({_bytes(build_payload(model, s).bytes_per_request)})" for s in sizes]
        print(f"| {model} | {BUILTINS[model]} | {sized[0]} | {small:.1f} ms | {sized[1]} | {large:.1f} ms "
              f"| {large / small:.1f}x |")
        ratios.append(f"{model} {large / small:.1f}x")
    print("ART of the largest over the smallest file: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
