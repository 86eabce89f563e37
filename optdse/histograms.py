"""Latency distributions as HdrHistograms: bounded relative error, merged by adding counts.

A trial's percentiles come from a histogram of its answered requests' latencies, not from
averaging percentiles: repeats of a configuration are merged by adding their counts and the
percentiles are read from the merged counts. The histogram is also what a trial stores
(`latency_histogram`: HdrHistogram's standard compressed, base64 encoding, about 2 KB), so
the report can redraw the whole distribution later, and other HdrHistogram tools can read it.

Values are whole microseconds from 1 us to one hour, with 3 significant digits: every
recorded latency is within 0.1% of its true value, at any request count. The library is
HdrHistogram_py (`hdrhistogram` on PyPI, the HdrHistogram project's Python port).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
#: The percentiles a trial reports, with their Measurement field names.
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0, "p999_ms": 99.9}


class LatencyHistogram:
    """Latencies in seconds in, milliseconds out."""

    def __init__(self, histogram: HdrHistogram | None = None) -> None:
        self._h = histogram or HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    @classmethod
    def of(cls, latencies_s: Iterable[float] | np.ndarray) -> LatencyHistogram:
        histogram = cls()
        micros = np.clip(np.rint(np.asarray(latencies_s, dtype=np.float64) * 1e6), LOWEST_US, HIGHEST_US)
        values, counts = np.unique(micros.astype(np.int64), return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            histogram._h.record_value(value, count)
        return histogram

    @classmethod
    def decode(cls, encoded: str) -> LatencyHistogram:
        return cls(HdrHistogram.decode(encoded.encode("ascii")))

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        """One histogram holding every count of `histograms`."""
        total = cls()
        for histogram in histograms:
            total._h.add(histogram._h)
        return total

    def encode(self) -> str:
        return self._h.encode().decode("ascii")

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        return self._h.get_value_at_percentile(percentile) / 1e3 if self.count else float("nan")

    def percentiles_ms(self) -> dict[str, float]:
        """The reported percentiles, by Measurement field name."""
        return {name: self.percentile_ms(p) for name, p in PERCENTILES.items()}

    def mean_ms(self) -> float:
        return self._h.get_mean_value() / 1e3 if self.count else float("nan")

    def distribution(self, points: int = 60) -> list[tuple[float, float]]:
        """(percentile, latency ms) pairs from the median to the largest value, spaced
        logarithmically in 1 / (1 - percentile) as HdrHistogram's own plots are."""
        if not self.count:
            return []
        tails = np.logspace(np.log10(0.5), np.log10(max(0.5 / self.count, 1e-6)), points)
        return [(round(100 * (1 - t), 6), self.percentile_ms(100 * (1 - t))) for t in tails]


__all__ = ["PERCENTILES", "LatencyHistogram"]
