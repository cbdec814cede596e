"""A fixed-length numeric vector per network, for accuracy and latency predictors.

One number per decided field and stage (absent kernels as 0, mixer and branch kind as indices), so two
different networks with the same number of stages never share a vector.
"""

from __future__ import annotations

import numpy as np

from ..fastvit.spec import BRANCH_KINDS, TOKEN_MIXERS, ArchSpec

STAGE_FEATURES = ("depth", "width", "mixer", "mlp_ratio", "repmixer_kernel", "ffn_kernel", "cpe_kernel",
                  "patch_kernel")


def feature_names(n_stages: int) -> list[str]:
    """Column names of `encode`'s vector, e.g. `s0.depth`, …, `branches.kind`."""
    return [f"s{i}.{f}" for i in range(n_stages) for f in STAGE_FEATURES] + ["branches.kind",
                                                                              "branches.conv_branches"]


def encode(spec: ArchSpec) -> np.ndarray:
    """The network as float64 features in `feature_names` order."""
    values: list[float] = []
    for stage in spec.stages:
        for name in STAGE_FEATURES:
            value = getattr(stage, name)
            if name == "mixer":
                value = TOKEN_MIXERS.index(value)
            values.append(0.0 if value is None else float(value))
    values += [float(BRANCH_KINDS.index(spec.branches.kind)), float(spec.branches.conv_branches)]
    return np.asarray(values, dtype=np.float64)
