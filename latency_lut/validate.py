"""Validation: how right the LUT is, in numbers, on held-out networks measured end-to-end.

Held-out specs (never the calibration ones) are measured by the LUT's own backend and protocol on the
device the LUT describes (its fingerprint must match this machine), then compared with the prediction:
MAPE, the share within ±5 % and ±10 %, Spearman and Kendall rank correlation, and a predicted-vs-measured
scatter plot. The figures are stored in the LUT metadata so `lut show` reports them with the table.

With `remeasure`, the held-out networks are measured end-to-end a second time and the same figures are computed
for the second measurement against the first: the machine's own repeatability. No table can predict a
measurement better than the measurement predicts itself, so this is the ceiling to read the LUT's figures
against (on a shared virtual machine it can be far below nn-Meter's 99 % within ±10 %).

With `recalibrate_first`, the LUT's calibration networks are re-timed in the same sweeps as the held-out ones,
interleaved (`build.recalibrate`): a host whose speed drifted since the build then shows the table's own error
rather than the drift. The figures of the build-time calibration on the same measurements are kept beside them
(`as_built`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from ..fastvit.spec import ArchSpec
from .backends import Backend, get_backend
from .build import calibration_warnings, measure_missing, measure_networks, new_meta, recalibrate
from .measure import Protocol
from .ops import op_counts
from .predict import Predictor
from .spaces import SpaceSource
from .speed import speed_normalised
from .table import LatencyTable, LutError, LutMeta

REPEAT_WARN = 90.0
"""The share (%) of held-out networks repeating within ±10 % of their first measurement below which a validation
warns that the host's noise, not the table, sets its figures. Of the 71 fidelity runs stored under
`benchmarks/results/`, the 22 below it scored 42-94 % within ±10 % (median 71 %), the 49 at or above it 46-100 %
(median 92 %, 14 of them 98 % or more)."""


@dataclass(frozen=True)
class ValidationReport:
    """Predicted-vs-measured figures of one validation run."""

    n: int
    mape: float
    within_5: float
    within_10: float
    spearman: float
    kendall: float
    ops_filled: int
    seconds: float
    plot: str | None
    arch_ids: list[str]
    predicted_ms: list[float]
    measured_ms: list[float]
    remeasured_ms: list[float] | None = None
    repeatability: dict[str, float] | None = None
    """`figures(remeasured, measured)`: the noise ceiling, when the networks were measured twice."""
    as_built: dict[str, float] | None = None
    """The figures of the build-time calibration, when the LUT was recalibrated before measuring."""
    drift: float | None = None
    """Calibration networks now / at the last calibration (median ratio), when recalibrated."""
    slowdowns: list[float] | None = None
    """Per measured network, the host's slowdown its time was divided by (`speed.py`; all 1.0 without one)."""
    remeasured_slowdowns: list[float] | None = None

    @property
    def warnings(self) -> list[str]:
        """What a user should hear before reading the figures as the table's own error."""
        return repeat_warnings(self.repeatability)

    def summary(self) -> dict:
        """The figures without the per-spec lists."""
        lists = ("arch_ids", "predicted_ms", "measured_ms", "remeasured_ms", "slowdowns", "remeasured_slowdowns")
        return {k: v for k, v in asdict(self).items() if k not in lists}


def repeat_warnings(repeatability: dict[str, float] | None) -> list[str]:
    """The warning a validation whose networks did not repeat themselves gets, from its `repeatability` figures."""
    repeat = (repeatability or {}).get("within_10")
    if repeat is None or repeat >= REPEAT_WARN:
        return []
    return [f"the held-out networks repeated within ±10 % of their first measurement for {repeat:.0f} % of them "
            f"(usually {REPEAT_WARN:.0f} % or more): the host's noise, not the table, sets these figures; "
            "validate again when the host is quieter"]


def stored_warnings(meta: LutMeta) -> list[str]:
    """The warnings of the LUT's last build and validation, from the figures its metadata keeps: `lut show` repeats
    them, so a table handed on carries its caveats with it."""
    return (calibration_warnings((meta.calibration or {}).get("fit") or {})
            + repeat_warnings((meta.validation or {}).get("repeatability")))


