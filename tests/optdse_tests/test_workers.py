"""Workers sharing one study through a real PostgreSQL server: two workers finish it with no
trial lost or measured twice, a killed worker's trial is failed by its missing heartbeat and
measured again, and a second worker on one host is refused unless told to share it."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from optdse.deploy.base import free_port
from optdse.deploy.runs import Run, measuring_lock
from tests.optdse_tests.conftest import optdse, write_study
from tests.postgres import PostgresServer
from tests.serving_process import optdse_command

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cgroup_driver")]  # the real-system layer

OTHER_HOST = "optdse-test-host-a"


def start_worker(project: Path, name: str, url: str, *extra: str, hostname: str | None = None,
                 state_dir: Path | None = None) -> subprocess.Popen[str]:
    """`optdse worker` as its own process. With `hostname`, it runs in a UTS namespace of its
    own under that name, with its own state directory: to the study, another host."""
    command = [*optdse_command(), "worker", name, "--storage", url, "--heartbeat", "1", *extra]
    env = os.environ.copy()
    if hostname:
        # unshare execs the shell, which execs optdse: the pid we hold is the worker's.
        command = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *command]
        env["OPTDSE_STATE_DIR"] = str(state_dir)
    return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def wait_for_study(name: str, url: str, worker: subprocess.Popen[str], timeout: float = 120) -> optuna.Study:
    """The study `name` once `worker` has created it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return optuna.load_study(study_name=name, storage=url)
        except KeyError:
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[0]
            time.sleep(0.2)


def wait_for_trial_of(study: optuna.Study, pid: int, worker: subprocess.Popen[str], timeout: float = 240) -> None:
    """Until `pid` is measuring a trial (its configuration is recorded)."""
    deadline = time.monotonic() + timeout
    while not [t for t in study.get_trials(states=(TrialState.RUNNING,))
               if t.user_attrs.get("pid") == pid and "config" in t.user_attrs]:
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[0]
        time.sleep(0.1)


