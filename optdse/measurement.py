"""From raw records to the figures a trial reports: the window cut, ART, ACU, energy.

Definitions (README "Definitions" says the same):
- Window, by default (the stability rule, optdse/stability.py): the run is measured in
  windows by send time and stops once the last three agree within 10% on throughput and mean
  latency; the window is those three. A run that never agrees stops at its maximum duration
  and is recorded as not stable, with its last three windows.
- Window, with a fixed request count: requests are ordered by send time. Warm-up is the
  first `warmup_fraction` of them; cool-down starts when the first client thread has sent
  its last request (from then on fewer than N threads are loading the server). The window is
  [first request after warm-up, start of cool-down); only requests sent inside it count.
  Open loop: "sent" is when a request was due, and the window runs to the last one (the
  offered load never tapers).
- ART: mean client-side latency of the successful requests in the window; p50..p99.9 from an
  HdrHistogram of the same latencies (optdse/histograms.py; merged, never averaged, across repeats).
- ACU: replicas' CPU seconds inside the window / window length, in cores.
- Energy: RAPL package joules in the window where readable (whole machine, client included),
  else replica CPU seconds x watts per core, flagged as an estimate.
- Stability: the largest relative spread of the three windows' throughput and mean latency
  (with a fixed count: of the window split in three equal parts), stable if <= 10%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from optdse.histograms import LatencyHistogram
from optdse.load import LoadResult
from optdse.monitor import Samples, watts_per_core
from optdse.stability import spread

STABLE_SPREAD = 0.10
#: Open loop: a send is late when it goes out more than late_threshold_s(rate) after it was
#: due; a run with more than MAX_LATE_FRACTION of its sends late did not offer its rate, and
#: is not a valid measurement.
LATE_S = 1e-3
LATE_SHARE_OF_GAP = 0.1
MAX_LATE_FRACTION = 0.01
#: A CFS quota is granted per 100 ms period, so a replica may use a whole period's quota in a
#: burst: over windows of a few periods ACU can differ from the quota's average by that much.
SHORT_WINDOW_S = 1.0


def late_threshold_s(offered_rps: float | None) -> float:
    """How late a send may go out and still count as on time: 1 ms, or a tenth of the mean gap
    between sends if that is longer.

    What matters is whether the replicas saw the offered arrival process, and that is judged
    against the spacing: at 300 req/s (3.3 ms apart) 1 ms is a third of a gap, while at 10 req/s
    a send 5 ms late, which a 2-core machine busy with two DeepSpeech replicas produces, still
    arrives within a twentieth of its gap. Latency counts from when each send was due in any
    case, so lateness never hides a slow answer.
    """
    if not offered_rps:
        return LATE_S
    return max(LATE_S, LATE_SHARE_OF_GAP / offered_rps)


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    mask: np.ndarray  # requests (in send order) inside the window

    @property
    def seconds(self) -> float:
        return self.end - self.start


def cut_window(load: LoadResult, warmup_fraction: float) -> Window:
    """The measurement window (module docstring): the stability rule's windows where it judged
    the run, else the warm-up and cool-down cut. Open loop: the offered load is the same until
    the schedule's last request was due, so there is no cool-down to cut; the window ends there."""
    n = len(load.send)
    if load.judge is not None and load.judge.kept():
        kept = load.judge.kept()
        start, end = kept[0].start, kept[-1].end
        return Window(start=start, end=end, mask=(load.send >= start) & (load.send < end))
    first = min(int(np.ceil(warmup_fraction * n)), n - 1)
    start = float(load.send[first])
    if load.offered_rps:
        cool_down = float(load.send[-1])
        mask = (load.send >= start) & (load.send <= cool_down)
    else:
        cool_down = float(min(load.send[load.thread == t].max() for t in np.unique(load.thread)))
        mask = (load.send >= start) & (load.send < cool_down)
    if mask.sum() < 2:  # too few requests per thread to cut both ends: keep what was sent
        start, cool_down = float(load.send[0]), float(load.finished)
        mask = np.ones(n, dtype=bool)
    return Window(start=start, end=cool_down, mask=mask)


