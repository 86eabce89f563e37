"""Shared fixtures: one exported MNIST model and real optdse-serve processes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.run_shared import run_lock

if TYPE_CHECKING:  # tests.serving_process imports TensorFlow: only the tests that start servers pay for it
    from tests.serving_process import ServerProcess

#: Which real-system tests must run one after another, when pytest-xdist runs the suite on
#: two workers (`-n 2 --dist loadgroup`, .ci/run). A group runs whole on one worker; the
#: other worker meanwhile takes the rest, which only waits or computes.
#: - measuring: everything that takes this host's measuring lock (studies, grids, workers: a
#:   second one at a time is refused) or whose assertions compare measured times, which
#:   another measurement on the same two cores would falsify.
#: - docker: the host engine's Swarm and containers, which these tests make and remove.
#: - bed: the three-engine Swarm of tests/multinode.py, made once per module.
XDIST_GROUPS = {
    "measuring": ("test_study", "test_grid", "test_workers", "test_chaos", "test_open_loop", "test_report",
                  "test_network", "test_measure", "test_cgroups", "test_batching",
                  "test_signals::test_study_", "test_signals::test_grid_", "test_signals::test_worker_",
                  "test_user_model::test_optdse_study_", "test_models::test_response_time_",
                  "test_models::test_the_nmt_study_"),
    "docker": ("test_backends", "test_swarm_nodes", "test_compose"),
    "bed": ("test_multinode",),
}


def xdist_group(item: pytest.Item) -> str | None:
    """The group of XDIST_GROUPS a test belongs to: by its module, or by its module and the
    start of its name."""
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    for group, members in XDIST_GROUPS.items():
        for member in members:
            name, _, prefix = member.partition("::")
            if name == module and item.name.startswith(prefix):
                return group
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each real-system test with its group of XDIST_GROUPS (the fast layer runs anywhere)."""
    for item in items:
        group = xdist_group(item)
        if group and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The base path of model NAME, exported through the real CLI (as a user makes it) once
    per test run, whichever worker asks first (Inception's export takes tens of seconds)."""
    from tests.serving_process import export_model

    def base_path(name: str) -> Path:
        with run_lock(tmp_path_factory, f"export-{name}") as directory:
            base, done = directory / "models" / name, directory / "models" / f"{name}.done"
            if not done.exists():
                shutil.rmtree(base, ignore_errors=True)  # what a failed export left
                result = export_model(name, base)
                assert result.returncode == 0, result.stderr
                done.touch()
        return base

    return base_path


@pytest.fixture(scope="session")
def mnist_base_path(exported_model: Callable[[str], Path]) -> Path:
    return exported_model("mnist")


@pytest.fixture(scope="session")
def server(mnist_base_path: Path) -> Iterator[ServerProcess]:
    """An MNIST server with REST on, and a 1 MiB request limit for the oversize tests."""
    from tests.serving_process import ServerProcess

    process = ServerProcess(mnist_base_path, "mnist", True, "--max_request_bytes=1048576")
    try:
        process.wait_available()
        yield process
    finally:
        assert process.stop() == 0, process.log()
