"""Per-replica control groups: a CPU quota, a memory limit, CPU and memory accounting.

Two layouts exist in the wild. cgroup v1 (this project's CI machine) mounts each controller
on its own tree (/sys/fs/cgroup/cpu, /cpuacct, /memory, or cpu,cpuacct together); cgroup v2
(most users' machines) has one tree with cpu.max / memory.max. `CgroupDriver.detect()`
picks whichever is writable and says why when neither is.

Every group optdse makes lives under `optdse/<run id>/replica-<n>`, so leftovers of a killed
run are easy to find (`optdse clean`) and never confused with anyone else's.
"""

from __future__ import annotations

import errno
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

ROOT_NAME = "optdse"
CFS_PERIOD_US = 100_000


def _mounts() -> list[tuple[str, Path, set[str]]]:
    result = []
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount_point, fs_type, options, *_ = line.split()
        result.append((fs_type, Path(mount_point), set(options.split(","))))
    return result


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


@dataclass(frozen=True)
class CgroupDriver:
    """Where groups are made: v1 with one directory per controller, or v2 with one tree."""

    version: int
    cpu: Path
    cpuacct: Path
    memory: Path

    @classmethod
    def layout(cls) -> tuple[CgroupDriver | None, str]:
        """The machine's cgroup layout (v1 preferred when its three controllers are mounted)."""
        mounts = _mounts()
        v1 = {ctrl: mp for fs, mp, opts in mounts if fs == "cgroup" for ctrl in ("cpu", "cpuacct", "memory")
              if ctrl in opts}
        if len(v1) == 3:
            return cls(1, v1["cpu"], v1["cpuacct"], v1["memory"]), ""
        for fs, mp, _ in mounts:
            if fs == "cgroup2" and {"cpu", "memory"} <= set((mp / "cgroup.controllers").read_text().split()):
                return cls(2, mp, mp, mp), ""
        return None, "neither cgroup v1 cpu, cpuacct and memory nor a cgroup v2 tree with cpu and memory is mounted"

    @classmethod
    def detect(cls) -> tuple[CgroupDriver | None, str]:
        """A layout optdse can create groups in, or None and the reason limits cannot be enforced."""
        if os.environ.get("OPTDSE_NO_CGROUPS"):
            return None, "OPTDSE_NO_CGROUPS is set"
        driver, why_not = cls.layout()
        if driver is None:
            return None, why_not
        problem = driver._probe()
        return (driver, "") if problem is None else (None, problem)

    def _probe(self) -> str | None:
        """Try to create optdse's root group in each tree; None if that worked."""
        for tree in {self.cpu, self.cpuacct, self.memory}:
            try:
                (tree / ROOT_NAME).mkdir(exist_ok=True)
                if self.version == 2:
                    _enable_controllers(tree)
                    _enable_controllers(tree / ROOT_NAME)
            except OSError as error:
                return f"cannot create {tree / ROOT_NAME}: {error.strerror}"
        return None

    def group(self, run_id: str, name: str) -> Cgroup:
        return Cgroup(self, f"{ROOT_NAME}/{run_id}/{name}")

    def trees(self) -> set[Path]:
        return {self.cpu, self.cpuacct, self.memory}

    def run_dirs(self) -> dict[str, set[Path]]:
        """Every optdse/<run id> directory in every tree, by run id."""
        result: dict[str, set[Path]] = {}
        for tree in self.trees():
            root = tree / ROOT_NAME
            if root.is_dir():
                for child in root.iterdir():
                    if child.is_dir():
                        result.setdefault(child.name, set()).add(child)
        return result


def _enable_controllers(directory: Path) -> None:
    try:
        _write(directory / "cgroup.subtree_control", "+cpu +memory")
    except OSError as error:
        if error.errno != errno.EBUSY:  # busy: already enabled by someone, or has processes
            raise


