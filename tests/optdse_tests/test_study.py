"""Real studies through the CLI: trials recorded with every figure, resume, export, OOM
recorded as failure, Ctrl-C and SIGKILL leaving nothing behind, optuna-dashboard reading it."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
from optuna.trial import TrialState

from optdse.histograms import LatencyHistogram
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.base import free_port
from tests.optdse_tests.conftest import SPACE, optdse, require_docker, write_study
from tests.serving_process import optdse_command

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cgroup_driver")]  # the real-system layer


def storage(project: Path) -> str:
    return f"sqlite:///{project / 'results' / 'optdse.db'}"


def load(project: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(project))


def test_a_study_runs_records_everything_resumes_and_exports(project: Path) -> None:
    write_study(project, "tiny")
    done = optdse(project, "study", "tiny")
    assert done.returncode == 0, done.stderr
    assert "Pareto front" in done.stderr
    study = load(project, "tiny")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    first = study.trials[0]
    assert {k: first.params[k] for k in ("replicas", "cpus", "file_size")} == {"replicas": 1, "cpus": 1.0,
                                                                             "file_size": 1}
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.values == [attrs["art_ms"], attrs["acu_cores"]]
        assert attrs["requests_sent"] == 200 and attrs["fixed_memory_mb"] == 1000
        # The quota holds, give or take one 100 ms CFS period's burst at each end of a short window.
        quota = trial.params["replicas"] * trial.params["cpus"]
        assert attrs["acu_cores"] <= quota * (1 + 0.2 / attrs["window_s"]) * 1.15, attrs["window_s"]
        assert trial.system_attrs["constraints"] == [pytest.approx(-0.01)]  # what optuna-dashboard reads
    assert study.metric_names == ["art_ms", "acu_cores"]

    again = optdse(project, "study", "tiny", "--trials", "4", "--requests", "100")
    assert again.returncode == 0, again.stderr
    assert "tiny: 3 of 4 trials already finished" in again.stderr
    study = load(project, "tiny")
    assert len(study.trials) == 4 and study.trials[3].user_attrs["requests_sent"] == 100

    exported = optdse(project, "export", "tiny", "--pareto", "front.csv")
    assert exported.returncode == 0, exported.stderr
    front = pd.read_csv(project / "front.csv")
    assert sorted(front["trial"]) == sorted(t.number for t in study.best_trials)
    assert list(front.columns) == ["trial", "threads", "file_size", "replicas", "cpus", "memory_mb", "art_ms",
                                   "acu_cores", "p95_ms", "p99_ms", "p999_ms", "throughput_rps", "energy_j",
                                   "energy_is_estimate", "host", "model", "file_size_unit", "rows_per_request",
                                   "request_bytes", "loop", "stable"]
    assert (front["model"] == "mnist").all() and (front["file_size_unit"] == "images per request").all()
    assert (front["host"] == socket.gethostname()).all()
    assert (front["memory_mb"] == 1000).all() and front["art_ms"].is_monotonic_increasing


def test_optdse_dashboard_shows_the_study_its_front_notes_and_hypervolume(project: Path) -> None:
    write_study(project, "tiny", trials=2, enqueue="[]")
    assert optdse(project, "study", "tiny").returncode == 0
    port = free_port()
    dashboard = subprocess.Popen([*optdse_command(), "dashboard", "tiny", "--port", str(port)], cwd=project,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.load(answer)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and dashboard.poll() is None, dashboard.communicate()
                time.sleep(0.2)
        (summary,) = [s for s in studies if s["study_name"] == "tiny"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}") as answer:
            detail = json.load(answer)
        assert len(detail["trials"]) == 2
        assert detail["best_trials"] and detail["objective_names"] == ["art_ms", "acu_cores"]
        assert all(t["constraints"] == [pytest.approx(-0.01)] for t in detail["trials"])  # shown as feasible
        for trial in detail["trials"]:  # each trial's figures, as its note
            art = next(a["value"] for a in trial["user_attrs"] if a["key"] == "art_ms")
            assert f"| ART | {float(art):.3f} ms |" in trial["note"]["body"]
        (plot,) = detail["plotly_graph_objects"]
        assert plot["id"] == "optdse-hypervolume-history" and "Hypervolume" in plot["graph_object"]
    finally:
        dashboard.send_signal(signal.SIGINT)  # as Ctrl-C would
        out, _ = dashboard.communicate(timeout=10)
    assert dashboard.returncode == 0 and f"http://127.0.0.1:{port}/dashboard/" in out
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = optdse(project, "dashboard", "tiny", "--port", str(holder.getsockname()[1]))
    assert taken.returncode == 2 and "cannot listen on 127.0.0.1" in taken.stderr


def test_too_little_memory_fails_the_trial_with_its_reason_and_the_study_goes_on(project: Path) -> None:
    write_study(project, "starved", space=SPACE.replace("{value: 1000}", "{value: 64}"), trials=2, enqueue="[]")
    done = optdse(project, "study", "starved")
    assert done.returncode == 0, done.stderr
    trials = load(project, "starved").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert {t.user_attrs["fail_reason"] for t in trials} == {"OOM"}
    assert "64 MB memory limit" in trials[0].user_attrs["fail_message"]
    assert not list((project / "state").glob("*")), "state left behind"


def _start_study(project: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    """A study in its own session, as a terminal would run it; returns once a trial finished
    (so replicas are running and recorded) and the next one is running."""
    process = subprocess.Popen([*optdse_command(), "study", name, *extra], cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 180
    for line in process.stdout:
        if line.startswith("trial ") or time.monotonic() > deadline:
            break
    stored = load(project, name)  # once: a load_study per poll would cost ~50 ms of CPU each time
    while not [t for t in stored.get_trials(states=(TrialState.RUNNING,))
               if "config" in t.user_attrs]:  # the next trial is being measured
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    return process


def _recorded_replicas(project: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in (project / "state").glob("*/replica-*.json")]


def test_ctrl_c_records_the_trial_and_leaves_nothing_running(project: Path, cgroup_driver: CgroupDriver) -> None:
    write_study(project, "interrupted", trials=20)
    process = _start_study(project, "interrupted")
    replicas = _recorded_replicas(project)
    assert replicas
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group we started
    assert process.wait(60) == 130
    assert not any(psutil.pid_exists(pid) for pid in replicas)
    assert not list((project / "state").glob("*"))
    assert not [d for tree in cgroup_driver.trees() for d in (tree / "optdse").glob(f"{process.pid}-*")]
    states = [t.state for t in load(project, "interrupted").trials]
    assert TrialState.RUNNING not in states
    failed = [t for t in load(project, "interrupted").trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in failed] == ["interrupted"]


def test_a_killed_run_is_cleaned_up_and_resumed(project: Path, cgroup_driver: CgroupDriver) -> None:
    write_study(project, "killed", trials=20)
    process = _start_study(project, "killed")
    replicas = _recorded_replicas(project)
    process.kill()  # SIGKILL: no finally runs; the replicas are orphaned
    process.wait(10)
    assert all(psutil.pid_exists(pid) for pid in replicas)

    cleaned = optdse(project, "clean")
    assert cleaned.returncode == 0 and f"stopped processes {sorted(replicas)}" in cleaned.stdout, cleaned.stdout
    assert not any(psutil.pid_exists(pid) for pid in replicas)
    assert not [d for tree in cgroup_driver.trees() for d in (tree / "optdse").glob(f"{process.pid}-*")]
    assert "nothing to clean" in optdse(project, "clean").stdout

    finished_before = len(load(project, "killed").get_trials(states=(TrialState.COMPLETE,)))
    resumed = optdse(project, "study", "killed", "--trials", str(finished_before + 2), "--requests", "100")
    assert resumed.returncode == 0, resumed.stderr
    assert "left RUNNING by a worker that is gone; marked FAIL (abandoned) and enqueued again" in resumed.stderr
    trials = load(project, "killed").trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    (lost,) = [t for t in trials if t.state == TrialState.FAIL]
    assert lost.user_attrs["fail_reason"] == "abandoned" and f"pid {process.pid} on this host" in lost.user_attrs["fail_message"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]  # measured again, once
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params


def test_a_docker_study_runs_and_a_killed_one_is_cleaned(project: Path) -> None:
    require_docker()
    import docker

    client = docker.from_env(version="auto")
    write_study(project, "boxed", trials=2)
    done = optdse(project, "study", "boxed", "--backend", "docker")
    assert done.returncode == 0, done.stderr
    trials = load(project, "boxed").get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and {t.user_attrs["accounting"] for t in trials} == {"docker cgroup"}

    process = _start_study(project, "boxed", "--backend", "docker", "--trials", "20")
    process.kill()
    process.wait(10)
    runs = {c.labels["optdse.run"] for c in client.containers.list(all=True, filters={"label": "optdse.run"})}
    assert any(run.startswith(f"{process.pid}-") for run in runs), runs
    cleaned = optdse(project, "clean")
    assert cleaned.returncode == 0 and "optdse-" in cleaned.stdout, cleaned.stdout
    left = [c.name for c in client.containers.list(all=True, filters={"label": "optdse.run"})
            if c.labels["optdse.run"].startswith(f"{process.pid}-")]
    assert left == []


@pytest.mark.usefixtures("swarm")
def test_a_swarm_study_runs_and_leaves_no_service(project: Path) -> None:
    import docker

    write_study(project, "swarmed", trials=2)
    done = optdse(project, "study", "swarmed", "--backend", "swarm")
    assert done.returncode == 0, done.stderr
    trials = load(project, "swarmed").get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and {t.user_attrs["backend"] for t in trials} == {"swarm"}
    client = docker.from_env(version="auto")
    (pid,) = {t.user_attrs["pid"] for t in trials}  # the study's run ids start with its pid
    assert [s.name for s in client.services.list(filters={"label": "optdse.run"})
            if s.attrs["Spec"]["Labels"]["optdse.run"].startswith(f"{pid}-")] == []


def test_cost_objectives_are_what_the_deployment_reserves_and_each_request_burns(project: Path) -> None:
    """p99 against cost_cores: the objectives a study of an SLO and a bill would use."""
    write_study(project, "bill", trials=3, objectives="[{metric: p99_ms, direction: minimize}, "
                                                        "{metric: cost_cores, direction: minimize}]")
    run = optdse(project, "study", "bill")
    assert run.returncode == 0, run.stdout + run.stderr
    study = load(project, "bill")
    for trial in study.trials:
        attrs, params = trial.user_attrs, trial.params | {"cpus": trial.params.get("cpus", 1.0)}
        assert trial.state == TrialState.COMPLETE, attrs.get("fail_message")
        assert trial.values == [attrs["p99_ms"], attrs["cost_cores"]]
        assert attrs["cost_cores"] == pytest.approx(params["replicas"] * params["cpus"])
        assert attrs["cost_memory_mb"] == params["replicas"] * 1000
        answered = attrs["requests_in_window"] - attrs["errors"]
        assert attrs["cpu_ms_per_request"] == pytest.approx(attrs["replica_cpu_seconds"] * 1e3 / answered)
        assert attrs["energy_j_per_request"] == pytest.approx(attrs["energy_j"] / answered)
    exported = optdse(project, "export", "bill", "--pareto", "front.csv")
    assert exported.returncode == 0, exported.stderr
    assert "cost_cores" in pd.read_csv(project / "front.csv").columns  # an objective outside the usual figures


def test_a_trial_that_misses_the_slo_is_infeasible_everywhere_optuna_looks(project: Path, tmp_path: Path) -> None:
    """constraints: p99_ms <= 30. One replica at a full core answers one thread in a
    millisecond or two; at 0.2 CPU with 4 threads of 8 images the CFS quota stalls requests for
    ~80 ms, so its p99 misses the SLO: an infeasible trial for the samplers, the front, the
    dashboard, and the report names the other as the cheapest that met it."""
    write_study(project, "slo", trials=2, constraints="{p99_ms: 30}",
                enqueue="[{threads: 1, file_size: 1, replicas: 1, cpus: 1.0}, "
                        "{threads: 4, file_size: 8, replicas: 1, cpus: 0.2}]")
    run = optdse(project, "study", "slo")
    assert run.returncode == 0, run.stdout + run.stderr
    fast, throttled = load(project, "slo").trials
    assert fast.user_attrs["constraint_names"] == ["error_rate <= 0.01", "p99_ms <= 30"]
    assert fast.system_attrs["constraints"][1] == pytest.approx(fast.user_attrs["p99_ms"] / 30 - 1)
    assert fast.system_attrs["constraints"][1] < 0
    assert throttled.user_attrs["p99_ms"] > 30 and throttled.system_attrs["constraints"][1] > 0
    assert "misses p99_ms <= 30 (infeasible)" in run.stdout + run.stderr
    assert [t.number for t in load(project, "slo").best_trials] == [fast.number]
    output = tmp_path / "slo.html"
    assert optdse(project, "report", "slo", "--output", str(output)).returncode == 0
    page = output.read_text()
    assert (f"Cheapest configuration meeting the SLO (error_rate &lt;= 0.01, p99_ms &lt;= 30): trial {fast.number}"
            in page) and "1 of 2 measured trials met the SLO" in page


WORKLOAD_SPACE = """\
parameters:
  replicas:  {value: 1}
  cpus:      {low: 0.5, high: 1.0, step: 0.5}
  memory_mb: {value: 1000}
