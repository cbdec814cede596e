"""Which networks a LUT times end to end for its calibration: chosen so that the few points pin the fit down.

The calibration (`predict.fit_calibration`) is at least an offset and a scale, fitted on relative error, so each
network contributes the row (1/latency, sum/latency): the scale is pinned down by any networks, the offset only
by networks whose 1/latency differs. A dozen networks drawn at random from a space cluster around its typical size,
and the offset they fit carries their noise into every prediction. The variance of 1/latency over the chosen
networks is what the fit's determinant grows with (D-optimal design), and it is largest for some of the smallest
and some of the largest networks. Latency is not known before the build, but FLOPs (closed form, `space.size`)
rank networks alike: over the 62 measured networks of each of fourteen 128 px tables of the default space they
correlated 0.91-0.99 with the measured latency (`benchmarks/results/calibration_design.json`).

Replayed on the stored points of fourteen 128 px tables (`benchmarks/calibration_design.py`: 12 networks picked
from 31, the calibration refitted and scored on the other 31, 100 random splits per table), picking by FLOPs spread
instead of at random took the share within ±10 % from 82.9 % to 83.9 % on average (up on 11 of 14 tables) and MAPE
from 6.25 % to 5.98 % (lower on 13). In the analysis that led here, 18 random networks did about as well.

The candidates are a random pool `POOL_FACTOR` times larger than the design, as in that replay: a larger pool
would push the picks to the space's extremes, where the linear model is least checked.
"""

from __future__ import annotations

import numpy as np

from ..fastvit.spec import ArchSpec
from ..space.size import network_size
from .spaces import SpaceSource

CALIBRATION_NETWORKS = 24
"""Calibration networks a build times by default. Replayed on the same fourteen tables as above (pool of 31, 100
splits), 24 networks by FLOPs spread scored 85.7 % within ±10 % (MAPE 5.68 %) against 83.9 % (5.98 %) for 12, up on
all fourteen tables (`benchmarks/results/calibration_design_24.json`), for twelve more networks timed end to end in a
build. Richer calibration models did not close that gap on 12: fitted alone on the same picks, one
scale per op group or a cost per block call scored 81.6 % and 80.9 %, the single scale 84.6 % and the model
selection 83.9 % (`benchmarks/calibration_design.py --model`)."""

CALIBRATION_SEED = 1_000_003
"""The seed of the calibration networks' candidates: fixed, so that LUTs of one space share their calibration
networks and a rebuilt LUT re-times the same ones; validation excludes them, so its figures are held-out."""
POOL_FACTOR = 2.5
"""Candidates per calibration network (60 candidates for the default 24 networks)."""


def calibration_specs(space: SpaceSource, n: int, img_size: int, seed: int = CALIBRATION_SEED) -> list[ArchSpec]:
    """`n` networks of the space for the calibration: of `POOL_FACTOR` × `n` seeded candidates, those that
    `widest_spread` picks by their FLOPs at `img_size`, in the order they were drawn."""
    pool = space.sample(round(POOL_FACTOR * n), seed)
    chosen = widest_spread(np.array([network_size(spec, img_size).flops for spec in pool], dtype=float), n)
    return [pool[i] for i in sorted(chosen)]


def widest_spread(cost: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` of `cost` whose 1/cost varies most: the largest and the smallest, split between the two
    ends where the variance peaks (for distinct points the optimum lies there); all of them when `n` covers all."""
    if len(cost) <= n:
        return np.arange(len(cost))
    inverse = 1.0 / cost
    order = np.argsort(inverse, kind="stable")

    def ends(large: int) -> np.ndarray:
        return np.concatenate([order[:large], order[len(order) - (n - large):]])

    return ends(max(range(n + 1), key=lambda large: float(np.var(inverse[ends(large)]))))
