"""When each request of an open-loop run is due: a schedule fixed before the clock starts.

Open-loop load (wrk2's and MLPerf's server scenario) sends requests at an offered rate
whatever the server does; a request's latency then counts from the moment it was due, so a
server that stalls is charged for every request that should have gone out meanwhile, not only
for the few a waiting client happened to have in flight (coordinated omission).

- constant: request k is due at k / rate;
- poisson: exponential gaps of mean 1 / rate (a Poisson process, as independent users send),
  drawn from a generator seeded by `seed`, so a run and its repeat offer the same arrivals.
"""

from __future__ import annotations

import numpy as np

from optdse.config import ARRIVALS, ArrivalName


def schedule(rate_rps: float, count: int, arrival: ArrivalName = "constant", seed: int = 0) -> np.ndarray:
    """Due times of `count` requests, in seconds from the start, ascending (the first at 0)."""
    if not rate_rps > 0:
        raise ValueError(f"the offered rate must be > 0 requests per second (got {rate_rps:g})")
    if arrival == "constant":
        return np.arange(count, dtype=np.float64) / rate_rps
    if arrival == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate_rps, count)
        return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if count else np.zeros(0)
    raise ValueError(f"unknown arrival {arrival!r}; known: {', '.join(ARRIVALS)}")


__all__ = ["ARRIVALS", "ArrivalName", "schedule"]