class Cgroup:
    """One replica's group (created on `create`, removed on `remove`)."""

    def __init__(self, driver: CgroupDriver, relative: str) -> None:
        self.driver = driver
        self.relative = relative
        self.cpu_dir = driver.cpu / relative
        self.cpuacct_dir = driver.cpuacct / relative
        self.memory_dir = driver.memory / relative
        self._last_cpu_seconds: float | None = None

    def create(self) -> None:
        for tree in self.driver.trees():
            directory = tree / self.relative
            directory.mkdir(parents=True, exist_ok=True)
            if self.driver.version == 2:
                _enable_controllers(directory.parent)

    def wrap(self, command: list[str]) -> list[str]:
        """`command` run so that it starts inside this group.

        A small shell moves itself into the group and then execs the command, so not one
        page of the replica is allocated outside the memory limit (Popen's preexec_fn would
        do the same but is unsafe in a process with threads, like this one)."""
        procs = " ".join(shlex.quote(str(d / "cgroup.procs")) for d in sorted(self._dirs()))
        script = f'for f in {procs}; do echo $$ > "$f" || exit 97; done; exec "$@"'
        return ["/bin/sh", "-c", script, "optdse-cgexec", *command]

    def _dirs(self) -> set[Path]:
        return {self.cpu_dir, self.cpuacct_dir, self.memory_dir}

    def set_cpus(self, cpus: float | None) -> None:
        """A CFS quota of `cpus` cores (None: unlimited)."""
        if self.driver.version == 1:
            quota = -1 if cpus is None else max(1000, round(cpus * CFS_PERIOD_US))
            _write(self.cpu_dir / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(self.cpu_dir / "cpu.cfs_quota_us", str(quota))
        else:
            quota_text = "max" if cpus is None else str(max(1000, round(cpus * CFS_PERIOD_US)))
            _write(self.cpu_dir / "cpu.max", f"{quota_text} {CFS_PERIOD_US}")

    def set_memory(self, megabytes: int) -> None:
        """A hard memory limit with no swap, so the limit means what it says."""
        limit = str(megabytes * 1024 * 1024)
        if self.driver.version == 1:
            limit_file, swap_file = self.memory_dir / "memory.limit_in_bytes", self.memory_dir / "memory.memsw.limit_in_bytes"
            if swap_file.exists():
                # memsw must stay >= the memory limit: order the writes by direction.
                try:
                    _write(swap_file, limit)
                    _write(limit_file, limit)
                except OSError:
                    _write(limit_file, limit)
                    _write(swap_file, limit)
            else:
                _write(limit_file, limit)
        else:
            _write(self.memory_dir / "memory.max", limit)
            if (self.memory_dir / "memory.swap.max").exists():
                _write(self.memory_dir / "memory.swap.max", "0")

    def cpu_seconds(self) -> float:
        """CPU time used by the group so far. A group that vanished after it was read (a
        killed container's, removed by Docker) keeps its last reading: what it used until then."""
        try:
            self._last_cpu_seconds = self._read_cpu_seconds()
        except FileNotFoundError:
            if self._last_cpu_seconds is None:
                raise
        return self._last_cpu_seconds

    def _read_cpu_seconds(self) -> float:
        if self.driver.version == 1:
            return int((self.cpuacct_dir / "cpuacct.usage").read_text()) / 1e9
        for line in (self.cpuacct_dir / "cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {self.cpuacct_dir / 'cpu.stat'}")

    def memory_bytes(self) -> int:
        """Memory in use now; 0 once a group that was read has vanished (see cpu_seconds)."""
        name = "memory.usage_in_bytes" if self.driver.version == 1 else "memory.current"
        try:
            return int((self.memory_dir / name).read_text())
        except FileNotFoundError:
            if self._last_cpu_seconds is None:
                raise
            return 0

    def memory_peak(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.driver.version == 1 else "memory.peak"
        path = self.memory_dir / name
        return int(path.read_text()) if path.exists() else None

    def reset_peak(self) -> None:
        path = self.memory_dir / ("memory.max_usage_in_bytes" if self.driver.version == 1 else "memory.peak")
        if path.exists():
            try:
                _write(path, "0")
            except OSError:
                pass  # v2 memory.peak is resettable only on kernels >= 6.12

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.driver.version == 1 else "memory.events"
        for line in (self.memory_dir / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        pids: set[int] = set()
        for directory in self._dirs():
            try:
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                pass
        return sorted(pids)

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir the group in every tree (its processes must have exited), then empty parents."""
        for directory in self._dirs():
            remove_dir(directory, timeout)


def remove_dir(directory: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup directory, retrying while the kernel still lists exiting tasks."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


__all__ = ["CFS_PERIOD_US", "ROOT_NAME", "Cgroup", "CgroupDriver", "remove_dir"]
