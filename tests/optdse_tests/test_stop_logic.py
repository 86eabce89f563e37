"""Pure logic behind stopping and the rough edges: optdse.signals (held signals, exit codes),
the Pareto table's "N of M shown", and warnings for limits larger than this host. The real
commands stopping are in test_signals.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import optuna
import psutil
import pytest
from rich.console import Console

from optdse import signals
from optdse.deploy.base import beyond_host
from optdse.progress import StudyProgress


@pytest.fixture
def installed() -> Iterator[None]:
    """optdse's handlers for this test only; pytest's own are put back after it."""
    before = {signum: signal.getsignal(signum) for signum in signals.STOP_SIGNALS}
    signals.install()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_a_signal_raises_interrupted_with_its_exit_code(installed: None) -> None:
    with pytest.raises(signals.Interrupted) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.signum == signal.SIGTERM and isinstance(caught.value, KeyboardInterrupt)
    assert signals.exit_code(caught.value) == 143 and signals.signal_name(caught.value) == "SIGTERM"
    assert signals.exit_code(KeyboardInterrupt()) == 130  # Python's own Ctrl-C


def test_a_signal_inside_atomic_waits_for_its_end(installed: None) -> None:
    steps = []
    with pytest.raises(signals.Interrupted) as caught:
        with signals.atomic():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("after the signal")  # the step goes on to its end
            with signals.atomic():  # nested: held until the outermost ends
                steps.append("nested")
            steps.append("last")
    assert steps == ["after the signal", "nested", "last"] and caught.value.signum == signal.SIGINT
    with signals.atomic():  # nothing held any more
        steps.append("again")


def test_a_second_signal_inside_atomic_does_not_wait(installed: None) -> None:
    steps = []
    with pytest.raises(signals.Interrupted) as caught:
        with signals.atomic():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("held")
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("never")
    assert steps == ["held"] and caught.value.signum == signal.SIGTERM
    with signals.atomic():  # the first one was dropped with the second: nothing raises here
        pass


def _study_with_front(size: int) -> optuna.Study:
    """A study whose `size` trials are all Pareto-optimal (ART up, ACU down)."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    for i in range(size):
        study.add_trial(optuna.trial.create_trial(
            values=[1.0 + i, 1.0 - i / size], params={"threads": i + 1},
            distributions={"threads": optuna.distributions.IntDistribution(1, 64)},
            user_attrs={"art_ms": 1.0 + i, "acu_cores": 1.0 - i / size}))
    return study


def _printed(study: optuna.Study) -> str:
    console = Console(width=200, record=True)
    console.print(StudyProgress.pareto_table(study))
    return console.export_text()


def test_a_pareto_table_that_shows_part_of_the_front_says_so() -> None:
    part = _printed(_study_with_front(12))
    assert "Pareto front (12 trials" in part and "10 of 12 shown; `optdse export` has all" in part
    whole = _printed(_study_with_front(3))
    assert "shown" not in whole


def test_limits_larger_than_this_host_warn_in_one_line_each() -> None:
    cores, memory_mb = psutil.cpu_count(), psutil.virtual_memory().total / 2**20
    assert beyond_host(cores, memory_mb * 0.99) == []
    cpus, memory = beyond_host(cores + 48, memory_mb * 2)
    assert cpus.startswith(f"--cpus {cores + 48} is more than this host's {cores} cores")
    assert memory.startswith(f"--memory {memory_mb * 2:.0f} MB is more than this host's {memory_mb:.0f} MB")
    assert all("\n" not in warning and "swarm" in warning for warning in (cpus, memory))


def test_the_pareto_table_shows_the_study_s_own_objectives_first() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_metric_names(["p99_ms", "cost_cores"])
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(
            values=[5.0 - i, 1.0 + i], params={"threads": i + 1},
            distributions={"threads": optuna.distributions.IntDistribution(1, 64)},
            user_attrs={"p99_ms": 5.0 - i, "cost_cores": 1.0 + i, "art_ms": 1.0, "acu_cores": 0.5}))
    header = next(line for line in _printed(study).splitlines() if "trial" in line and "threads" in line)
    assert [word for word in header.replace("┃", " ").split()] == ["trial", "threads", "p99_ms", "cost_cores",
                                                                    "art_ms", "acu_cores"]
