"""Finding the entries of a LUT that lie above their family's trend (`latency_lut/trend.py`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fastvit_nas.latency_lut.trend import MIN_FAMILY, above_trend


def _family(op_type: str, in_h: int, widths: list[int], rng: np.random.Generator) -> pd.DataFrame:
    """RepMixer-like rows: hidden width 3 or 4 times the width, kernel 3 or 7, latency a power law of the widths
    (kernel 7 costing 1.4 times kernel 3) with 2 % noise."""
    rows = []
    for width in widths:
        for ratio in (3, 4):
            for kernel in (3, 7):
                hidden = ratio * width
                ms = 1e-5 * width**1.1 * hidden**0.9 * (1.4 if kernel == 7 else 1.0) * float(rng.normal(1, 0.02))
                rows.append({"key": f"{op_type}-{in_h}-{width}-{hidden}-{kernel}", "op_type": op_type, "batch": 1,
                             "in_ch": width, "in_h": in_h, "in_w": in_h, "out_ch": width, "kernel": kernel,
                             "stride": 1, "ffn_kernel": 3, "hidden": hidden, "heads": 0, "num_classes": 0,
                             "latency_ms": ms})
    return pd.DataFrame(rows)


def test_entries_above_their_familys_trend_are_found_and_only_those():
    """Inflated entries stand out from a smooth family; a fast entry, a kernel that costs more throughout, and a
    family too small to fit are left alone."""
    rng = np.random.default_rng(0)
    big = _family("repmixer_block", 8, [64, 96, 128, 160, 192, 224, 256, 320], rng)
    small = _family("attention_block", 4, [256], rng)
    assert len(big) >= MIN_FAMILY > len(small)
    inflated = list(big["key"].iloc[[3, 10, 25]])
    big.loc[big["key"].isin(inflated), "latency_ms"] *= 1.25
    big.loc[big.index[17], "latency_ms"] *= 0.75
    small.loc[small.index[0], "latency_ms"] *= 2.0
    rows = pd.concat([big, small], ignore_index=True)
    assert above_trend(rows, 0.10) == set(inflated)
    assert above_trend(rows, 0.0) == set()
    assert above_trend(rows, 0.5) == set()
