"""Open-loop load: a schedule of due times, latency counted from when a request was due.

The claim (issue 19, part 1): at a fixed offered rate, a replica frozen for half a second
shows up in the tail as every request that was due during the freeze, while the same run
without the freeze does not, and a closed-loop run through the same freeze hides it
(coordinated omission: its one waiting thread sends nothing meanwhile). Compared side by
side in one test, as ratios; and offered rate and measured throughput agree below capacity.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from optdse.config import ClientConfig, Config, ServerConfig
from optdse.deploy.local import LocalBackend
from optdse.histograms import LatencyHistogram
from optdse.load import LoadPlan, LoadResult, run_load
from optdse.load.arrivals import schedule
from optdse.measurement import late_threshold_s
from optdse.models import builtin
from optdse.objective import measure
from optdse.payloads import build_payload
from optdse.stability import StabilityRule
from tests.optdse_tests.conftest import SPACE, optdse, write_study
from tests.serving_process import ServerProcess


def test_a_constant_schedule_is_evenly_spaced_and_a_poisson_one_is_seeded() -> None:
    assert schedule(4.0, 5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    poisson = schedule(200.0, 20_000, "poisson", seed=7)
    assert poisson[0] == 0.0 and np.all(np.diff(poisson) > 0)
    assert np.array_equal(poisson, schedule(200.0, 20_000, "poisson", seed=7))  # reproducible
    assert not np.array_equal(poisson, schedule(200.0, 20_000, "poisson", seed=8))
    assert np.mean(np.diff(poisson)) == pytest.approx(1 / 200, rel=0.03)
    gaps = np.diff(poisson)
    assert np.std(gaps) == pytest.approx(np.mean(gaps), rel=0.05)  # exponential: sd = mean
    with pytest.raises(ValueError, match="rate must be > 0"):
        schedule(0.0, 10)


def _plan(target: str, **changes: object) -> LoadPlan:
    payload = build_payload("mnist", 1)
    fields: dict[str, object] = {"targets": (target,), "bodies": payload.bodies, "batches": payload.batches,
                                 "threads": 1, "requests": 300, "rate_rps": 100.0, "deadline_s": 10.0}
    return LoadPlan(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.slow
def test_offered_rate_and_measured_throughput_agree_below_capacity(server: ServerProcess) -> None:
    result = run_load(_plan(f"127.0.0.1:{server.port}", rate_rps=150.0, requests=450))
    assert result.ok.all() and result.loop.startswith("open loop, 150 req/s constant")
    done = result.send + result.latency
    measured = len(result.send) / (done.max() - result.send.min())
    assert measured == pytest.approx(150.0, rel=0.05), measured
    assert np.allclose(np.diff(result.send), 1 / 150, atol=1e-6)  # `send` is when each was due


def _with_freeze(plan: LoadPlan, pid: int, at_s: float, for_s: float) -> tuple[LoadResult, float, float]:
    """Run `plan`, stopping process `pid` (a replica this test started) from `at_s` into the
    load for `for_s`; returns the result and when the freeze began and ended (perf_counter)."""
    moments: dict[str, float] = {}

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        moments["stop"] = time.perf_counter()
        time.sleep(for_s)
        os.kill(pid, signal.SIGCONT)
        moments["cont"] = time.perf_counter()

    timer = threading.Timer(at_s, freeze)
    try:
        result = run_load(plan, on_start=timer.start)
    finally:
        timer.join()
        os.kill(pid, signal.SIGCONT)  # whatever happened, the replica runs again
    return result, moments["stop"], moments["cont"]


@pytest.mark.slow
def test_a_frozen_replica_shows_in_the_open_loop_tail_and_hides_in_the_closed_loop(local: LocalBackend) -> None:
    (endpoint,) = local.apply(ServerConfig(builtin("mnist"), replicas=1, cpus=2.0, memory_mb=1000))
    pid = local.replicas[0].process.pid
    open_plan = _plan(endpoint.target)  # 100 req/s for 3 s
    before = run_load(open_plan)
    frozen, stop, cont = _with_freeze(open_plan, pid, at_s=1.0, for_s=0.5)
    closed, _, _ = _with_freeze(_plan(endpoint.target, rate_rps=None, requests=10**6, duration_s=3.0), pid, 1.0, 0.5)
    after = run_load(open_plan)
    # The steady run is the less disturbed of one before and one after (the other workers' tests
    # share the cores: a replica loading TensorFlow beside it once put its p99 at 111 ms).
    steady = min(before, after, key=lambda result: float(np.percentile(result.latency, 99)))
    assert before.ok.all() and after.ok.all() and frozen.ok.all() and closed.ok.all()

    # Every request due during the freeze waited for its end: its latency counts from when it was due.
    due_in_freeze = (frozen.send >= stop) & (frozen.send < cont - 0.01)
    assert due_in_freeze.sum() >= 40  # ~50 at 100 req/s
    assert np.all(frozen.latency[due_in_freeze] >= (cont - frozen.send[due_in_freeze]) - 0.005)

    def p99(result: LoadResult) -> float:
        return float(np.percentile(result.latency, 99))

    assert p99(frozen) > 5 * p99(steady), (p99(frozen), p99(steady))
    assert frozen.latency.mean() > 3 * steady.latency.mean()
    # The closed loop's one thread waited once; every other request of its run was fast.
    assert p99(closed) < p99(frozen) / 5, (p99(closed), p99(frozen))
    assert closed.latency.max() >= 0.4  # the freeze happened to it too


@pytest.mark.slow
@pytest.mark.usefixtures("cgroup_driver")
def test_optdse_measure_at_an_offered_rate_reports_the_loop_tail_and_late_sends(project: Path) -> None:
    done = optdse(project, "measure", "--rate", "150", "--arrival", "poisson", "--duration", "4",
                  "--requests", "100000", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["loop"] == "open loop, 150 req/s poisson, up to 64 in flight" and figures["offered_rps"] == 150
    assert "150 req/s poisson" in figures["config"]
    assert figures["errors"] == 0 and figures["p999_ms"] >= figures["p99_ms"] > 0
    assert 0 <= figures["late_sends"] <= figures["requests_sent"] and figures["late_max_ms"] >= 0
    assert figures["throughput_rps"] == pytest.approx(150, rel=0.25)  # Poisson: a 4 s sample of the rate
    assert figures["generator_kept_up"] == (figures["late_fraction"] <= 0.01)
    assert figures["late_threshold_ms"] == 1.0  # a tenth of a 6.7 ms gap is less than 1 ms


def test_lateness_is_judged_against_the_gap_between_sends() -> None:
    assert late_threshold_s(None) == late_threshold_s(0.0) == 1e-3  # closed loop: nothing is due
    assert late_threshold_s(300) == 1e-3
    assert late_threshold_s(10) == pytest.approx(0.01)
    assert late_threshold_s(0.5) == pytest.approx(0.2)


def test_a_config_says_which_loop_it_uses() -> None:
    closed = Config(ServerConfig(builtin("mnist"), 1, 1.0, 1000), ClientConfig(threads=4, file_size=1, requests=10))
    opened = Config(closed.server, ClientConfig(threads=4, file_size=1, requests=10, rate_rps=50.0, arrival="poisson"))
    assert "4 threads" in closed.describe() and "50 req/s poisson" in opened.describe()


@pytest.mark.slow
@pytest.mark.usefixtures("cgroup_driver")
def test_an_open_loop_study_searches_the_offered_rate(project: Path) -> None:
    space = SPACE.replace("threads:   {low: 1, high: 4}", "rate_rps:  {low: 50, high: 200, log: true}")
    write_study(project, "offered", space=space, trials=2, enqueue="[{replicas: 1, cpus: 1.0, rate_rps: 100}]")
    done = optdse(project, "study", "offered")
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="offered", storage=f"sqlite:///{project}/results/optdse.db")
    first, second = study.trials
    assert first.params["rate_rps"] == 100 and "threads" not in first.params
    for trial in (first, second):
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_message")
        assert trial.user_attrs["loop"].startswith(f"open loop, {trial.params['rate_rps']:g} req/s constant")
        assert trial.user_attrs["offered_rps"] == trial.params["rate_rps"]
    assert optdse(project, "export", "offered", "--pareto", "front.csv").returncode == 0
    columns = pd.read_csv(project / "front.csv").columns
    assert "rate_rps" in columns and "threads" not in columns


# --- the stability rule, on real runs ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("cgroup_driver")
def test_measure_by_default_runs_until_its_last_three_windows_agree(project: Path) -> None:
    done = optdse(project, "measure", "--threads", "2", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["stop_rule"] == "until 3 windows of 2 s agree within 10% (at most 30 s)"
    windows = figures["windows"]
    assert len(windows) >= 3 and windows[0]["start_s"] == pytest.approx(0.5, abs=1e-3)  # after the warm-up
    assert all(a["end_s"] == pytest.approx(b["start_s"]) for a, b in zip(windows, windows[1:]))
    kept = windows[-3:]  # the figures are the last three windows'
    assert (figures["window_start_s"], figures["window_end_s"]) == (pytest.approx(kept[0]["start_s"], abs=1e-3),
                                                                     pytest.approx(kept[-1]["end_s"], abs=1e-3))
    assert figures["requests_in_window"] == sum(w["answered"] + w["errors"] for w in kept)
    if figures["stable"]:  # it stopped at the first three that agreed
        spreads = [max(w[k] for w in kept) / min(w[k] for w in kept) - 1 for k in ("throughput_rps", "art_ms")]
        assert max(spreads) <= 0.1 and figures["stability_spread"] == pytest.approx(max(spreads), abs=0.01)
        assert figures["load_s"] < windows[-1]["end_s"] + 1.0
    else:  # this machine was too noisy for 30 s: it says so
        assert windows[-1]["end_s"] <= 30 and any("not stable" in w for w in figures["warnings"])
    assert LatencyHistogram.decode(figures["latency_histogram"]).count == sum(w["answered"] for w in kept)


@pytest.mark.slow
def test_a_measurement_that_never_agrees_is_recorded_as_not_stable(local: LocalBackend) -> None:
    never = StabilityRule(window_s=1.0, windows=3, tolerance=1e-9, warmup_s=0.25, max_s=3.5)
    config = Config(ServerConfig(builtin("mnist"), 1, 1.0, 1000),
                    ClientConfig(threads=2, file_size=1, stability=never))
    result = measure(local, config)
    assert not result.stable and result.stop_rule.startswith("until 3 windows of 1 s agree")
    assert [round(w["end_s"] - w["start_s"], 3) for w in result.windows] == [1.0, 1.0, 1.0]  # all inside 3.5 s
    assert any(w.startswith("not stable: the load ran its 3.5 s") for w in result.warnings)
    assert 3.5 <= result.load_s < 5.0 and result.window_s == pytest.approx(3.0)


@pytest.mark.slow
@pytest.mark.usefixtures("cgroup_driver")
def test_a_study_without_a_request_count_measures_each_trial_by_the_stability_rule(project: Path) -> None:
    write_study(project, "steady", trials=2, requests=None,
                stability="{window_s: 0.5, windows: 3, tolerance: 0.2, warmup_s: 0.25, max_s: 6}")
    done = optdse(project, "study", "steady")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "window is only" not in done.stdout + done.stderr
    study = optuna.load_study(study_name="steady", storage=f"sqlite:///{project}/results/optdse.db")
    for trial in study.trials:
        attrs = trial.user_attrs
        assert trial.state == optuna.trial.TrialState.COMPLETE, attrs.get("fail_message")
        assert attrs["stop_rule"] == "until 3 windows of 0.5 s agree within 20% (at most 6 s)"
        assert len(attrs["windows"]) >= 3 and attrs["window_s"] >= 1.5 - 1e-6
        histogram = LatencyHistogram.decode(attrs["latency_histogram"])
        assert histogram.count == sum(w["answered"] for w in attrs["windows"][-3:])
        assert histogram.percentile_ms(99) == attrs["p99_ms"]