@dataclass(frozen=True)
class Measurement:
    """Everything measured for one configuration; every field becomes a trial user attr."""

    art_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    requests_sent: int
    requests_in_window: int
    errors: int
    error_rate: float
    error_codes: dict[str, int]
    window_s: float
    warmup_requests: int
    cooldown_requests: int
    stability_spread: float
    stable: bool
    acu_cores: float
    replica_cpu_seconds: float
    mem_peak_mb: float          # the largest replica's peak
    mem_peak_mb_per_replica: list[float]
    energy_j: float
    energy_method: str          # "rapl" or "estimate: CPU-seconds x W/core"
    energy_is_estimate: bool
    client_cpu_cores: float
    client_busiest_worker_cores: float
    client_processes: int
    accounting: str
    limits_enforced: bool
    warnings: list[str]
    window_start_s: float       # the window, in seconds since the load started (for plots)
    window_end_s: float
    timeseries: list[dict[str, float]]
    request_bytes: int = 0      # one serialized request (for Inception: the JPEG's size shows here)
    file_size_unit: str = ""
    rows_per_request: int = 0   # rows each request carries (the answer must carry as many)
    request_source: str = ""    # where the inputs came from: built-in, a request file, the signature
    deploy_s: float = 0.0       # where the trial's time went: deploying (starting, resizing replicas),
    load_setup_s: float = 0.0   # starting the load generator, and
    load_s: float = 0.0         # the load itself, warm-up and cool-down included
    repeats: int = 1            # measurements of this configuration in a row (--repeats)
    art_cv: float | None = None  # their coefficients of variation (stdev / mean): the noise
    acu_cv: float | None = None
    art_ms_repeats: list[float] = field(default_factory=list)
    acu_cores_repeats: list[float] = field(default_factory=list)
    network_method: str = "none"  # how the link was impaired: none, netem or proxy (optdse/network.py)
    deadline_ms: float = 30_000.0  # per request; later answers count as errors
    retried_requests: int = 0     # requests sent again to another replica after a refusal
    replicas_killed: list[str] = field(default_factory=list)  # by the chaos option, during the load
    acu_by_node: dict[str, float] = field(default_factory=dict)  # ACU of the replicas on each host (swarm nodes)
    replicas_by_node: dict[str, int] = field(default_factory=dict)  # replicas on each host as the load started
    p999_ms: float = 0.0
    cost_cores: float = 0.0       # what the deployment reserves: replicas x CPU limit
    cost_memory_mb: float = 0.0   # replicas x memory limit
    cpu_ms_per_request: float = 0.0    # replica CPU burnt per answered request in the window
    energy_j_per_request: float = 0.0  # energy per answered request (an estimate where energy_j is)
    latency_histogram: str = ""   # the window's answered latencies, HdrHistogram-encoded (optdse/histograms.py)
    stop_rule: str = ""           # how long the load ran: a fixed count, or until the windows agreed
    windows: list[dict[str, float]] = field(default_factory=list)  # the stability rule's windows, in order
    loop: str = "closed loop"     # which loop drove the load (closed: threads; open: an offered rate)
    offered_rps: float = 0.0      # open loop: the rate offered (0: closed loop)
    late_sends: int = 0           # open loop: sends more than late_threshold_ms after they were due
    late_fraction: float = 0.0
    late_threshold_ms: float = 1.0  # open loop: late_threshold_s of the offered rate, ms
    late_max_ms: float = 0.0
    generator_kept_up: bool = True  # open loop: at most MAX_LATE_FRACTION late; else the trial is infeasible
    server_command: str = ""      # the first replica's server command line, exactly as run
    server_knobs: dict[str, int | bool] = field(default_factory=dict)  # the knobs given (optdse/knobs.py)
    batching_parameters: str = ""  # the batching parameters file the server read ("": none)
    server: str = "optdse-serve"  # which server the replicas ran (optdse/config.py SERVER_NAMES)
    server_config: str = ""       # triton: the model configuration (config.pbtxt) the replicas loaded
    server_stats: dict[str, float] = field(default_factory=dict)  # triton: its own statistics over the load
    scenarios: list[dict[str, object]] = field(default_factory=list)  # under a workload's scenarios: each one's figures
    aggregate: str = ""           # how the scenarios' figures became these: worst or mean ("": one scenario)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(load: LoadResult, samples: Samples, window: Window, memory_peaks: tuple[int, ...],
              accounting: str, limits_enforced: bool) -> Measurement:
    inside = window.mask
    good = inside & load.ok
    histogram = LatencyHistogram.of(load.latency[good])
    percentiles = histogram.percentiles_ms()
    cpu = samples.cpu_in_window(window.start, window.end)
    rapl = samples.joules_in_window(window.start, window.end)
    energy, method = ((rapl, "rapl: package energy, whole machine") if rapl is not None else
                      (cpu * watts_per_core(), f"estimate: replica CPU-seconds x {watts_per_core():g} W per core"))
    if load.judge is not None:
        stability_spread, stable = load.judge.kept_spread(), load.judge.stable
    else:
        stability_spread = _thirds_spread(load, good, window)
        stable = stability_spread <= STABLE_SPREAD
    errors = int((~load.ok).sum())
    warnings = list(load.warnings)
    late_after = late_threshold_s(load.offered_rps)
    late = int((load.late > late_after).sum())
    late_fraction = late / max(1, len(load.send))
    if late_fraction > MAX_LATE_FRACTION:
        warnings.append(f"the load generator fell behind: {late} of {len(load.send)} sends ({late_fraction:.1%}) went "
                        f"out more than {late_after * 1e3:g} ms after they were due (worst {load.late.max() * 1e3:.1f} ms); "
                        "the offered rate was not what the replicas saw, so the measurement is not valid")
    if load.judge is not None and not stable:
        warnings.append(f"not stable: the load ran its {load.judge.rule.max_s:g} s and its last "
                        f"{load.judge.rule.windows} windows still differ by {stability_spread:.0%} in throughput or "
                        "mean latency; the figures are those windows'")
    if samples.stopped_by is not None:
        warnings.append(f"CPU and memory sampling stopped before the load ended ({samples.stopped_by}): ACU and "
                        "memory cover only the samples before it")
    if window.seconds < SHORT_WINDOW_S:
        warnings.append(f"the measurement window is only {window.seconds:.2f} s: ACU over so few 100 ms CPU-quota "
                        "periods is coarse; use a longer stability window_s (or more --requests)")
    answered_s = load.latency[good]
    return Measurement(
        art_ms=float(answered_s.mean() * 1e3) if answered_s.size else float("nan"), **percentiles,
        latency_histogram=histogram.encode(), throughput_rps=float(good.sum() / window.seconds) if window.seconds > 0 else 0.0,
        requests_sent=len(load.send), requests_in_window=int(inside.sum()), errors=errors,
        error_rate=errors / max(1, len(load.send)), error_codes=dict(load.error_codes),
        window_s=window.seconds, warmup_requests=int((load.send < window.start).sum()),
        cooldown_requests=int((load.send >= window.end).sum()), stability_spread=float(stability_spread),
        stable=bool(stable), acu_cores=cpu / window.seconds if window.seconds > 0 else 0.0,
        cpu_ms_per_request=cpu * 1e3 / answered_s.size if answered_s.size else float("nan"),
        energy_j_per_request=energy / answered_s.size if answered_s.size else float("nan"),
        replica_cpu_seconds=cpu, mem_peak_mb=max(memory_peaks, default=0) / 2**20,
        mem_peak_mb_per_replica=[round(m / 2**20, 1) for m in memory_peaks], energy_j=energy,
        energy_method=method, energy_is_estimate=rapl is None, client_cpu_cores=load.client_cpu_cores,
        client_busiest_worker_cores=load.busiest_worker_cores, client_processes=len(load.client_cpu_seconds),
        accounting=accounting, limits_enforced=limits_enforced, warnings=warnings,
        window_start_s=round(window.start - load.started, 4), window_end_s=round(window.end - load.started, 4),
        timeseries=timeseries(load, samples, window), retried_requests=load.retried,
        acu_by_node={node: round(seconds / window.seconds, 4) if window.seconds > 0 else 0.0
                     for node, seconds in samples.cpu_in_window_by_node(window.start, window.end).items()},
        replicas_by_node=samples.replicas_by_node,
        stop_rule=load.judge.rule.describe() if load.judge is not None else "",
        windows=[w.as_dict(load.started) for w in load.judge.closed] if load.judge is not None else [],
        loop=load.loop or "closed loop", offered_rps=float(load.offered_rps or 0.0),
        late_sends=late, late_fraction=late_fraction, late_threshold_ms=late_after * 1e3,
        late_max_ms=float(load.late.max() * 1e3) if load.late.size else 0.0,
        generator_kept_up=late_fraction <= MAX_LATE_FRACTION)


