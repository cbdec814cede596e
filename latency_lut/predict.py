"""Prediction: sum op latencies per op type, then apply the calibration fitted on end-to-end measurements.

Isolated ops miss what a whole network pays between them (cache refills, allocator and dispatch overheads,
on GPU launch gaps), so the raw sum is biased. A linear calibration
`offset + Σ_t scale_t · sum_t + Σ_t call_ms_t · calls_t`, fitted on a handful of networks measured end-to-end
with the same protocol, removes that bias. Scales are kept positive and bounded (`SCALE_BOUNDS`) and per-call
costs non-negative, so adding or widening ops can never lower a prediction.

Three models are fitted, from the fewest parameters up: one global scale; one scale per op group; one global
scale plus a cost per block call of each block kind. A richer model replaces a simpler one only when it cuts the
leave-one-out error on the calibration points by `RICHER_MODEL_GAIN`, so a dozen noisy points do not buy
parameters they cannot support. The per-call model is there for ONNX Runtime: on this host its attention
blocks run slower inside a network than alone, by a roughly constant amount per block (the profiler puts it in
the attention's matrix products, 1.7 times slower in the network while the convolutions match), which one
scale cannot express. Refitting the stored calibration points of six ONNX Runtime tables with it moved their
held-out networks within ±10 % from 88 to 96 % and 74 to 94 % (`benchmarks/results/lut_fidelity_ort_replicas.json`,
128 and 256 px, the calmest host), 64 to 72 % (`lut_fidelity_ort_interleaved_128.json`) and left the others
unchanged; none of the six torch tables chose it. Chosen in two later builds on noisier hosts, it cost 12 and 6
points against the single scale.

Predicting many specs is vectorized: each spec becomes a few (op type, ms, count) triples through the cached
decomposition, and numpy sums them per op type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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

BLOCK_GROUPS = ("repmixer", "attention")
"""The groups that may get a cost per call: blocks repeat, so a fixed in-network cost per block adds up."""

RICHER_MODEL_GAIN = 0.2
"""The share of leave-one-out error a model with more parameters must remove to be kept over a simpler one. On
the stored tables, plain "lower wins" let two torch tables pick the per-call model on a 2-20 % edge and lose 4-8
points within ±10 % on held-out networks; at 20 % no torch table moved and the ONNX Runtime gains stayed."""

MODELS = ("global", "per_group", "per_call")
"""The calibration models, from the fewest parameters up."""

MIN_CALIBRATION_POINTS = 3
SCALE_BOUNDS = (0.5, 3.0)
"""A scale outside this range means the end-to-end points are noise, not a cache or overhead effect; bounding
it keeps a few noisy calibration networks from flattening the ranking (scale 0 predicts one constant), and a
positive lower bound makes every extra or wider op strictly add time."""


@dataclass(frozen=True)
class Calibration:
    """`offset_ms + Σ_t scale[t] · sum_t + Σ_t call_ms[t] · calls_t`; the identity is offset 0, scales 1, no
    per-call costs."""

    offset_ms: float = 0.0
    scales: tuple[float, ...] = (1.0,) * len(OP_TYPES)
    call_ms: tuple[float, ...] = (0.0,) * len(OP_TYPES)
    model: str = "none"
    fit_mape: float | None = None
    loo_mape: float | None = None
    points: int = 0

    def apply(self, sums: np.ndarray, calls: np.ndarray) -> np.ndarray:
        return self.offset_ms + sums @ np.asarray(self.scales) + calls @ np.asarray(self.call_ms)

    def to_dict(self) -> dict:
        return {**asdict(self), "scales": dict(zip(OP_TYPES, self.scales, strict=True)),
                "call_ms": dict(zip(OP_TYPES, self.call_ms, strict=True))}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        if not data or "fit" not in data:
            return cls()
        fit = dict(data["fit"])
        fit["scales"] = tuple(float(fit["scales"][t]) for t in OP_TYPES)
        fit["call_ms"] = tuple(float(fit.get("call_ms", {}).get(t, 0.0)) for t in OP_TYPES)
        return cls(**fit)


@dataclass(frozen=True)
class _Model:
    """Which op groups get a scale of their own and which get a cost per call."""

    scaled: list[tuple[str, ...]]
    called: list[tuple[str, ...]]

    @property
    def parameters(self) -> int:
        return 1 + len(self.scaled) + len(self.called)


def _columns(values: np.ndarray, groups: list[tuple[str, ...]]) -> list[np.ndarray]:
    return [values[:, [OP_TYPES.index(t) for t in g]].sum(axis=1) for g in groups]


def _solve(sums: np.ndarray, calls: np.ndarray, measured: np.ndarray, model: _Model) -> Calibration:
    """Least squares on relative error (rows weighted by 1/measured): offset free, scales in `SCALE_BOUNDS`,
    per-call costs non-negative."""
    design = np.column_stack([np.ones(len(sums)), *_columns(sums, model.scaled), *_columns(calls, model.called)])
    lower = [-np.inf] + [SCALE_BOUNDS[0]] * len(model.scaled) + [0.0] * len(model.called)
    upper = [np.inf] + [SCALE_BOUNDS[1]] * len(model.scaled) + [np.inf] * len(model.called)
    coef = lsq_linear(design / measured[:, None], np.ones(len(measured)), bounds=(lower, upper)).x
    scales, call_ms = np.ones(len(OP_TYPES)), np.zeros(len(OP_TYPES))
    for values, groups, fitted in ((scales, model.scaled, coef[1:1 + len(model.scaled)]),
                                   (call_ms, model.called, coef[1 + len(model.scaled):])):
        for group, value in zip(groups, fitted, strict=True):
            values[[OP_TYPES.index(t) for t in group]] = value
    return Calibration(offset_ms=float(coef[0]), scales=tuple(map(float, scales)), call_ms=tuple(map(float, call_ms)))


def _mape(pred: np.ndarray, measured: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - measured) / measured) * 100)


def fit_calibration(sums: np.ndarray, calls: np.ndarray, measured: np.ndarray,
                    models: tuple[str, ...] = MODELS) -> Calibration:
    """Fit the calibration models the points can support, from the fewest parameters up, and keep the simplest
    one that no richer model beats by `RICHER_MODEL_GAIN` in leave-one-out MAPE.

    `sums` are the per-type latency sums of each network and `calls` its per-type op counts. `models` narrows
    the choice (one name: that model alone), so a replay can score each model against the selection.
    """
    measured = np.asarray(measured, dtype=float)
    if len(measured) < MIN_CALIBRATION_POINTS:
        raise LutError(f"calibration needs at least {MIN_CALIBRATION_POINTS} end-to-end measurements, "
                       f"got {len(measured)}")
    if not models or set(models) - set(MODELS):
        raise LutError(f"calibration models must be among {', '.join(MODELS)}, got {', '.join(models) or 'none'}")
    present = [name for name, g in GROUPS.items() if calls[:, [OP_TYPES.index(t) for t in g]].sum() > 0]
    candidates = {"global": _Model([tuple(OP_TYPES)], []),
                  "per_group": _Model([GROUPS[name] for name in present], []),
                  "per_call": _Model([tuple(OP_TYPES)], [GROUPS[name] for name in present if name in BLOCK_GROUPS])}
    best: Calibration | None = None
    for name, model in candidates.items():
        if name not in models or (name != "global" and len(measured) < 2 * model.parameters):
            continue
        loo = []
        for i in range(len(measured)):
            keep = np.arange(len(measured)) != i
            held = _solve(sums[keep], calls[keep], measured[keep], model).apply(sums[i:i + 1], calls[i:i + 1])[0]
            loo.append(abs(held - measured[i]) / measured[i] * 100)
        fitted = _solve(sums, calls, measured, model)
        cal = replace(fitted, model=name, fit_mape=_mape(fitted.apply(sums, calls), measured),
                      loo_mape=float(np.mean(loo)), points=len(measured))
        if best is None or cal.loo_mape < best.loo_mape * (1 - RICHER_MODEL_GAIN):
            best = cal
    if best is None:
        raise LutError(f"calibration: {len(measured)} networks are too few to fit the {' or '.join(models)} model "
                       "(two per parameter)")
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

    def op_totals(self, specs: list[ArchSpec]) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated per-op-type latency sums and op counts, each of shape (len(specs), len(OP_TYPES)).

        Each distinct stage (and stem, and tail) is resolved to (type, latency × count, count) triples once and
        cached by value, so a spec costs a few dictionary lookups and additions; calibration is then one
        matrix product for all specs.
        """
        width = len(OP_TYPES)
        sums, calls = [], []
        for spec in specs:
            ms, count = [0.0] * width, [0] * width
            for triples in self._pieces(spec):
                for t, op_ms, n in triples:
                    ms[t] += op_ms
                    count[t] += n
            sums.append(ms)
            calls.append(count)
        shape = (len(specs), width)
        return np.array(sums, dtype=float).reshape(shape), np.array(calls, dtype=float).reshape(shape)

    def _pieces(self, spec: ArchSpec) -> list[tuple[tuple[int, float, int], ...]]:
        """(type index, ms, count) triples of the stem, each stage and the tail, from the per-piece cache."""
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
            triples, size = cache[key]
            pieces.append(triples)
            in_ch = stage.width
        key = ("tail", in_ch, size, spec.num_classes)
        if key not in cache:
            tail = tail_signatures(in_ch, size, spec.num_classes, meta.batch)
            cache[key] = self._resolve(spec, [(sig, 1) for sig in tail])
        pieces.append(cache[key])
        return pieces

    def _resolve(self, spec: ArchSpec, counted: list) -> tuple[tuple[int, float, int], ...]:
        out = []
        for sig, count in counted:
            i = self._index.get(sig)
            if i is None:
                self._raise_missing(spec)
            out.append((self._type_index[sig[0]], float(self._latency[i]) * count, count))
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
        sums, calls = self.op_totals(list(specs))
        return self.calibration.apply(sums, calls) if calibrated else sums.sum(axis=1)

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
