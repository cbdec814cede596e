"""Prediction: sum op latencies per op type, then apply the calibration fitted on end-to-end measurements.

Isolated ops miss what a whole network pays between them (cache refills, allocator and dispatch overheads,
on GPU launch gaps), so the raw sum is biased. A linear calibration `offset + Σ_t scale_t · sum_t`, fitted on
a handful of networks measured end-to-end with the same protocol, removes that bias. Scales are kept
positive and bounded (`SCALE_BOUNDS`), so adding or widening ops can never lower a prediction. Two models are
fitted, one global scale or one scale per op group, and the one with the lower leave-one-out error on the
calibration points is kept: per-group scales only win when there are enough points to support them.

Predicting many specs is vectorized: each spec becomes a few (op index, count) pairs through the cached
decomposition, and numpy sums them per op type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import lsq_linear

from ..fastvit.spec import ArchSpec
from .ops import (
    OP_TYPES,
    SIGNATURE_FIELDS,
    op_counts,
    stage_input_size,
    stage_signatures,
    stem_signature,
    tail_signatures,
)
from .table import LatencyTable, LutError

GROUPS: dict[str, tuple[str, ...]] = {
    "repmixer": ("repmixer_block",),
    "attention": ("attention_block",),
    "other": ("stem", "patch_embed", "cpe", "final_conv", "head"),
}
"""Op groups that may get their own scale: the two block kinds carry most of the time and differ most in how
their isolated timing relates to their in-network cost."""

MIN_CALIBRATION_POINTS = 3
SCALE_BOUNDS = (0.5, 3.0)
"""A scale outside this range means the end-to-end points are noise, not a cache or overhead effect; bounding
it keeps a few noisy calibration networks from flattening the ranking (scale 0 predicts one constant), and a
positive lower bound makes every extra or wider op strictly add time."""


@dataclass(frozen=True)
class Calibration:
    """`offset_ms + Σ_t scale[t] · sum_t`; the identity calibration is offset 0 and every scale 1."""

    offset_ms: float = 0.0
    scales: tuple[float, ...] = (1.0,) * len(OP_TYPES)
    model: str = "none"
    fit_mape: float | None = None
    loo_mape: float | None = None
    points: int = 0

    def apply(self, sums: np.ndarray) -> np.ndarray:
        return self.offset_ms + sums @ np.asarray(self.scales)

    def to_dict(self) -> dict:
        return {**asdict(self), "scales": dict(zip(OP_TYPES, self.scales, strict=True))}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        if not data or "fit" not in data:
            return cls()
        fit = dict(data["fit"])
        fit["scales"] = tuple(float(fit["scales"][t]) for t in OP_TYPES)
        return cls(**fit)


def _design(sums: np.ndarray, groups: list[tuple[str, ...]]) -> np.ndarray:
    cols = [sums[:, [OP_TYPES.index(t) for t in g]].sum(axis=1) for g in groups]
    return np.column_stack([np.ones(len(sums)), *cols])


def _solve(sums: np.ndarray, measured: np.ndarray, groups: list[tuple[str, ...]]) -> tuple[float, np.ndarray]:
    """Least squares on relative error (rows weighted by 1/measured), offset free, scales in `SCALE_BOUNDS`."""
    a = _design(sums, groups) / measured[:, None]
    lower = [-np.inf] + [SCALE_BOUNDS[0]] * len(groups)
    upper = [np.inf] + [SCALE_BOUNDS[1]] * len(groups)
    coef = lsq_linear(a, np.ones(len(measured)), bounds=(lower, upper)).x
    scales = np.ones(len(OP_TYPES))
    for group, scale in zip(groups, coef[1:], strict=True):
        for t in group:
            scales[OP_TYPES.index(t)] = scale
    return float(coef[0]), scales


def _mape(pred: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - measured) / measured) * 100)


def fit_calibration(sums: np.ndarray, measured: np.ndarray) -> Calibration:
    """Fit global and per-group calibrations; keep the one with the lower leave-one-out MAPE."""
    measured = np.asarray(measured, dtype=float)
    if len(measured) < MIN_CALIBRATION_POINTS:
        raise LutError(f"calibration needs at least {MIN_CALIBRATION_POINTS} end-to-end measurements, "
                       f"got {len(measured)}")
    present = [g for g in GROUPS.values() if sums[:, [OP_TYPES.index(t) for t in g]].sum() > 0]
    candidates = {"global": [tuple(OP_TYPES)]}
    if len(measured) >= 2 * (len(present) + 1):
        candidates["per_group"] = present
    best: Calibration | None = None
    for name, groups in candidates.items():
        loo = []
        for i in range(len(measured)):
            keep = np.arange(len(measured)) != i
            offset, scales = _solve(sums[keep], measured[keep], groups)
            loo.append(abs(offset + sums[i] @ scales - measured[i]) / measured[i] * 100)
        offset, scales = _solve(sums, measured, groups)
        cal = Calibration(offset_ms=offset, scales=tuple(float(s) for s in scales), model=name,
                          fit_mape=_mape(offset + sums @ scales, measured), loo_mape=float(np.mean(loo)),
                          points=len(measured))
        if best is None or cal.loo_mape < best.loo_mape:
            best = cal
    return best


class Predictor:
    """Vectorized latency prediction from one LUT; build it once, call it for many specs."""

    def __init__(self, table: LatencyTable, source: str = "LUT") -> None:
        self.table = table
        self.meta = table.meta
        self.source = source
        columns = [table.rows[f].tolist() for f in SIGNATURE_FIELDS]
        self._index = {sig: i for i, sig in enumerate(zip(*columns, strict=True))}
        self._latency = table.rows["latency_ms"].to_numpy(dtype=float)
        self.calibration = Calibration.from_dict(table.meta.calibration)
        self._type_index = {t: i for i, t in enumerate(OP_TYPES)}
        self._cache: dict[tuple, object] = {}

    def _check_settings(self, img_size: int | None, batch: int | None) -> None:
        for name, value in (("img_size", img_size), ("batch", batch)):
            if value is not None and value != getattr(self.meta, name):
                raise LutError(f"{self.source}: measured at {name}={getattr(self.meta, name)}, cannot predict for "
                               f"{name}={value}; build a LUT with those settings")

    def op_sums(self, specs: list[ArchSpec]) -> np.ndarray:
        """Uncalibrated per-op-type latency sums, shape (len(specs), len(OP_TYPES)).

        Each distinct stage (and stem, and tail) is resolved to (type, latency × count) pairs once and
        cached by value, so a spec costs a few dictionary lookups and additions; calibration is then one
        matrix product for all specs.
        """
        width = len(OP_TYPES)
        rows = []
        for spec in specs:
            acc = [0.0] * width
            for pairs in self._pieces(spec):
                for t, ms in pairs:
                    acc[t] += ms
            rows.append(acc)
        return np.array(rows, dtype=float).reshape(len(rows), width)

    def _pieces(self, spec: ArchSpec) -> list[tuple[tuple[int, float], ...]]:
        """(type index, ms) pairs of the stem, each stage and the tail, from the per-piece cache."""
        meta, cache = self.meta, self._cache
        pieces = []
        in_ch, size = spec.stages[0].width, stage_input_size(meta.img_size)
        key = ("stem", spec.in_chans, in_ch)
        if key not in cache:
            cache[key] = self._resolve(spec, [(stem_signature(spec.in_chans, in_ch, meta.img_size, meta.batch), 1)])
        pieces.append(cache[key])
        for stage in spec.stages:
            key = (stage, in_ch, size)
            if key not in cache:
                once, block, out_size = stage_signatures(stage, in_ch, size, meta.batch)
                cache[key] = self._resolve(spec, [(sig, 1) for sig in once] + [(block, stage.depth)]), out_size
            pairs, size = cache[key]
            pieces.append(pairs)
            in_ch = stage.width
        key = ("tail", in_ch, size, spec.num_classes)
        if key not in cache:
            tail = tail_signatures(in_ch, size, spec.num_classes, meta.batch)
            cache[key] = self._resolve(spec, [(sig, 1) for sig in tail])
        pieces.append(cache[key])
        return pieces

    def _resolve(self, spec: ArchSpec, counted: list) -> tuple[tuple[int, float], ...]:
        out = []
        for sig, count in counted:
            i = self._index.get(sig)
            if i is None:
                self._raise_missing(spec)
            out.append((self._type_index[sig[0]], float(self._latency[i]) * count))
        return tuple(out)

    def _raise_missing(self, spec: ArchSpec) -> None:
        keys = [op.key for op, _ in op_counts(spec, self.meta.img_size, self.meta.batch)]
        missing = self.table.missing(keys)
        raise LutError(f"{self.source}: lacks {len(missing)} op(s) of spec {spec.arch_id} (first: {missing[0]}); "
                       f"measure them with `fastvit-nas lut build --spec SPEC.json --out {self.source}` "
                       "on the LUT's device")

    def predict_many(self, specs: list[ArchSpec], img_size: int | None = None, batch: int | None = None,
                     calibrated: bool = True) -> np.ndarray:
        """Predicted latency in ms for each spec."""
        self._check_settings(img_size, batch)
        sums = self.op_sums(list(specs))
        return self.calibration.apply(sums) if calibrated else sums.sum(axis=1)

    def trust(self) -> dict[str, float | None]:
        """How far to trust a prediction: the LUT's validation and calibration figures (None if absent)."""
        v = self.meta.validation or {}
        return {"validation_mape": v.get("mape"), "validation_within_10": v.get("within_10"),
                "validation_n": v.get("n"), "calibration_loo_mape": self.calibration.loo_mape}

    def predict(self, spec: ArchSpec, img_size: int | None = None, batch: int | None = None) -> float:
        return float(self.predict_many([spec], img_size, batch)[0])


def predict(spec: ArchSpec, lut: LatencyTable | Path | str, img_size: int | None = None,
            batch: int | None = None) -> float:
    """Calibrated latency (ms) of one spec on the LUT's device; for many specs build a `Predictor` once."""
    if isinstance(lut, LatencyTable):
        return Predictor(lut).predict(spec, img_size, batch)
    return Predictor(LatencyTable.load(Path(lut)), str(lut)).predict(spec, img_size, batch)