def _thirds_spread(load: LoadResult, good: np.ndarray, window: Window) -> float:
    """A fixed-count run's stability: the window in three equal parts, the largest relative
    spread of their throughput and mean latency."""
    thirds = np.linspace(window.start, window.end, 4)
    parts_rps, parts_art = [], []
    for a, b in zip(thirds[:-1], thirds[1:]):
        part = good & (load.send >= a) & (load.send < b)
        parts_rps.append(part.sum() / (b - a) if b > a else 0.0)
        parts_art.append(float(load.latency[part].mean()) if part.any() else 0.0)
    return max(spread(parts_rps), spread(parts_art))


def coefficient_of_variation(values: list[float]) -> float:
    """Sample standard deviation over the mean (0 for fewer than two values)."""
    mean = float(np.mean(values))
    return float(np.std(values, ddof=1) / mean) if len(values) > 1 and mean > 0 else 0.0


#: Figures that describe one run (the first repeat's, like its time series), not a quantity to average.
_FROM_FIRST = frozenset({"client_processes", "window_start_s", "window_end_s", "request_bytes", "rows_per_request"})


def combine_repeats(results: list[Measurement]) -> Measurement:
    """One configuration measured several times in a row, as one trial's figures.

    Every float figure is the mean over the repeats and every count the sum, so objectives
    are averages (ACU per node too); percentiles come from the repeats' histograms merged;
    lists, flags and the time series come from the first repeat. The spread of
    ART and ACU is kept as coefficients of variation: a difference between two trials smaller
    than a few CVs is noise, not a better configuration."""
    first = results[0]
    combined: dict[str, object] = {}
    for item in fields(Measurement):
        values = [getattr(r, item.name) for r in results]
        if item.name in _FROM_FIRST or isinstance(values[0], bool) or not isinstance(values[0], (int, float)):
            continue
        combined[item.name] = sum(values) if isinstance(values[0], int) else float(np.mean(values))
    combined["mem_peak_mb"] = max(r.mem_peak_mb for r in results)
    histograms = [LatencyHistogram.decode(r.latency_histogram) for r in results if r.latency_histogram]
    if histograms:  # percentiles of all the repeats' requests together, not averages of percentiles
        merged = LatencyHistogram.merged(histograms)
        combined.update(merged.percentiles_ms(), latency_histogram=merged.encode())
    art, acu = [r.art_ms for r in results], [r.acu_cores for r in results]
    combined["error_rate"] = combined["errors"] / max(1, combined["requests_sent"])  # type: ignore[operator]
    combined.update(repeats=len(results), art_cv=coefficient_of_variation(art), acu_cv=coefficient_of_variation(acu),
                    art_ms_repeats=art, acu_cores_repeats=acu, stable=all(r.stable for r in results),
                    generator_kept_up=all(r.generator_kept_up for r in results),
                    late_max_ms=max(r.late_max_ms for r in results),
                    replicas_killed=[name for r in results for name in r.replicas_killed],
                    error_codes={code: sum(r.error_codes.get(code, 0) for r in results)
                                 for r in results for code in r.error_codes},
                    # Each node's mean, as acu_cores is, so the nodes still sum to it (a node
                    # without replicas in one repeat counts 0 there).
                    acu_by_node={node: round(float(np.mean([r.acu_by_node.get(node, 0.0) for r in results])), 4)
                                 for node in dict.fromkeys(n for r in results for n in r.acu_by_node)})
    return replace(first, **combined)


