"""Real control groups: the quota and the limit hold, accounting counts, OOM is reported."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from optdse.deploy.cgroups import Cgroup, CgroupDriver

pytestmark = pytest.mark.slow  # the real-system layer: real servers, replicas, containers or studies

BUSY = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass"
HOG = "x = bytearray(200 * 2**20)\nx[::4096] = b'1' * len(x[::4096])"  # touch every page


@pytest.fixture
def group(cgroup_driver: CgroupDriver) -> Iterator[Cgroup]:
    """A fresh group under optdse/test-<random>/, removed with its parent afterwards."""
    made = cgroup_driver.group(f"test-{uuid.uuid4().hex[:8]}", "replica-0")
    made.create()
    yield made
    made.remove()
    for tree in cgroup_driver.trees():
        (tree / made.relative).parent.rmdir()
    assert not made.cpu_dir.parent.exists()


def test_the_cpu_quota_caps_a_busy_process(group: Cgroup) -> None:
    group.set_cpus(0.25)
    group.set_memory(256)
    before, start = group.cpu_seconds(), time.perf_counter()
    subprocess.run(group.wrap([sys.executable, "-c", BUSY]), check=True, timeout=30)
    used, wall = group.cpu_seconds() - before, time.perf_counter() - start
    # Spinning for 1.5 s of wall time under a quarter-core quota: about a quarter of it.
    assert 0.10 < used / wall <= 0.25 * 1.3, (used, wall)


def test_a_process_over_the_memory_limit_is_oom_killed_and_counted(group: Cgroup) -> None:
    group.set_memory(64)
    done = subprocess.run(group.wrap([sys.executable, "-c", HOG]), timeout=60)
    assert done.returncode == -9
    assert group.oom_kills() == 1
    peak = group.memory_peak()
    assert peak is None or peak <= 64 * 2**20


def test_limits_are_rewritten_in_place(group: Cgroup) -> None:
    group.set_cpus(0.5)
    group.set_memory(300)
    group.set_cpus(1.5)
    group.set_memory(500)
    if group.driver.version == 1:
        assert (group.cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "150000"
        assert (group.memory_dir / "memory.limit_in_bytes").read_text().strip() == str(500 * 2**20)
    else:
        assert (group.cpu_dir / "cpu.max").read_text().split() == ["150000", "100000"]
        assert (group.memory_dir / "memory.max").read_text().strip() == str(500 * 2**20)
