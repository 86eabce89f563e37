"""Each of the seed's models measured for real: response time grows with file size (the
seed's NMT finding, and what "file size" means for the others), and each model's study runs.

Sizes are measured alternately (small, large, small, large) in one run on one replica, and
compared by each size's fastest p50: a noisy neighbour only ever adds time, so the fastest
round is the one least disturbed (comparing the large file's fastest with the small file's
slowest let one disturbed small round fail the test: inception 64 px gave p50 92 and 156 ms
in one CI run on this shared machine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from optdse.config import ClientConfig, Config, ServerConfig
from optdse.deploy.cgroups import CgroupDriver
from optdse.deploy.local import LocalBackend
from optdse.models import builtin
from optdse.objective import measure
from tests.optdse_tests.conftest import optdse, require_docker

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

# model -> (small file, large file, the least ratio of their median response times)
SIZES = {
    "inception": (64, 4096, 1.5),   # JPEG edge: decoding and resizing a 16 MP photo comes on top
    "nmt": (8, 128, 4.0),           # tokens: decoding runs to twice the source length
    "deepspeech": (1, 8, 3.0),      # seconds of audio
}


@pytest.fixture(params=sorted(SIZES))
def model_backend(request: pytest.FixtureRequest, exported_model: Callable[[str], Path], cgroup_driver: CgroupDriver,
                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, LocalBackend]]:
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    backend = LocalBackend(exported_model(request.param), warn=pytest.fail)
    yield request.param, backend
    backend.close()


def test_response_time_grows_with_file_size(model_backend: tuple[str, LocalBackend]) -> None:
    model, backend = model_backend
    small, large, ratio = SIZES[model]
    p50 = {small: [], large: []}
    for file_size in (small, large, small, large):
        config = Config(ServerConfig(builtin(model), replicas=1, cpus=2.0, memory_mb=3000),
                        ClientConfig(threads=1, file_size=file_size, requests=40, warmup_fraction=0.2, duration_s=6))
        result = measure(backend, config)
        assert result.errors == 0 and result.requests_in_window >= 2, result
        p50[file_size].append(result.p50_ms)
    assert min(p50[large]) > ratio * min(p50[small]), p50


def test_a_slow_model_trial_ends_by_its_duration(model_backend: tuple[str, LocalBackend]) -> None:
    model, backend = model_backend
    config = Config(ServerConfig(builtin(model), replicas=1, cpus=0.5, memory_mb=3000),
                    ClientConfig(threads=2, file_size=SIZES[model][1], requests=100000, duration_s=3))
    result = measure(backend, config)
    assert 0 < result.requests_sent < 100000 and result.errors == 0
    sent_late = [row for row in result.timeseries if row["t"] >= 3.0 and row["requests"]]
    assert not sent_late, sent_late  # nothing is sent once the duration is up
    assert result.request_bytes > 0 and result.file_size_unit


@pytest.mark.parametrize("backend", ["local", "docker"])
def test_the_nmt_study_runs(backend: str, tmp_path: Path, exported_model: Callable[[str], Path],
                            cgroup_driver: CgroupDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped study file, as a user runs it (fewer trials, a shorter load)."""
    if backend == "docker":
        require_docker()
    (tmp_path / "results" / "models").mkdir(parents=True)
    (tmp_path / "results" / "models" / "nmt").symlink_to(exported_model("nmt"))
    monkeypatch.setenv("OPTDSE_STATE_DIR", str(tmp_path / "state"))
    done = optdse(tmp_path, "study", "nmt-pareto", "--trials", "2", "--duration", "3", "--backend", backend)
    assert done.returncode == 0, done.stderr
    stored = optuna.load_study(study_name="nmt-pareto", storage="sqlite:///" + str(tmp_path / "results" / "optdse.db"))
    trials = stored.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL))
    assert len(trials) == 2 and all(t.user_attrs["backend"] == backend for t in trials)  # the rest of the plan waits
    assert all(t.user_attrs["file_size_unit"] == "tokens in the source sentence" for t in trials
               if t.state == optuna.trial.TrialState.COMPLETE)
