"""Chaos: a study whose every trial kills one replica mid-load loses no trial record, reports
what clients saw (retries, errors), and leaves nothing running."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from optdse.deploy.cgroups import CgroupDriver
from optdse.network import NETNS_DIR
from tests.optdse_tests.conftest import optdse, write_study

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

# Two replicas every trial, so one survives the kill; a delayed link, so the relay runs too.
SPACE = """\
parameters:
  threads:   {low: 1, high: 4}
  file_size: {value: 1}
  replicas:  {value: 2}
  cpus:      {low: 0.3, high: 1.0, step: 0.1}
  memory_mb: {value: 1000}
network:
  delay_ms:  {low: 0, high: 4}
"""


def test_chaos_study_records_every_trial_and_leaves_nothing_running(project: Path,
                                                                    cgroup_driver: CgroupDriver) -> None:
    write_study(project, "chaos", SPACE, requests=100000, duration_s=1.5, retries=2,
                chaos="{kill_replica_after_s: 0.5}", enqueue="[{threads: 2, cpus: 1.0, delay_ms: 0}]")
    done = optdse(project, "study", "chaos", "--trials", "3")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="chaos", storage=f"sqlite:///{project}/results/optdse.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials), \
        [(t.state, t.user_attrs.get("fail_message")) for t in trials]
    for trial in trials:
        attrs = trial.user_attrs
        assert len(attrs["replicas_killed"]) == 1, attrs["replicas_killed"]
        assert attrs["retried_requests"] >= 1 and attrs["errors"] == 0  # failover hid the death from clients
    killed = [t.user_attrs["replicas_killed"][0] for t in trials]
    assert len(set(killed)) == 3, f"a killed replica was not replaced: {killed}"
    # Nothing left of the run: no record, cgroup, namespace, replica or relay process.
    run_prefix = f"{trials[0].user_attrs['pid']}-"
    assert not list((project / "state").glob("*/*.json"))
    assert not [p for tree in cgroup_driver.trees() for p in (tree / "optdse").glob(f"{run_prefix}*")]
    assert not list(NETNS_DIR.glob(f"optdse-{run_prefix}*"))
    assert not [p.pid for p in psutil.process_iter(["cmdline"])
                if str(project) in " ".join(p.info["cmdline"] or ()) or f'"parent": {run_prefix[:-1]}' in
                " ".join(p.info["cmdline"] or ())]


def test_without_retries_a_killed_replica_shows_as_errors(project: Path, cgroup_driver: CgroupDriver) -> None:
    done = optdse(project, "measure", "--replicas", "2", "--threads", "2", "--requests", "100000", "--duration",
                  "1.5", "--kill-replica-after", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["replicas_killed"] == ["replica-1"] and figures["retried_requests"] == 0
    assert figures["errors"] > 0 and set(figures["error_codes"]) == {"UNAVAILABLE"}, figures["error_codes"]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not re.findall(r"^optdse-\d+-\d+-", namespaces, re.MULTILINE)  # a run's (not the bed's, beside it)


def test_a_replica_oom_killed_under_load_is_reported_with_its_reason(project: Path,
                                                                     cgroup_driver: CgroupDriver) -> None:
    """An idle MNIST replica peaks near 190 MB; 4 threads of 2048-image requests take it past
    350 MB (both measured with 1000 MB), so a 260 MB limit holds at deploy and fails under load."""
    done = optdse(project, "measure", "--threads", "4", "--file-size", "2048", "--requests", "200",
                  "--memory", "260", "--json")
    assert done.returncode == 1, done.stdout
    assert "OOM: replica-0 was killed by its 260 MB memory limit" in done.stderr and "under load" in done.stderr
    assert not list((project / "state").glob("*/*.json"))


def test_trials_over_the_error_limit_are_infeasible_and_kept_off_the_front(project: Path,
                                                                           cgroup_driver: CgroupDriver) -> None:
    """Chaos without retries: a third or more of each trial's requests fail, over the 1% limit.
    The trials are COMPLETE (measured, not dropped) but infeasible for every reader: the
    constraint Optuna and optuna-dashboard read, and the exported front, which stays empty.
    RandomSampler, which takes no constraints itself, is the sampler here on purpose."""
    write_study(project, "lossy", SPACE, requests=100000, duration_s=1.2, trials=2,
                chaos="{kill_replica_after_s: 0.4}", sampler="{name: random, seed: 1, start: none}",
                enqueue="[{threads: 2, cpus: 1.0, delay_ms: 0}]")
    done = optdse(project, "study", "lossy")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="lossy", storage=f"sqlite:///{project}/results/optdse.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        assert trial.user_attrs["error_rate"] > 0.1 and trial.user_attrs["error_codes"].keys() == {"UNAVAILABLE"}
        assert trial.system_attrs["constraints"][0] > 0  # what optuna-dashboard shows as infeasible
    assert study.best_trials == []
    exported = optdse(project, "export", "lossy", "--pareto", "front.csv")
    assert exported.returncode == 0 and "wrote 0 Pareto-optimal trials" in exported.stdout