def test_two_workers_finish_one_study_and_a_killed_workers_trial_is_retried(
        project: Path, postgres: PostgresServer) -> None:
    url = postgres.new_database()
    write_study(project, "shared", trials=12, requests=150)  # enough that a still has trials when b starts
    other_state = project / "state-host-a"
    a = start_worker(project, "shared", url, hostname=OTHER_HOST, state_dir=other_state)
    study = wait_for_study("shared", url, a)  # a creates the study; b joins it
    b = start_worker(project, "shared", url)
    wait_for_trial_of(study, a.pid, a)
    wait_for_trial_of(study, b.pid, b)
    wait_for_trial_of(study, a.pid, a)  # a is measuring, now with b at work too
    a.kill()  # SIGKILL: no heartbeat, no record of why; its replicas are orphaned
    a.wait(10)
    out, _ = b.communicate(timeout=300)
    assert b.returncode == 0, out

    trials = study.get_trials()
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert len(lost) == 1, out
    assert lost[0].user_attrs["fail_reason"] == "abandoned"
    assert "sent no heartbeat" in lost[0].user_attrs["fail_message"] and OTHER_HOST in lost[0].user_attrs["fail_message"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == lost[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == lost[0].params
    assert retries[0].user_attrs["host"] == socket.gethostname()
    # The study's 12 trials, all complete; the lost one is the only extra trial, none waits.
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 12 and len(trials) == 13
    # The study file's one start point was enqueued once, by the worker that created the study.
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs and "retry_of" not in t.user_attrs]
    assert len(enqueued) == 1
    assert {t.user_attrs["host"] for t in trials} == {OTHER_HOST, socket.gethostname()}
    assert f"trial {lost[0].number:>3} lost: its worker (pid {a.pid} on host {OTHER_HOST}) sent no heartbeat" in out

    # What a left behind: its replicas, stopped by `optdse clean` from its state directory.
    orphans = [json.loads(p.read_text())["pid"] for p in other_state.glob("*/replica-*.json")]
    assert orphans and all(psutil.pid_exists(pid) for pid in orphans)
    cleaned = subprocess.run([*optdse_command(), "clean"], cwd=project, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OPTDSE_STATE_DIR": str(other_state)}, check=False)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not any(psutil.pid_exists(pid) for pid in orphans)
    assert not list(other_state.glob("*-*"))

    # The shared study is read from the database like any other: export (with each trial's
    # host) and optuna-dashboard.
    exported = optdse(project, "export", "shared", "--storage", url, "--pareto", "front.csv")
    assert exported.returncode == 0, exported.stderr
    with (project / "front.csv").open() as csv_file:
        front = list(csv.DictReader(csv_file))
    assert front and all(row["host"] in (OTHER_HOST, socket.gethostname()) for row in front)
    port = free_port()
    dashboard = subprocess.Popen([*optdse_command(), "dashboard", "shared", "--storage", url, "--port", str(port)],
                                 cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    (summary,) = json.load(answer)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and dashboard.poll() is None, dashboard.communicate()[0]
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}") as answer:
            assert len(json.load(answer)["trials"]) == 13
    finally:
        dashboard.send_signal(signal.SIGINT)
        dashboard.communicate(timeout=10)


def test_one_worker_per_host_unless_told_to_share(project: Path, postgres: PostgresServer) -> None:
    url = postgres.new_database()
    write_study(project, "crowded", trials=1, requests=100)
    with measuring_lock() as alone:  # this test process is "already running trials" on this host
        assert alone
        run = Run.start()  # with a live run, as a worker measuring has
        try:
            refused = optdse(project, "worker", "crowded", "--storage", url)
            assert refused.returncode == 1
            assert f"optdse process {os.getpid()} is already running trials on this host" in refused.stderr
            assert "--share-host" in refused.stderr and "Traceback" not in refused.stderr
            # The lock is the host's, not the state directory's: another user's worker is refused too.
            elsewhere = subprocess.run([*optdse_command(), "worker", "crowded", "--storage", url], cwd=project,
                                       capture_output=True, text=True, timeout=120, check=False,
                                       env={**os.environ, "OPTDSE_STATE_DIR": str(project / "another-user")})
            assert elsewhere.returncode == 1 and "already running trials on this host" in elsewhere.stderr
            shared = optdse(project, "worker", "crowded", "--storage", url, "--share-host")
        finally:
            run.finish()
    assert shared.returncode == 0, shared.stdout + shared.stderr
    assert "concurrent trials share the CPUs" in shared.stderr
    (trial,) = optuna.load_study(study_name="crowded", storage=url).trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["host_shared_with"] == [os.getpid()]


def test_four_workers_started_at_once_on_an_empty_database_share_one_study(
        project: Path, postgres: PostgresServer) -> None:
    """All four create the storage's tables at the same moment; one creates the study and
    enqueues its start point; together they finish it, each trial measured once."""
    url = postgres.new_database()
    write_study(project, "crowd", trials=6, requests=100)
    workers = [start_worker(project, "crowd", url, "--share-host") for _ in range(4)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
        assert "cannot open it" not in output and "Traceback" not in output
    trials = optuna.load_study(study_name="crowd", storage=url).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    # Workers asking at the same instant for the last trials may overshoot by one each.
    assert 6 <= len(trials) <= 6 + len(workers) - 1
    assert len({t.number for t in trials}) == len(trials)
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs]
    assert len(enqueued) == 1 and enqueued[0].params["replicas"] == 1
    assert len({t.user_attrs["pid"] for t in trials}) >= 2  # the work was shared


def test_a_worker_rides_out_a_restart_of_its_database(project: Path, postgres: PostgresServer) -> None:
    """PostgreSQL stops (fast shutdown: connections cut) while a trial is measured and comes
    back 5 s later: the worker's heartbeats and writes wait for it, and the study completes."""
    url = postgres.new_database()
    write_study(project, "outage", trials=3, requests=400)
    worker = start_worker(project, "outage", url)
    study = wait_for_study("outage", url, worker)
    wait_for_trial_of(study, worker.pid, worker)
    postgres.restart(down_s=5)
    out = worker.communicate(timeout=300)[0]
    assert worker.returncode == 0, out
    assert "database is unreachable" in out
    trials = optuna.load_study(study_name="outage", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, out


def test_a_worker_needs_a_storage_and_hides_its_password(project: Path) -> None:
    write_study(project, "nowhere")
    missing = optdse(project, "worker", "nowhere")
    assert missing.returncode == 2 and "--storage" in missing.stderr
    unreachable = optdse(project, "worker", "nowhere", "--storage",
                         "postgresql+psycopg://someone:s3cret@127.0.0.1:1/optdse")
    assert unreachable.returncode == 2 and "cannot open it" in unreachable.stderr
    assert "s3cret" not in unreachable.stderr and "Traceback" not in unreachable.stderr


def test_sigint_to_a_worker_waiting_for_others_leaves_the_study_as_it_was(project: Path, postgres: PostgresServer) -> None:
    """A worker whose missing trials are all being measured elsewhere waits for them."""
    url = postgres.new_database()
    write_study(project, "waiting", trials=1, requests=100)
    study = optuna.create_study(study_name="waiting", storage=url, directions=["minimize", "minimize"])
    running = study.ask()  # a trial "measured by another worker" that sends no heartbeat
    running.set_user_attr("host", "elsewhere")
    worker = start_worker(project, "waiting", url)
    deadline = time.monotonic() + 120
    assert worker.stdout is not None
    seen = ""
    while "waiting for 1 trial(s) of other workers" not in seen:
        assert worker.poll() is None and time.monotonic() < deadline, seen
        seen += worker.stdout.read(1)
    worker.send_signal(signal.SIGINT)
    rest = worker.communicate(timeout=60)[0]
    assert worker.returncode == 130, seen + rest
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
