"""A study's search space as a few levels per parameter: what `optdse grid` visits and what the
one-factor start (`study.start_points`) varies.

Each varied parameter gets `levels` values spread over its range (geometrically on log ranges,
on the step grid where there is one, de-duplicated after rounding to whole numbers); a list's
choices are its levels. Its own module because the grid and the study loop both need it and
the grid builds on the study loop: neither imports the other for it.
"""

from __future__ import annotations

import numpy as np

from optdse.knobs import SWITCH_KNOBS
from optdse.spec import INTEGER_PARAMETERS, Choice, Range, Study


def levels_of(name: str, dist: Range, levels: int) -> list[float]:
    """`levels` values from low to high inclusive (fewer where whole numbers or the step coincide)."""
    spread = np.geomspace(dist.low, dist.high, levels) if dist.log else np.linspace(dist.low, dist.high, levels)
    if dist.step:
        spread = dist.low + np.round((spread - dist.low) / dist.step) * dist.step
    values = [int(round(v)) for v in spread] if name in INTEGER_PARAMETERS else [round(float(v), 6) for v in spread]
    return sorted(set(values))


def grid_space(study: Study, levels: int) -> dict[str, list[float]]:
    """Each varied parameter's levels: `levels` values over a range, or a list's choices."""
    space = {}
    for name, dist in study.space.dimensions.items():
        if isinstance(dist, Range):
            space[name] = levels_of(name, dist, levels)
        elif isinstance(dist, Choice):
            space[name] = [bool(c) if name in SWITCH_KNOBS else c for c in dist.choices]
    return space


__all__ = ["grid_space", "levels_of"]
