"""Pure logic of measuring: the stability rule's windows (optdse/stability.py), the latency
histograms (optdse/histograms.py) and repeats combined into one trial (optdse/measurement.py).
Real runs under the rule are in test_open_loop.py."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from optdse.histograms import LatencyHistogram
from optdse.measurement import Measurement, combine_repeats
from optdse.monitor import Samples
from optdse.stability import StabilityJudge, StabilityRule


def steady(rate: float, seconds: float, latency_s: float, start: float = 100.0,
           drift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests sent evenly at `rate` for `seconds`, each answered in `latency_s` (times
    (1 + drift * t) t seconds in: a latency that keeps growing)."""
    send = start + np.arange(int(rate * seconds)) / rate
    latency = latency_s * (1 + drift * (send - start))
    return send, latency, np.ones(len(send), dtype=bool)


def test_steady_load_stops_after_warmup_and_three_windows() -> None:
    rule = StabilityRule(window_s=1.0, windows=3, tolerance=0.1, warmup_s=0.5, max_s=30)
    judge = StabilityJudge(rule, started=100.0)
    send, latency, ok = steady(200, 10, 0.002)
    assert judge.update(send, latency, ok, watermark=102.4) is None  # two windows closed: not yet
    assert len(judge.closed) == 1
    stop = judge.update(send, latency, ok, watermark=104.0)
    assert stop == pytest.approx(103.5) and judge.stable
    assert [round(w.throughput_rps) for w in judge.kept()] == [200, 200, 200]
    assert judge.kept_spread() == pytest.approx(0.0, abs=0.01)


def test_a_window_is_judged_only_once_the_watermark_has_passed_it() -> None:
    judge = StabilityJudge(StabilityRule(window_s=1.0, warmup_s=0.0), started=0.0)
    send, latency, ok = steady(100, 5, 0.001, start=0.0)
    assert judge.update(send, latency, ok, watermark=0.99) is None and not judge.closed


def test_a_drifting_latency_never_stabilises_and_stops_at_max() -> None:
    rule = StabilityRule(window_s=1.0, warmup_s=0.0, max_s=8.0)
    judge = StabilityJudge(rule, started=0.0)
    send, latency, ok = steady(100, 12, 0.001, start=0.0, drift=0.5)  # +50% per second
    assert judge.update(send, latency, ok, watermark=float("inf")) is None
    assert not judge.stable and len(judge.closed) == 8  # only windows inside max_s
    assert judge.kept()[-1].end == pytest.approx(8.0) and judge.kept_spread() > 0.1


def test_sparse_windows_double_until_they_hold_enough_answers() -> None:
    rule = StabilityRule(window_s=1.0, warmup_s=0.0, max_s=60.0, min_requests=20)
    judge = StabilityJudge(rule, started=0.0)
    send, latency, ok = steady(6, 60, 0.1, start=0.0)  # 6 answers a second
    stop = judge.update(send, latency, ok, watermark=float("inf"))
    lengths = [w.end - w.start for w in judge.closed]
    assert lengths[:4] == pytest.approx([1, 2, 4, 4])  # 6, 12 answers: too few; 24 from then on
    assert stop is not None and all(w.answered >= 20 for w in judge.kept())


def test_errors_do_not_count_as_answers() -> None:
    judge = StabilityJudge(StabilityRule(window_s=1.0, warmup_s=0.0), started=0.0)
    send, latency, ok = steady(100, 5, 0.001, start=0.0)
    ok[::2] = False
    judge.update(send, latency, ok, watermark=float("inf"))
    assert judge.closed[0].answered == 50 and judge.closed[0].errors == 50


def test_a_rule_without_room_for_its_windows_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        StabilityRule(window_s=5.0, windows=3, warmup_s=1.0, max_s=10.0)


