"""Resource accounting of the replicas while load runs: CPU, memory, energy.

A background thread samples the backend's cumulative CPU seconds and memory every 50 ms
(through a Docker engine's stats API, as the swarm backend reads other nodes, about once a
second: the engine answers at its own collection tick). ACU over the measurement window
(known only after the run) is then the rate of the cumulative CPU between the first and
last samples inside the window (`_within`), in cores; energy from RAPL the same way. The
same samples, interpolated, give the time series.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optdse.deploy.base import Backend, ResourceSample

RAPL_DIR = Path("/sys/class/powercap")
#: Watts one fully busy core draws, for the energy estimate where RAPL is absent. A round
#: figure for a server core under load; set OPTDSE_WATTS_PER_CORE for your hardware.
DEFAULT_WATTS_PER_CORE = 10.0


def watts_per_core() -> float:
    return float(os.environ.get("OPTDSE_WATTS_PER_CORE", DEFAULT_WATTS_PER_CORE))


def _rapl_files() -> list[Path]:
    """Package-level RAPL counters (intel-rapl:N/energy_uj) that this process can read."""
    files = []
    for path in sorted(RAPL_DIR.glob("intel-rapl:[0-9]*/energy_uj")):
        if path.parent.name.count(":") == 1 and os.access(path, os.R_OK):
            files.append(path)
    return files


@dataclass(frozen=True)
class Samples:
    """What the monitor saw: times, total CPU seconds of all replicas, memory, RAPL joules."""

    time: np.ndarray
    cpu_seconds: np.ndarray      # summed over replicas, cumulative
    memory_bytes: np.ndarray     # summed over replicas
    rapl_joules: np.ndarray | None  # cumulative package energy (whole machine), if readable
    cpu_by_node: dict[str, np.ndarray]  # cpu_seconds split by the host the replicas run on
    replicas_by_node: dict[str, int]    # how many replicas ran on each host, as the load started
    stopped_by: str | None = None       # why sampling ended before the load did (a replica went away)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the replicas used in [start, end], by linear interpolation."""
        return _between(self.time, self.cpu_seconds, start, end)

    def cpu_in_window(self, start: float, end: float) -> float:
        """CPU seconds the replicas used in the measurement window [start, end], from the
        samples inside it (`_within`)."""
        return _within(self.time, self.cpu_seconds, start, end)

    def cpu_in_window_by_node(self, start: float, end: float) -> dict[str, float]:
        """`cpu_in_window` for the replicas of each node (swarm); one node for the other backends.
        The same samples for every node, so the nodes sum to `cpu_in_window`."""
        return {node: _within(self.time, cpu, start, end) for node, cpu in self.cpu_by_node.items()}

    def joules_in_window(self, start: float, end: float) -> float | None:
        """RAPL package joules in the measurement window, as `cpu_in_window`; None without RAPL."""
        if self.rapl_joules is None:
            return None
        return _within(self.time, self.rapl_joules, start, end)


def _between(time: np.ndarray, cumulative: np.ndarray, start: float, end: float) -> float:
    a, b = np.interp([start, end], time, cumulative)
    return float(b - a)


def _within(time: np.ndarray, cumulative: np.ndarray, start: float, end: float) -> float:
    """The increase of `cumulative` over [start, end], as its rate between the first and the
    last sample inside the interval times the interval's length.

    A measurement window is steady load by construction, and the load stops right after it:
    interpolating across its end would spread that stop over the whole gap between two
    samples. At 50 ms apart that is noise; read through a Docker engine's stats API, samples
    are a second apart, and interpolation under-read ACU on the multi-node bed (the rate held
    at the window's ends is the rate inside it). Fewer than two samples inside: interpolation."""
    inside = np.flatnonzero((time >= start) & (time <= end))
    if len(inside) < 2 or time[inside[-1]] <= time[inside[0]]:
        return _between(time, cumulative, start, end)
    first, last = inside[0], inside[-1]
    return float((cumulative[last] - cumulative[first]) / (time[last] - time[first]) * (end - start))


def _nodes(sample: ResourceSample) -> tuple[str, ...]:
    """The host of each replica in `sample`: this one for backends that do not say."""
    return sample.nodes or (socket.gethostname(),) * len(sample.cpu_seconds)


def _by_node(samples: list[ResourceSample]) -> dict[str, np.ndarray]:
    """Each node's cumulative replica CPU per sample. A node missing from a sample (its last
    replica was just replaced) keeps its previous figure."""
    rows = []
    for sample in samples:
        row: dict[str, float] = {}
        for node, cpu in zip(_nodes(sample), sample.cpu_seconds, strict=True):
            row[node] = row.get(node, 0.0) + cpu
        rows.append(row)
    series: dict[str, np.ndarray] = {}
    for node in sorted({node for row in rows for node in row}):
        last, values = 0.0, []
        for row in rows:
            last = row.get(node, last)
            values.append(last)
        series[node] = np.array(values)
    return series


class Monitor:
    """Samples `backend.usage()` every `interval` seconds between `start()` and `stop()`."""

    def __init__(self, backend: Backend, interval: float = 0.05) -> None:
        self.backend = backend
        self.interval = interval
        self._samples: list[ResourceSample] = []
        self._rapl: list[float] = []
        self._rapl_files = _rapl_files()
        self._stop = threading.Event()
        self._stopped_by: str | None = None
        self._thread = threading.Thread(target=self._loop, name="optdse-monitor", daemon=True)

    def _read_rapl(self) -> float:
        return sum(int(p.read_text()) for p in self._rapl_files) / 1e6

    def _take(self) -> None:
        self._samples.append(self.backend.usage())
        if self._rapl_files:
            self._rapl.append(self._read_rapl())  # counter wrap-around ignored: runs are short

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._take()
            except OSError as error:  # a replica went away mid-run; the backend's check() reports why
                self._stopped_by = f"{type(error).__name__}: {error}"
                return

    def start(self) -> None:
        self.backend.reset_peaks()
        self._take()
        self._thread.start()

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join()
        if self._stopped_by is None:
            try:
                self._take()
            except OSError as error:
                self._stopped_by = f"{type(error).__name__}: {error}"
        return Samples(
            time=np.array([s.time for s in self._samples]),
            cpu_seconds=np.array([sum(s.cpu_seconds) for s in self._samples]),
            memory_bytes=np.array([sum(s.memory_bytes) for s in self._samples], dtype=np.int64),
            rapl_joules=np.array(self._rapl) if self._rapl_files else None,
            cpu_by_node=_by_node(self._samples),
            replicas_by_node=dict(collections.Counter(_nodes(self._samples[0]))),
            stopped_by=self._stopped_by,
        )


__all__ = ["DEFAULT_WATTS_PER_CORE", "Monitor", "Samples", "watts_per_core"]
