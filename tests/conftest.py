"""Shared fixtures: one exported MNIST model and real optdse-serve processes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.run_shared import run_lock

if TYPE_CHECKING:  # tests.serving_process imports TensorFlow: only the tests that start servers pay for it
    from tests.serving_process import ServerProcess

#: Which real-system tests must run one after another when pytest-xdist runs the suite on
#: several workers (`-n` in pyproject.toml). A group is one unit of work, run whole by one
#: worker; the other workers meanwhile take the rest.
#: - studies: everything that takes this host's measuring lock (`optdse study`, `grid`,
#:   `worker`): a second one at a time is refused.
#: - timing: tests whose assertions compare measured times (file size, the seed's findings,
#:   delay, the open loop's tail, CPU quotas, batching). Two of them at once would measure
#:   each other; beside the other groups they compare rounds measured alternately under the
#:   same load, and the least disturbed round of each.
#: - docker: the host engine's Swarm and containers, which these tests make and remove.
#: - bed: the three-engine Swarm of tests/multinode.py, made once per module.
#: A member is a test module, or a module and the start of its tests' names; a test belongs
#: to the first group with a member that matches it.
XDIST_GROUPS = {
    "studies": ("test_study", "test_grid", "test_workers", "test_chaos", "test_report",
                "test_open_loop::test_an_open_loop_study_", "test_open_loop::test_a_study_",
                "test_signals::test_study_", "test_signals::test_grid_", "test_signals::test_worker_",
                "test_user_model::test_optdse_study_", "test_models::test_the_nmt_study_",
                "test_triton::test_a_triton_study_"),
    "timing": ("test_open_loop", "test_network", "test_measure", "test_cgroups", "test_batching",
               "test_models::test_response_time_"),
    "docker": ("test_backends", "test_swarm_nodes", "test_compose"),
    "bed": ("test_multinode",),
}


def xdist_group(nodeid: str) -> str | None:
    """The group of XDIST_GROUPS the test `nodeid` (path::[Class::]name) belongs to, if any."""
    path, *_, name = nodeid.split("::")
    module = Path(path).stem
    for group, members in XDIST_GROUPS.items():
        for member in members:
            member_module, _, prefix = member.partition("::")
            if member_module == module and name.startswith(prefix):
                return group
    return None


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduling by scope, each group of XDIST_GROUPS one scope and every other
    test a scope of its own. (Its own `--dist loadgroup` reads xdist_group marks through
    `item._nodeid`, which pytest 9 no longer has: the groups were split over the workers.)
    Scopes with more tests are handed out first, so the groups start at once, one per worker."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return GroupScheduling(config, log)


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