server:
  enable_batching: {choices: [0, 1]}
  max_batch_size: {value: 8}
"""


def test_each_configuration_carries_every_workload_scenario_and_the_worst_is_its_figure(project: Path) -> None:
    """workload: two open-loop scenarios; the space holds only knobs. Each trial measures both
    on one deployment and reports the worst of each figure; the batching parameter reaches the
    server only in the trial with batching on."""
    write_study(project, "ops", space=WORKLOAD_SPACE, trials=2, requests=150,
                workload="{file_size: 1, scenarios: [{name: light, rate_rps: 50}, {name: busy, rate_rps: 200}]}",
                enqueue="[{cpus: 1.0, enable_batching: 0}, {cpus: 1.0, enable_batching: 1}]")
    run = optdse(project, "study", "ops")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "worst of 2 scenarios" in run.stdout + run.stderr
    plain, batched = load(project, "ops").trials
    for trial in (plain, batched):
        attrs = trial.user_attrs
        assert trial.state == TrialState.COMPLETE, attrs.get("fail_message")
        light, busy = attrs["scenarios"]
        assert (light["name"], busy["name"], attrs["aggregate"]) == ("light", "busy", "worst")
        assert light["offered_rps"] == 50 and busy["offered_rps"] == 200
        assert attrs["art_ms"] == max(light["art_ms"], busy["art_ms"]) == trial.values[0]
        assert attrs["p99_ms"] == max(light["p99_ms"], busy["p99_ms"])
        assert attrs["throughput_rps"] == min(light["throughput_rps"], busy["throughput_rps"])
        assert attrs["requests_sent"] == 300 and "under 2 scenarios: light, busy" in attrs["config"]
    assert plain.params["enable_batching"] is False and "max_batch_size" not in plain.params
    assert "fixed_max_batch_size" not in plain.user_attrs and "--enable_batching" not in plain.user_attrs["server_command"]
    assert batched.params["enable_batching"] is True and batched.user_attrs["fixed_max_batch_size"] == 8
    assert batched.user_attrs["server_knobs"] == {"enable_batching": True, "max_batch_size": 8}
    assert "--enable_batching=true --batching_parameters_file=" in batched.user_attrs["server_command"]


def test_repeats_measure_each_configuration_several_times_and_report_the_noise(project: Path) -> None:
    """--repeats 3: the objectives are the means of three real measurements in a row; the
    trial keeps each one and their coefficients of variation; the study prints the median."""
    write_study(project, "noisy", trials=2)
    run = optdse(project, "study", "noisy", "--repeats", "3", "--requests", "150")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "repeatability: 2 trials measured 3 times in a row" in run.stdout + run.stderr
    for trial in load(project, "noisy").trials:
        attrs = trial.user_attrs
        assert attrs["repeats"] == 3 and len(attrs["art_ms_repeats"]) == 3
        assert trial.values[0] == pytest.approx(statistics.mean(attrs["art_ms_repeats"]))
        assert trial.values[1] == pytest.approx(statistics.mean(attrs["acu_cores_repeats"]))
        assert attrs["art_cv"] == pytest.approx(statistics.stdev(attrs["art_ms_repeats"]) / trial.values[0])
        assert attrs["requests_sent"] == 3 * 150  # counts add up over the repeats
        # Percentiles come from the three windows' histograms merged, not from averaged percentiles.
        merged = LatencyHistogram.decode(attrs["latency_histogram"])
        assert merged.count == attrs["requests_in_window"] - attrs["errors"]
        assert attrs["p99_ms"] == merged.percentile_ms(99) and attrs["p50_ms"] == merged.percentile_ms(50)


def test_a_new_study_starts_one_factor_at_a_time_from_the_enqueued_configuration(project: Path) -> None:
    """The default start (sampler.start: one-factor): the enqueued configuration, then each
    varied parameter over 4 values with the others held, before the sampler proposes."""
    write_study(project, "ofat", trials=4, sampler="{name: tpe, n_startup_trials: 2, seed: 1}")
    run = optdse(project, "study", "ofat", "--requests", "100")
    assert run.returncode == 0, run.stdout + run.stderr
    trials = load(project, "ofat").trials
    finished = [t.params for t in trials if t.state == TrialState.COMPLETE]
    assert finished[0] == {"replicas": 1, "cpus": 1.0, "file_size": 1, "threads": 1}  # open: its lowest value
    assert finished[1:] == [{"replicas": 1, "cpus": 1.0, "file_size": 1, "threads": t} for t in (2, 3, 4)]
    waiting = [t.params for t in trials if t.state == TrialState.WAITING]
    planned = [dict(t.system_attrs["fixed_params"]) for t in trials if t.state == TrialState.WAITING]
    assert waiting == [{}] * len(planned)  # the rest of the plan waits for the next run
    assert {"replicas": 2, "cpus": 1.0, "file_size": 1, "threads": 1} in planned
    assert {"replicas": 1, "cpus": 0.2, "file_size": 1, "threads": 1} in planned
