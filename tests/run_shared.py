"""What the pytest-xdist workers of one test run share: a directory, and locks in it, so a
session fixture's costly work (a model export, a Swarm) is done once per run, not per worker."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test run that every pytest-xdist worker shares (each worker's own
    base temp, popen-gwN, lies inside it); without xdist, the session's base temp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def run_lock(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """Hold the run-wide lock `name` (an flock, so xdist workers take turns); yields the run directory."""
    directory = run_directory(tmp_path_factory)
    with open(directory / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory


__all__ = ["run_directory", "run_lock"]
