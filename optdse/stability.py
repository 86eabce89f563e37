"""When a measurement has seen enough: windows by time, stop once the last few agree.

perf_analyzer's rule: measure in consecutive windows and stop when the last `windows` of
them (3) agree within `tolerance` (10%) on throughput and on mean latency; report those
windows. A fixed request count either wastes time on a stable configuration or stops a noisy
one after half a second; this rule spends the time where the noise is.

- Warm-up: the first `warmup_s` after the start belong to no window (connections, first
  requests through a fresh graph).
- Windows: consecutive, `window_s` long, by send time (open loop: by due time). A window is
  judged once every request sent in it has been answered (the load workers report a
  watermark: no request they have yet to report was sent before it).
- Sparse windows: a window with fewer than `min_requests` answers says too little (a slow
  model at a fraction of a core answers a few requests a second), so the windows after it
  are twice as long.
- Bounds: the run lasts at least `min_s` (and long enough for `windows` windows), and stops
  at `max_s` whatever it has seen; a run stopped there is recorded as not stable, and its
  figures are those of its last `windows` windows.

Pure logic on arrays, fed live by the load generator (optdse/load/run.py) and tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # arrays come in; the module itself needs no numpy (config.py imports it at start-up)
    import numpy as np


@dataclass(frozen=True)
class StabilityRule:
    """How long to measure: until `windows` consecutive windows agree within `tolerance`."""

    window_s: float = 2.0
    windows: int = 3
    tolerance: float = 0.10
    warmup_s: float = 0.5
    min_s: float = 0.0
    max_s: float = 30.0
    min_requests: int = 20

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.windows >= 2 and self.tolerance > 0 and self.warmup_s >= 0
                and self.min_requests >= 1):
            raise ValueError(f"a stability rule needs window_s > 0, windows >= 2, tolerance > 0, warmup_s >= 0 "
                             f"and min_requests >= 1 (got {self})")
        if self.max_s < self.warmup_s + self.windows * self.window_s:
            raise ValueError(f"max_s ({self.max_s:g} s) leaves no room for the warm-up ({self.warmup_s:g} s) and "
                             f"{self.windows} windows of {self.window_s:g} s")

    def describe(self) -> str:
        return (f"until {self.windows} windows of {self.window_s:g} s agree within {self.tolerance:.0%} "
                f"(at most {self.max_s:g} s)")


@dataclass(frozen=True)
class WindowFigures:
    """One window: [start, end) in the load's clock (s), its answered requests, errors, throughput and mean latency."""

    start: float
    end: float
    answered: int
    errors: int
    throughput_rps: float
    art_ms: float

    def as_dict(self, started: float) -> dict[str, float]:
        """For the trial record: times from the start of the load."""
        return {"start_s": round(self.start - started, 4), "end_s": round(self.end - started, 4),
                "answered": self.answered, "errors": self.errors,
                "throughput_rps": round(self.throughput_rps, 3), "art_ms": round(self.art_ms, 4)}


def spread(values: list[float]) -> float:
    """(max - min) / min: how far apart the values are, relative to the smallest."""
    low = min(values)
    return (max(values) - low) / low if low > 0 else float("inf")


@dataclass
class StabilityJudge:
    """Judges a run as it goes: fed the records so far, says when the run may stop.

    `started` is the load's clock reading at its start. Call `update` whenever new records
    arrive; it closes every window the watermark has passed and returns the time the run
    should stop sending (the end of the last window) once the rule is met, else None."""

    rule: StabilityRule
    started: float
    closed: list[WindowFigures] = field(default_factory=list)
    stable: bool = False
    _length: float = 0.0

    def __post_init__(self) -> None:
        self._length = self.rule.window_s

    @property
    def next_end(self) -> float:
        begin = self.closed[-1].end if self.closed else self.started + self.rule.warmup_s
        return begin + self._length

    @property
    def limit(self) -> float:
        return self.started + self.rule.max_s

    def update(self, send: np.ndarray, latency: np.ndarray, ok: np.ndarray, watermark: float) -> float | None:
        """Close the windows that `watermark` has passed (every request sent before it is in
        `send`/`latency`/`ok`); the stop time once the last `windows` agree."""
        while not self.stable and self.next_end <= min(watermark, self.limit):
            end = self.next_end
            start = end - self._length
            inside = (send >= start) & (send < end)
            good = inside & ok
            answered = int(good.sum())
            art = float(latency[good].mean() * 1e3) if answered else float("nan")
            self.closed.append(WindowFigures(start, end, answered, int((inside & ~ok).sum()),
                                             answered / self._length, art))
            if answered < self.rule.min_requests:
                self._length *= 2
            self.stable = self._agree() and end - self.started >= self.rule.min_s
        return self.closed[-1].end if self.stable else None

    def _agree(self) -> bool:
        last = self.closed[-self.rule.windows:]
        if len(last) < self.rule.windows or any(w.answered < self.rule.min_requests for w in last):
            return False
        return (spread([w.throughput_rps for w in last]) <= self.rule.tolerance
                and spread([w.art_ms for w in last]) <= self.rule.tolerance)

    def kept(self) -> list[WindowFigures]:
        """The windows the measurement reports: the last `windows` closed (fewer if the run
        closed fewer)."""
        return self.closed[-self.rule.windows:]

    def kept_spread(self) -> float:
        """The largest relative spread of the kept windows' throughput and mean latency."""
        kept = [w for w in self.kept() if w.answered]
        if len(kept) < 2:
            return float("inf")
        return max(spread([w.throughput_rps for w in kept]), spread([w.art_ms for w in kept]))


__all__ = ["StabilityJudge", "StabilityRule", "WindowFigures", "spread"]
