"""latency_lut.design: calibration networks chosen so that the offset and scale of the fit are pinned down."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fastvit_nas.latency_lut import resolve_space
from fastvit_nas.latency_lut.design import CALIBRATION_SEED, POOL_FACTOR, calibration_specs, widest_spread
from fastvit_nas.space.size import network_size


@pytest.mark.parametrize("n", [1, 3, 4, 6])
def test_widest_spread_finds_the_subset_whose_inverse_cost_varies_most(n):
    """Against every subset of a skewed set of costs: no choice of `n` has a larger variance of 1/cost."""
    cost = np.random.default_rng(n).lognormal(0.0, 0.8, size=9)
    chosen = widest_spread(cost, n)
    assert len(set(chosen.tolist())) == n
    best = max(np.var(1 / cost[list(c)]) for c in itertools.combinations(range(len(cost)), n))
    assert np.var(1 / cost[chosen]) == pytest.approx(best)


def test_widest_spread_takes_everything_it_is_asked_for_or_more():
    assert sorted(widest_spread(np.array([3.0, 1.0, 2.0]), 5).tolist()) == [0, 1, 2]


def test_calibration_specs_are_fixed_distinct_and_span_the_pool_by_flops():
    space = resolve_space("default")
    chosen = calibration_specs(space, 6, 128)
    assert [s.arch_id for s in chosen] == [s.arch_id for s in calibration_specs(space, 6, 128)]
    assert len({s.arch_id for s in chosen}) == 6
    pool = space.sample(round(POOL_FACTOR * 6), CALIBRATION_SEED)
    flops = sorted(network_size(s, 128).flops for s in pool)
    picked = {network_size(s, 128).flops for s in chosen}
    assert flops[0] in picked and flops[-1] in picked
    assert any(picked == {*flops[:small], *flops[len(flops) - (6 - small):]} for small in range(1, 6))
    assert np.var([1 / f for f in picked]) > np.var([1 / f for f in flops[len(flops) // 2 - 3:len(flops) // 2 + 3]])

