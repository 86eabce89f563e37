"""The network dimension and chaos, measured side by side in one run (docs/network-and-faults.md).

MNIST on the local backend (2 threads, 1 image per request, replicas at 1.0 CPU), each link
measured exactly as a study trial does (optdse.objective.measure), alternately for --rounds
rounds; medians are printed.
1. The link method's own cost: the same load direct and through the method this machine uses
   (netem where the kernel has it, else the userspace relay) with nothing impaired.
2. Delay: ART with 10, 20 and 40 ms per round trip, minus the unimpaired link's ART, over the
   injected delay (1.0 is exact).
3. Loss: error rate and p99 at 0.5, 2 and 5% packet loss under a 250 ms deadline.
4. Chaos: 2 replicas, one killed 1 s into a 3 s load, without retries and with 2 retries:
   the error rate a client sees.

Run from the repository root:  .venv/bin/python benchmarks/network.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from optdse.config import ClientConfig, Config, NetworkConfig, ServerConfig  # noqa: E402
from optdse.deploy.local import LocalBackend  # noqa: E402
from optdse.measurement import Measurement  # noqa: E402
from optdse.models import ensure_model  # noqa: E402
from optdse.models import builtin  # noqa: E402
from optdse.network import netem_support  # noqa: E402
from optdse.objective import measure  # noqa: E402

DELAYS_MS = (10.0, 20.0, 40.0)
LOSSES_PCT = (0.5, 2.0, 5.0)
LOSS_DEADLINE_S = 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600, help="requests per measurement (default 600)")
    args = parser.parse_args()
    console = Console(stderr=True, soft_wrap=True)
    backend = LocalBackend(ensure_model("mnist", console), warn=lambda text: console.print(f"warning: {text}"))
    method = "netem" if netem_support(backend.run.run_id) is None else "proxy"
    one = ServerConfig(builtin("mnist"), replicas=1, cpus=1.0, memory_mb=1000)
    two = ServerConfig(builtin("mnist"), replicas=2, cpus=1.0, memory_mb=1000)
    cases: dict[str, Config] = {
        "direct": Config(one, ClientConfig(threads=2, file_size=1, requests=args.requests)),
        method: Config(one, ClientConfig(threads=2, file_size=1, requests=args.requests,
                                         network=NetworkConfig(method=method)))}
    for delay in DELAYS_MS:
        cases[f"delay {delay:g} ms"] = Config(one, ClientConfig(threads=2, file_size=1, requests=args.requests,
                                                                network=NetworkConfig(delay_ms=delay, method=method)))
    for loss in LOSSES_PCT:
        cases[f"loss {loss:g}%"] = Config(one, ClientConfig(threads=2, file_size=1, requests=args.requests,
                                                            deadline_s=LOSS_DEADLINE_S,
                                                            network=NetworkConfig(loss_pct=loss, method=method)))
    for retries in (0, 2):
        cases[f"chaos, {retries} retries"] = Config(two, ClientConfig(threads=2, file_size=1, requests=10**6,
                                                                      duration_s=3.0, retries=retries,
                                                                      chaos_kill_after_s=1.0))
    results: dict[str, list[Measurement]] = {name: [] for name in cases}
    try:
        for round_index in range(args.rounds):
            for name, config in cases.items():
                result = measure(backend, config, warn=lambda text: None)
                results[name].append(result)
                console.print(f"round {round_index + 1}: {name} ({result.network_method}): ART {result.art_ms:.2f} ms, "
                              f"p99 {result.p99_ms:.1f} ms, errors {result.error_rate:.2%} {result.error_codes}, "
                              f"{result.retried_requests} retried, killed {result.replicas_killed}")
    finally:
        backend.close()

    def median(name: str, figure: str) -> float:
        return statistics.median(getattr(r, figure) for r in results[name])

    base = median(method, "art_ms")
    print(f"link method: {method}; median of {args.rounds} rounds, {args.requests} requests each, 2 threads")
    print("| link | ART | p99 | error rate | added ART / injected delay |")
    print("|---|---|---|---|---|")
    for name in cases:
        added = ""
        if name.startswith("delay"):
            added = f"{(median(name, 'art_ms') - base) / float(name.split()[1]):.2f}"
        print(f"| {name} | {median(name, 'art_ms'):.2f} ms | {median(name, 'p99_ms'):.1f} ms "
              f"| {median(name, 'error_rate'):.2%} | {added} |")
    ratios = ", ".join(f"{d:g} ms {(median(f'delay {d:g} ms', 'art_ms') - base) / d:.2f}" for d in DELAYS_MS)
    print(f"{method} link over direct ART: {base / median('direct', 'art_ms'):.2f}x; added ART / injected delay: "
          f"{ratios}; error rate at {', '.join(f'{loss:g}%' for loss in LOSSES_PCT)} loss "
          f"({LOSS_DEADLINE_S * 1e3:g} ms deadline): "
          + ", ".join(f"{median(f'loss {loss:g}%', 'error_rate'):.1%}" for loss in LOSSES_PCT)
          + f"; chaos kill, error rate without / with 2 retries: {median('chaos, 0 retries', 'error_rate'):.1%} / "
          f"{median('chaos, 2 retries', 'error_rate'):.1%}")


if __name__ == "__main__":
    main()