#: Each scenario's figures a trial keeps beside their aggregate.
SCENARIO_FIGURES = ("art_ms", "p95_ms", "p99_ms", "throughput_rps", "acu_cores", "error_rate", "cpu_ms_per_request",
                    "offered_rps", "late_fraction", "stable")


def combine_scenarios(results: list[Measurement], names: list[str], aggregate: str,
                      directions: dict[str, str]) -> Measurement:
    """One configuration measured under each of a workload's scenarios, as one trial's figures.

    Each figure with a direction (`directions`: spec.METRICS) is the worst scenario's (the
    largest latency or cost, the smallest throughput) with `aggregate` "worst", or the mean
    with "mean"; the error rate and late sends are always the worst, stable and kept-up only
    if every scenario was, and counts add up, so a constraint holds for the trial only if it
    held under every scenario. The rest (histogram, windows, time series) is the scenario
    slowest on ART, and `scenarios` keeps each one's own figures by name."""
    combined: dict[str, object] = {}
    for name, direction in directions.items():
        values = [float(getattr(r, name)) for r in results]
        worst = max(values) if direction == "minimize" else min(values)
        combined[name] = worst if aggregate == "worst" else float(np.mean(values))
    combined.update(
        requests_sent=sum(r.requests_sent for r in results), errors=sum(r.errors for r in results),
        error_rate=max(r.error_rate for r in results), late_fraction=max(r.late_fraction for r in results),
        late_sends=sum(r.late_sends for r in results), late_max_ms=max(r.late_max_ms for r in results),
        generator_kept_up=all(r.generator_kept_up for r in results), stable=all(r.stable for r in results),
        mem_peak_mb=max(r.mem_peak_mb for r in results), aggregate=aggregate,
        scenarios=[{"name": name, **{figure: getattr(r, figure) for figure in SCENARIO_FIGURES}}
                   for name, r in zip(names, results, strict=True)])
    return replace(max(results, key=lambda r: r.art_ms), **combined)


