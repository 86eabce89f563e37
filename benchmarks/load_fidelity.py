"""Load-generator fidelity: optdse's REST client against wrk, and the client's own ceiling.

In one run, against one optdse-serve replica on 127.0.0.1 (local backend, MNIST, one image
per request, REST and gRPC open; the CPU quota is the whole machine so throttling does not
add noise):

1. Mean latency at the same concurrency C (1 and 4): optdse's load generator (`run_load`,
   protocol rest, C closed-loop threads) and wrk (`-t1 -cC`, a Lua script POSTing the same
   JSON body with Content-Type application/json) take turns for --rounds short rounds of
   --seconds each, the order swapped every round so a drifting machine hits both alike
   (on this shared 2-core machine one pair's ratio ranged from 0.5 to 1.9 while another
   measurement ran beside it: many short pairs beat a few long ones, though runs of 1 s
   were noisier still).
   wrk's `done()` prints its mean twice: `latency.mean` as wrk reports it, and the mean of
   the latencies it measured. They differ because wrk "corrects" its histogram for
   coordinated omission before reporting (stats_correct: every latency of at least twice
   the mean interval adds synthetic samples), so on a machine with hiccups its printed mean
   grows with the hiccups. The script undoes that correction exactly (it only adds counts
   at n - k*interval, so the measured count at n is the corrected count at n minus the one
   at n + interval) and compares like with like: measured mean against measured mean. The
   per-round ratios optdse/wrk are summarised by their median.
2. The client's maximum request rate: optdse's load generator with --saturate-threads
   threads over gRPC and over REST (and wrk with as many connections, for reference), with
   the client CPU each used (workers' process time; wrk's from its rusage) and requests per
   client CPU-second. On a 2-core machine client and server share the cores, so the rate is
   the pair's ceiling; requests per client CPU-second is the client's own cost.

The model is exported to results/models/ on first use, as `optdse study` does. wrk is
Debian's package (apt-get install -y wrk). Everything targets 127.0.0.1 only.

Run from the repository root:  .venv/bin/python benchmarks/load_fidelity.py [--rounds 10] [--seconds 2]
The last line is the headline: optdse/wrk mean latency ratio per concurrency.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from optdse.config import ServerConfig
from optdse.deploy.base import Endpoint
from optdse.deploy.local import LocalBackend
from optdse.load import LoadPlan, LoadResult, run_load
from optdse.models import ensure_model
from optdse.models import builtin
from optdse.payloads import Payload, build_payload

CONCURRENCIES = (1, 4)

# wrk's Lua: POST the body read from BODY_PATH; done() prints one machine-readable line with
# wrk's reported mean, the mean of what it measured (its coordinated-omission correction
# undone), the number of measured latencies, requests, run time and errors. CONNECTIONS is
# substituted because init(args) reaches only the threads' Lua states, not done()'s.
WRK_SCRIPT = """
wrk.method = "POST"
local file = io.open([[BODY_PATH]], "rb")
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local connections = CONNECTIONS
  local counts = {}
  for i = 1, #latency do
    local value, count = latency(i)
    counts[value] = count
  end
  local interval = math.floor(summary.duration / math.floor(summary.requests / connections))
  local measured, sum = 0, 0
  for value, count in pairs(counts) do
    if value > interval then count = count - (counts[value + interval] or 0) end
    measured = measured + count
    sum = sum + count * value
  end
  local e = summary.errors
  io.write(string.format("WRK_RESULT %.3f %.3f %d %d %d %d\\n", latency.mean, sum / math.max(measured, 1),
                         measured, summary.requests, summary.duration,
                         e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Run:
    """One client's run: its mean latency (us) and what it did."""

    mean_us: float
    requests: int
    seconds: float
    errors: int
    client_cpu_s: float
    reported_mean_us: float | None = None  # wrk: the mean as wrk prints it (CO-corrected)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def optdse_run(endpoint: Endpoint, payload: Payload, threads: int, seconds: float) -> Run:
    """run_load for `seconds` at `threads` closed-loop threads; the mean over every OK request
    (wrk cuts no warm-up either)."""
    plan = LoadPlan(targets=(endpoint.target_for(payload.protocol),), bodies=payload.bodies, batches=payload.batches,
                    threads=threads, requests=10**9, duration_s=seconds, deadline_s=10,
                    protocol=payload.protocol, path=payload.path)
    result: LoadResult = run_load(plan, timeout_s=seconds + 60)
    ok = result.latency[result.ok]
    return Run(mean_us=float(ok.mean() * 1e6) if ok.size else float("nan"), requests=len(result.send),
               seconds=result.finished - result.started, errors=int((~result.ok).sum()),
               client_cpu_s=sum(result.client_cpu_seconds))


def wrk_run(url: str, body_path: Path, connections: int, seconds: int, workdir: Path) -> Run:
    script = workdir / f"post-c{connections}.lua"
    script.write_text(WRK_SCRIPT.replace("BODY_PATH", str(body_path)).replace("CONNECTIONS", str(connections)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
                           "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    reported, measured_mean, measured, requests, duration_us, errors = line.split()[1:]
    if int(measured) != int(requests):
        print(f"note: wrk's histogram holds {measured} latencies for {requests} requests", file=sys.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(mean_us=float(measured_mean), requests=int(requests), seconds=int(duration_us) / 1e6,
               errors=int(errors), client_cpu_s=cpu, reported_mean_us=float(reported))


def fidelity(endpoint: Endpoint, payload: Payload, url: str, body_path: Path, workdir: Path,
             rounds: int, seconds: int, console: Console) -> dict[int, list[tuple[Run, Run]]]:
    """(optdse, wrk) pairs per concurrency, run back to back, the order swapped every round."""
    pairs: dict[int, list[tuple[Run, Run]]] = {c: [] for c in CONCURRENCIES}
    for index in range(rounds):
        for connections in CONCURRENCIES:
            clients = {"optdse": lambda c=connections: optdse_run(endpoint, payload, c, seconds),
                       "wrk": lambda c=connections: wrk_run(url, body_path, c, seconds, workdir)}
            order = ["optdse", "wrk"] if index % 2 == 0 else ["wrk", "optdse"]
            runs = {name: clients[name]() for name in order}
            pairs[connections].append((runs["optdse"], runs["wrk"]))
            console.print(f"round {index + 1}, c={connections}: optdse {runs['optdse'].mean_us:.0f} us, "
                          f"wrk {runs['wrk'].mean_us:.0f} us (printed {runs['wrk'].reported_mean_us:.0f})")
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per concurrency (default 10)")
    parser.add_argument("--seconds", type=int, default=2,
                        help="length of each fidelity run, whole seconds as wrk takes them (default 2)")
    parser.add_argument("--saturate-threads", type=int, default=8,
                        help="client threads for the maximum request rate (default 8)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    console = Console(stderr=True, soft_wrap=True)
    began = time.perf_counter()
    backend = LocalBackend(ensure_model("mnist", console), warn=lambda text: console.print(f"warning: {text}"))
    workdir = Path(tempfile.mkdtemp(prefix="optdse-fidelity-"))
    try:
        with console.status("starting one optdse-serve replica ..."):
            (endpoint,) = backend.apply(ServerConfig(builtin("mnist"), replicas=1, cpus=2.0, memory_mb=2000))
        rest, grpc = build_payload("mnist", 1, "rest"), build_payload("mnist", 1, "grpc")
        body_path = workdir / "body.json"
        body_path.write_bytes(rest.body)
        url = f"http://{endpoint.target_for('rest')}{rest.path}"
        wrk_run(url, body_path, 1, 1, workdir)  # warm-up: the server's first requests build its graph
        optdse_run(endpoint, rest, 1, 1)
        pairs = fidelity(endpoint, rest, url, body_path, workdir, args.rounds, args.seconds, console)
        threads, seconds = args.saturate_threads, max(args.seconds, 4)
        with console.status(f"maximum request rate, {threads} threads ..."):
            ceiling = {"optdse gRPC": optdse_run(endpoint, grpc, threads, seconds),
                       "optdse REST": optdse_run(endpoint, rest, threads, seconds),
                       "wrk REST": wrk_run(url, body_path, threads, seconds, workdir)}
    finally:
        backend.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"optdse-serve, MNIST, 1 image per request: REST body {rest.bytes_per_request} B, gRPC "
          f"{grpc.bytes_per_request} B; {args.rounds} rounds of {args.seconds:g} s per client and concurrency, "
          f"alternating; maximum rate runs of {seconds:g} s; {time.perf_counter() - began:.0f} s in all")
    print_report(pairs, ceiling, threads)
    return 0


def print_report(pairs: dict[int, list[tuple[Run, Run]]], ceiling: dict[str, Run], threads: int) -> None:
    """The rounds, the maximum rates, and last the headline ratio per concurrency."""
    print()
    print("| c | round | optdse mean | wrk mean (measured) | wrk mean (as printed) | optdse req | wrk req "
          "| errors optdse/wrk | optdse/wrk |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios: dict[int, list[float]] = {}
    for connections, runs in pairs.items():
        for index, (ours, theirs) in enumerate(runs, 1):
            print(f"| {connections} | {index} | {ours.mean_us:.0f} us | {theirs.mean_us:.0f} us "
                  f"| {theirs.reported_mean_us:.0f} us | {ours.requests} | {theirs.requests} "
                  f"| {ours.errors}/{theirs.errors} | {ours.mean_us / theirs.mean_us:.3f} |")
        ratios[connections] = sorted(ours.mean_us / theirs.mean_us for ours, theirs in runs)
    print()
    print(f"| client ({threads} threads / connections) | requests/s | mean latency | client CPU cores "
          "| requests per client CPU-second | errors |")
    print("|---|---|---|---|---|---|")
    for name, run in ceiling.items():
        print(f"| {name} | {run.rate:.0f} | {run.mean_us:.0f} us | {run.client_cpu_s / run.seconds:.2f} "
              f"| {run.requests / run.client_cpu_s:.0f} | {run.errors} |")
    print()
    print("per-round optdse/wrk ratios (optdse's mean over wrk's measured mean, each pair back to back): "
          + "; ".join(f"c={c}: {r[0]:.2f}..{r[-1]:.2f}" for c, r in ratios.items()) + "; the median of the rounds:")
    print("optdse/wrk mean latency ratio: "
          + ", ".join(f"{statistics.median(r):.2f} (c={c})" for c, r in ratios.items()))

if __name__ == "__main__":
    sys.exit(main())
