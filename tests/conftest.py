"""Shared fixtures: one exported MNIST model and real optdse-serve processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # tests.serving_process imports TensorFlow: only the tests that start servers pay for it
    from tests.serving_process import ServerProcess


@pytest.fixture(scope="session")
def mnist_base_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model exported through the real CLI, as a user would make it."""
    from tests.serving_process import export_model

    base = tmp_path_factory.mktemp("models") / "mnist"
    result = export_model("mnist", base)
    assert result.returncode == 0, result.stderr
    return base


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory, mnist_base_path: Path) -> Callable[[str], Path]:
    """The base path of model NAME, exported through the real CLI once per session."""
    from tests.serving_process import export_model

    paths = {"mnist": mnist_base_path}

    def base_path(name: str) -> Path:
        if name not in paths:
            base = tmp_path_factory.mktemp("models") / name
            result = export_model(name, base)
            assert result.returncode == 0, result.stderr
            paths[name] = base
        return paths[name]

    return base_path


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