def figures(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE (%), shares within ±5 % / ±10 % (%), Spearman and Kendall of predicted vs measured."""
    rel = np.abs(predicted - measured) / measured
    return {"mape": float(rel.mean() * 100), "within_5": float((rel <= 0.05).mean() * 100),
            "within_10": float((rel <= 0.10).mean() * 100),
            "spearman": float(spearmanr(predicted, measured).statistic) if len(rel) > 1 else float("nan"),
            "kendall": float(kendalltau(predicted, measured).statistic) if len(rel) > 1 else float("nan")}


def held_out_specs(lut: Path, space: SpaceSource, n: int, seed: int) -> list[ArchSpec]:
    """`n` distinct specs of the space that are not among the LUT's calibration networks."""
    points = (LatencyTable.load(lut).meta.calibration or {}).get("points", [])
    return space.sample(n, seed, exclude={p["arch_id"] for p in points})


def backend_for(meta: LutMeta, protocol: Protocol | None = None) -> Backend:
    """A backend with the LUT's settings and protocol (or `protocol`), so validation measures exactly as the build
    did."""
    return get_backend(meta.backend, device=meta.device.get("kind", "?"), dtype=meta.dtype,
                       threads=meta.threads or 1, protocol=protocol or Protocol(**meta.measuring_protocol()))


def scatter_plot(predicted: np.ndarray, measured: np.ndarray, stats: dict[str, float], title: str,
                 path: Path) -> None:
    """Predicted vs measured with the y = x line and the ±10 % band (matplotlib, Agg, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    hi = float(max(predicted.max(), measured.max())) * 1.05
    line = np.array([0, hi])
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.plot(line, line, color="tab:green", lw=1)
    ax.scatter(measured, predicted, s=12)
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="measured (ms)", ylabel="predicted (ms)")
    ax.set_title(f"{title}\nMAPE {stats['mape']:.1f} %, ±10 %: {stats['within_10']:.0f} %, "
                 f"Spearman {stats['spearman']:.3f}", fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def backend_here(table: LatencyTable, lut: Path, backend: Backend | None = None) -> tuple[Backend, LutMeta]:
    """The backend that re-measures for `table` on this machine, refused unless this is the LUT's device.

    Its timings are divided by the host's slowdown against the LUT's speed reference, as the build's were.
    """
    meta = table.meta
    if meta.device.get("kind") not in ("cpu", "cuda"):
        raise LutError(f"{lut}: measured on {meta.describe_device()}, which this machine cannot run; measure "
                       "it on that device")
    backend = backend or backend_for(meta)
    here = new_meta(backend, meta.img_size, meta.batch)
    meta.check_compatible(here, str(lut), versions=False)
    return speed_normalised(backend, meta), here


def recalibrate_lut(lut: Path, backend: Backend | None = None, progress: bool = False) -> float:
    """Re-time the calibration networks of the LUT file on this machine, refit and save; returns the drift."""
    lut = Path(lut)
    table = LatencyTable.load(lut)
    backend, _ = backend_here(table, lut, backend)
    drift, _ = recalibrate(table, backend, progress)
    table.save(lut)
    return drift


def validate(lut: Path, specs: list[ArchSpec], plot: Path | None = None, backend: Backend | None = None,
             progress: bool = False, remeasure: bool = False, recalibrate_first: bool = False) -> ValidationReport:
    """Measure `specs` end-to-end on this machine and compare with the LUT; stores the figures in the LUT.

    Ops of the specs that the LUT lacks are measured first (same protocol), provided this machine and its
    library versions match the LUT; the count is reported as `ops_filled`.
    """
    start = time.monotonic()
    lut = Path(lut)
    table = LatencyTable.load(lut)
    meta = table.meta
    backend, here = backend_here(table, lut, backend)
    held_out = {p["arch_id"] for p in (meta.calibration or {}).get("points", [])}
    specs = [s for s in specs if s.arch_id not in held_out]
    if not specs:
        raise LutError("validate: no held-out specs (all were calibration specs)")
    if table.missing(k for s in specs for k in _keys(s, meta)):
        meta.check_compatible(here, str(lut), versions=True)
    filled = measure_missing(table, backend, specs, lut, progress).measured
    stale, drift = None, None
    if recalibrate_first:
        stale = Predictor(table, str(lut)).predict_many(specs)
        drift, timings = recalibrate(table, backend, progress, alongside=specs)
    else:
        timings = measure_networks(backend, specs, meta.img_size, meta.batch, progress)
    measured = np.array([t.latency_ms for t in timings])
    again = measure_networks(backend, specs, meta.img_size, meta.batch, progress, desc="re-measure") if remeasure \
        else None
    remeasured = None if again is None else np.array([t.latency_ms for t in again])
    predicted = Predictor(table, str(lut)).predict_many(specs)
    stats = figures(predicted, measured)
    if plot is not None:
        scatter_plot(predicted, measured, stats, f"{meta.backend} {meta.dtype} b{meta.batch} {meta.img_size}px on "
                     f"{meta.describe_device()}", plot)
    report = ValidationReport(n=len(specs), ops_filled=filled, seconds=time.monotonic() - start,
                              plot=str(plot) if plot else None, arch_ids=[s.arch_id for s in specs],
                              predicted_ms=predicted.tolist(), measured_ms=measured.tolist(),
                              remeasured_ms=None if remeasured is None else remeasured.tolist(),
                              slowdowns=[t.slowdown for t in timings],
                              remeasured_slowdowns=None if again is None else [t.slowdown for t in again],
                              repeatability=None if remeasured is None else figures(remeasured, measured),
                              as_built=None if stale is None else figures(stale, measured), drift=drift, **stats)
    meta.validation = {**report.summary(), "validated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "torch_version": here.torch_version, "backend_version": here.backend_version}
    table.save(lut)
    return report


def _keys(spec: ArchSpec, meta: LutMeta) -> list[str]:
    return [op.key for op, _ in op_counts(spec, meta.img_size, meta.batch)]
