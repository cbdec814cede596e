"""Entries that lie above their family's trend: the ones a build times again before it trusts them.

A build keeps each op's fastest sweep and stops once two sweeps agree (`measure.best_of_passes`). Interference
only adds time, but on the reference host the second core was taken for minutes at a time, often without the
speed reference confirming it, so both sweeps of an op could fall in such a spell, agree, and leave the entry
inflated. Two full-space 128 px ONNX Runtime builds of one protocol 40 minutes apart differed by more than 16 % on
10 % of the ops timed alone; a third build sided with the first on those ops (median difference 1 %), so the
second had them too slow. Its table put 88-92 % of three held-out samples within ±10 % in shape, where the first
put 98-100 %.

Latency is a smooth function of an op's widths within a family (one op type at one resolution), so an inflated
entry stands out from its neighbours even though each op is measured once. `above_trend` fits each family's log
latencies by a trimmed least-squares fit (quadratic in the log widths, one level per kernel, stride, head count
and class count) and returns the entries more than `tol` above it. On the second build, residuals above 0.10
flagged 17 % of the ops and 184 of its 206 entries that were over 15 % above the first build's. The fit only
chooses what to time again, never a value: an op that is truly slow for its widths (an awkward kernel shape, a
cache edge) keeps its time, since a re-timed entry is the faster of the old and the new timing. In a full 128 px
build on a noisy host, 383 of the 418 entries re-checked came out faster, and the table's ops timed alone then
differed from two calm builds' by more than 16 % for 4.9-5.7 % of them, as often as those two differ from each
other. On a host noisier still (its networks repeated within ±10 % for 64 % of them) 3 of 346 did: the re-check
ranks a timing taken in a slow spell below a calm one (`measure.calm_first`), and such a build's entries were off
in both directions, which no re-timing of high entries mends.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FAMILY = ("op_type", "in_h", "batch")
WIDTHS = ("in_ch", "out_ch", "hidden")
LEVELS = ("kernel", "ffn_kernel", "heads", "stride", "num_classes")
MIN_FAMILY = 12
"""Families smaller than this, or than three rows per fitted coefficient, are left alone: their fit would follow
the noise it is meant to expose."""
TRIM = 2.5
"""Residuals beyond this many robust standard deviations (1.4826 × MAD) leave the fit, so the entries to be found
do not pull the trend up towards themselves."""
TRIM_ROUNDS = 10


def above_trend(rows: pd.DataFrame, tol: float) -> set[str]:
    """Keys of `rows` (a LUT's rows) whose latency is more than `tol` (natural log) above their family's trend."""
    if tol <= 0:
        return set()
    found: set[str] = set()
    timed = rows[rows["latency_ms"].astype(float) > 0]
    for _, family in timed.groupby(list(FAMILY)):
        design = _design(family)
        if len(family) < max(MIN_FAMILY, 3 * design.shape[1]):
            continue
        residual = _trimmed_residuals(design, np.log(family["latency_ms"].to_numpy(float)))
        found.update(family["key"][residual > tol])
    return found


def _design(family: pd.DataFrame) -> np.ndarray:
    """Intercept, log width and its square for each width that varies, and one indicator per further level."""
    columns = [np.ones(len(family))]
    for name in WIDTHS:
        log_width = np.log(family[name].to_numpy(float).clip(min=1))
        if log_width.std() > 0:
            columns += [log_width, log_width**2]
    for name in LEVELS:
        values = family[name].to_numpy()
        columns += [(values == level).astype(float) for level in np.unique(values)[1:]]
    return np.column_stack(columns)


def _trimmed_residuals(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Residuals of every row from a least-squares fit refitted without the rows far off it."""
    keep = np.ones(len(y), dtype=bool)
    for _ in range(TRIM_ROUNDS):
        coef = np.linalg.lstsq(design[keep], y[keep], rcond=None)[0]
        residual = y - design @ coef
        centre = np.median(residual[keep])
        sigma = 1.4826 * np.median(np.abs(residual[keep] - centre))
        within = np.abs(residual - centre) <= TRIM * sigma if sigma > 0 else keep
        if np.array_equal(within, keep) or within.sum() < design.shape[1]:
            break
        keep = within
    return residual
