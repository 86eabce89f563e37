"""`optdse measure` and the seed's findings, on real replicas measured side by side in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optdse.config import ClientConfig, Config, ServerConfig
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.local import LocalBackend
from optdse.measurement import Measurement
from optdse.models import builtin
from optdse.objective import measure
from tests.optdse_tests.conftest import optdse

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

JSON_KEYS = {"art_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_rps", "errors", "acu_cores",
             "client_cpu_cores", "mem_peak_mb", "energy_j", "energy_method", "energy_is_estimate", "timeseries"}


def test_measure_json_reports_every_figure(project: Path, cgroup_driver: CgroupDriver) -> None:
    done = optdse(project, "measure", "--model", "mnist", "--threads", "4", "--file-size", "8", "--replicas", "1",
                  "--cpus", "0.5", "--memory", "1024", "--requests", "400", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert JSON_KEYS <= set(figures)
    assert figures["requests_sent"] == 400 and figures["errors"] == 0
    assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert 0 < figures["acu_cores"] <= 0.5 * (1 + 0.2 / figures["window_s"]) * 1.15  # the quota holds
    assert 0 < figures["mem_peak_mb"] <= 1024
    assert figures["energy_is_estimate"] is True and figures["energy_method"].startswith("estimate")
    assert figures["accounting"] == f"cgroup v{cgroup_driver.version}" and figures["limits_enforced"]
    buckets = figures["timeseries"]
    assert sum(row["requests"] for row in buckets) == 400 and 1 < len(buckets) <= 40
    inside = [row["t"] for row in buckets if row["in_window"]]
    assert inside and figures["window_start_s"] < figures["window_end_s"]
    assert min(inside) <= figures["window_start_s"] and max(inside) < figures["window_end_s"]
    assert not list((project / "state").glob("*/replica-*.json")), "a replica record outlived the command"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--cpus", "0", "--cpus: must be between 0.01 and 64"),
    ("--duration", "0", "--duration: must be a number > 0"),
    ("--model", "resnet", "--model: resnet: not a built-in model (mnist, inception, nmt, deepspeech) and no such folder"),
    ("--rate", "0", "--rate: must be a number > 0"),
    ("--arrival", "bursty", "--arrival: invalid choice: 'bursty'"),
])
def test_measure_rejects_a_bad_value_with_exit_2(project: Path, option: str, value: str, message: str) -> None:
    done = optdse(project, "measure", option, value)
    assert done.returncode == 2 and message in done.stderr


def _art(backend: LocalBackend, replicas: int, cpus: float, threads: int, requests: int = 600) -> Measurement:
    config = Config(ServerConfig(builtin("mnist"), replicas, cpus, 1000), ClientConfig(threads, 8, requests))
    return measure(backend, config)


def test_the_seed_findings_hold(local: LocalBackend) -> None:
    """ART grows with concurrency, grows as CPU shrinks, falls as replicas are added; ACU
    follows the quota. Ratios of measurements taken one after another in this run."""
    one_thread = _art(local, replicas=1, cpus=0.5, threads=1)
    many_threads = _art(local, replicas=1, cpus=0.5, threads=16)
    assert many_threads.art_ms > 2 * one_thread.art_ms, (one_thread.art_ms, many_threads.art_ms)

    full_core = _art(local, replicas=1, cpus=1.0, threads=8)
    fifth_core = _art(local, replicas=1, cpus=0.2, threads=8)
    assert fifth_core.art_ms > 1.5 * full_core.art_ms, (full_core.art_ms, fifth_core.art_ms)
    assert fifth_core.acu_cores <= 0.2 * 1.15 < full_core.acu_cores

    three_replicas = _art(local, replicas=3, cpus=0.2, threads=8)
    assert three_replicas.art_ms < fifth_core.art_ms / 1.5, (fifth_core.art_ms, three_replicas.art_ms)
    assert three_replicas.acu_cores > 2 * fifth_core.acu_cores


def test_without_cgroups_it_says_so_and_still_measures(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTDSE_NO_CGROUPS", "1")  # as on a machine where cgroups are read-only
    done = optdse(project, "measure", "--threads", "2", "--requests", "200", "--json")
    assert done.returncode == 0, done.stderr
    assert "replicas run WITHOUT CPU or memory limits" in done.stderr
    figures = json.loads(done.stdout)
    assert figures["limits_enforced"] is False and figures["accounting"] == "psutil"
    assert figures["acu_cores"] > 0 and figures["mem_peak_mb"] > 100  # psutil saw the TF process


def test_limits_larger_than_the_host_get_a_warning_and_still_run(project: Path, cgroup_driver: CgroupDriver) -> None:
    done = optdse(project, "measure", "--cpus", "50", "--memory", "1000000", "--requests", "100", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["requests_sent"] == 100
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, done.stderr
    assert "--cpus 50 is more than this host's" in warnings[0] and "--memory 1000000 MB" in warnings[1]