#: Buckets per time series: enough to see a warm-up of a tenth of the run.
TIMESERIES_BUCKETS = 40


def timeseries(load: LoadResult, samples: Samples, window: Window) -> list[dict[str, float]]:
    """The run in up to 40 equal buckets (at least 10 ms each), from the start of the load:
    bucket start `t` (s), requests sent, their mean latency, errors, replica CPU (cores),
    memory (MB), and whether the bucket overlaps the measurement window. Equal buckets rather
    than seconds, because a fast configuration finishes in well under a second."""
    duration = max(load.finished - load.started, 1e-3)
    width = max(0.01, duration / TIMESERIES_BUCKETS)
    rows = []
    for k in range(int(np.ceil(duration / width))):
        a, b = load.started + k * width, load.started + (k + 1) * width
        sent = (load.send >= a) & (load.send < b)
        ok = sent & load.ok
        end = min(b, float(samples.time[-1]))
        cpu = samples.cpu_between(a, end) / (end - a) if end > a else 0.0
        memory = float(np.interp(min(b, end), samples.time, samples.memory_bytes)) / 2**20
        rows.append({"t": round(k * width, 4), "requests": int(sent.sum()), "errors": int((sent & ~load.ok).sum()),
                     "art_ms": round(float(load.latency[ok].mean() * 1e3), 3) if ok.any() else None,
                     "acu_cores": round(cpu, 4), "memory_mb": round(memory, 1),
                     "in_window": bool(a < window.end and b > window.start)})
    return rows


__all__ = ["Measurement", "Window", "coefficient_of_variation", "combine_repeats", "cut_window", "summarize",
           "timeseries"]