def test_histogram_percentiles_are_within_a_tenth_of_a_percent() -> None:
    latencies = np.random.default_rng(1).lognormal(np.log(0.002), 0.6, 50_000)
    histogram = LatencyHistogram.of(latencies)
    for p in (50, 90, 99, 99.9):
        exact = float(np.percentile(latencies, p, method="inverted_cdf")) * 1e3
        assert histogram.percentile_ms(p) == pytest.approx(exact, rel=2e-3, abs=1e-3)
    assert histogram.count == 50_000 and histogram.mean_ms() == pytest.approx(latencies.mean() * 1e3, rel=2e-3)


def test_merged_histograms_equal_the_histogram_of_all_values_not_an_average() -> None:
    fast = np.full(990, 0.001)
    slow = np.full(10, 0.5)  # one worker saw the stall
    merged = LatencyHistogram.merged([LatencyHistogram.of(fast), LatencyHistogram.decode(LatencyHistogram.of(slow).encode())])
    together = LatencyHistogram.of(np.concatenate([fast, slow]))
    assert merged.count == 1000 and merged.percentiles_ms() == together.percentiles_ms()
    assert merged.percentile_ms(99.5) == pytest.approx(500, rel=1e-3)  # averaging the two p99.5s would say ~250
    assert len(merged.encode()) < 400  # a trial stores it compactly


def test_an_empty_histogram_reports_no_figures() -> None:
    empty = LatencyHistogram.of([])
    assert empty.count == 0 and np.isnan(empty.percentile_ms(99)) and empty.distribution() == []


def figures(**given: object) -> Measurement:
    """A Measurement with `given` figures and every other field blank (0, "", empty, None)."""
    def blank(hint: object) -> object:
        origin = typing.get_origin(hint)
        return origin() if origin in (list, dict) else {float: 0.0, int: 0, bool: True, str: ""}.get(hint)  # type: ignore[call-overload]

    return Measurement(**{name: given[name] if name in given else blank(hint)
                          for name, hint in typing.get_type_hints(Measurement).items()})


def test_repeats_average_acu_per_node_so_the_nodes_still_sum_to_acu() -> None:
    """Per node as for acu_cores: a node without replicas in one repeat counts 0 there."""
    combined = combine_repeats([figures(acu_cores=0.6, acu_by_node={"a": 0.4, "b": 0.2}),
                                figures(acu_cores=0.3, acu_by_node={"a": 0.3})])
    assert combined.acu_cores == pytest.approx(0.45)
    assert combined.acu_by_node == {"a": 0.35, "b": 0.1}
    assert sum(combined.acu_by_node.values()) == pytest.approx(combined.acu_cores)


def test_acu_comes_from_the_samples_inside_the_window_not_across_the_load_s_end() -> None:
    """Replicas busy at 1 core until the load stops at t = 10, idle after; samples a second
    apart at t = x.5 (an engine's stats ticks). Interpolating across the window's end at 10
    would spread the stop over 9.5-10.5 and read 0.96 cores; the samples inside read 1.0."""
    time = np.arange(0.5, 14, 1.0)
    cpu = np.minimum(time, 10.0)
    samples = Samples(time=time, cpu_seconds=cpu, memory_bytes=np.zeros(len(time), dtype=np.int64), rapl_joules=None,
                      cpu_by_node={"a": cpu * 0.25, "b": cpu * 0.75}, replicas_by_node={"a": 1, "b": 3})
    assert samples.cpu_between(4.0, 10.0) / 6.0 == pytest.approx(0.9583, abs=1e-4)
    assert samples.cpu_in_window(4.0, 10.0) / 6.0 == pytest.approx(1.0)
    assert samples.cpu_in_window_by_node(4.0, 10.0) == {"a": pytest.approx(1.5), "b": pytest.approx(4.5)}
    # Dense samples (50 ms, the cgroup readers'): both ways agree.
    dense = np.arange(0.0, 14, 0.05)
    cpu = np.minimum(dense, 10.0)
    dense_samples = Samples(time=dense, cpu_seconds=cpu, memory_bytes=np.zeros(len(dense), dtype=np.int64),
                            rapl_joules=None, cpu_by_node={"a": cpu}, replicas_by_node={"a": 1})
    assert dense_samples.cpu_in_window(4.01, 10.0) == pytest.approx(dense_samples.cpu_between(4.01, 10.0), rel=2e-3)
