"""Building a LUT: enumerate the ops of a space or a list of specs, measure only the missing ones, calibrate.

Each op is built alone (`modules.op_module`: the timm module the full network runs, inference-time and
fused) and timed on its real input shape, in `protocol.passes` sweeps over all missing ops (fastest kept); the
calibration networks are timed end-to-end in the same sweeps, and in more after them up to
`protocol.network_passes`.
The LUT file is rewritten every `checkpoint_s` seconds and at the end, so an interrupted build loses little
and a rerun resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..fastvit.model import build_model
from ..fastvit.spec import ArchSpec
from .backends import Backend
from .design import CALIBRATION_NETWORKS, calibration_specs
from .in_context import Context, InContext, block_contexts, block_timing
from .measure import T, Timing, best_of_passes, calm_first
from .ops import Op, unique_ops
from .predict import MIN_CALIBRATION_POINTS, Predictor, fit_calibration
from .spaces import SpaceSource
from .speed import speed_normalised
from .table import LatencyTable, LutError, LutMeta
from .trend import above_trend


@dataclass(frozen=True)
class Measured:
    """What `measure_missing` did: ops needed and measured, entries timed again and how many of those came out
    faster (`trend.py`), the timings made against those its sweeps planned, and the networks' timings."""

    needed: int
    measured: int
    rechecked: int
    lowered: int
    timings: int
    planned: int
    networks: list[Timing]


@dataclass(frozen=True)
class BuildReport:
    """What a build did: ops needed and measured, entries re-checked, timings made against those planned,
    calibration points added, time taken. On a noisy host the timings outgrow the plan (sweeps that disagree
    earn extra ones, items timed only in slow spells are timed again), and the build's time follows them."""

    path: str
    unique_ops: int
    measured: int
    reused: int
    rechecked: int
    lowered: int
    timings: int
    planned_timings: int
    calibration_measured: int
    calibration: dict
    seconds: float

    @property
    def warnings(self) -> list[str]:
        """Derived from the fit, not stored beside it, so a report cannot disagree with its own figures."""
        return calibration_warnings(self.calibration)


CALIBRATION_LOO_WARN = 8.0
"""Calibration leave-one-out MAPE (%) above which a build warns that its ops were timed in differing host states.
Of the 34 tables stored under `benchmarks/results/` (full space and op subsets), the five above 8 % (8.2-12.8 %)
all scored 56-88 % within ±10 % on held-out networks, three of them where the host repeated itself at 98-100 %;
the others fitted at 0.9-7.1 %."""


def calibration_warnings(fit: dict) -> list[str]:
    """What a user should hear about a calibration fit before trusting the LUT's predictions."""
    loo = fit.get("loo_mape")
    if loo is None or loo <= CALIBRATION_LOO_WARN:
        return []
    return [f"calibration fits its {fit['points']} networks only to {loo:.1f} % (leave-one-out MAPE, usually "
            f"under {CALIBRATION_LOO_WARN:.0f} %): the host's speed likely changed while the ops were timed; run "
            "`fastvit-nas lut validate` before trusting this LUT, or build it again on a calmer host"]


def new_meta(backend: Backend, img_size: int, batch: int, space: str | None = None) -> LutMeta:
    """The metadata a fresh LUT measured by `backend` at these settings gets."""
    return LutMeta(backend=backend.name, backend_version=backend.version(), torch_version=torch.__version__,
                   device=backend.fingerprint(), dtype=backend.dtype, batch=batch, img_size=img_size,
                   threads=backend.threads, protocol=backend.protocol.to_dict(), space=space)


def open_table(path: Path, meta: LutMeta) -> LatencyTable:
    """The existing LUT at `path` if it matches `meta` (device, settings, versions), else a new one."""
    if not Path(path).exists():
        return LatencyTable(meta)
    table = LatencyTable.load(path)
    table.meta.check_compatible(meta, str(path))
    return table


def space_specs(source: SpaceSource, img_size: int, batch: int, seed: int = 0, patience: int = 3000,
                max_samples: int = 200_000) -> list[ArchSpec]:
    """Specs that together contain every op the space can produce at this input size and batch.

    Samples until `patience` consecutive samples add no new op key (or `max_samples`), keeping only
    the specs that contributed a new key; the ops of a space are far fewer than its networks.
    """
    seen: set[str] = set()
    keep: list[ArchSpec] = []
    idle = 0
    for n, spec in enumerate(source.samples(seed)):
        new = [k for k in unique_ops([spec], img_size, batch) if k not in seen]
        if new:
            seen.update(new)
            keep.append(spec)
            idle = 0
        else:
            idle += 1
        if idle >= patience or n >= max_samples:
            break
    return keep


def network_timers(backend: Backend, img_size: int, batch: int) -> Callable[[ArchSpec], Timing]:
    """One sweep of a fused network's end-to-end latency, by the same backend and protocol as its ops
    (`Backend.network_timer`): each network is built, and exported where the backend exports, once for all its
    sweeps, and kept until the returned function is dropped."""
    timers: dict[str, Callable[[], Timing]] = {}

    def time_network(spec: ArchSpec) -> Timing:
        if spec.arch_id not in timers:
            shape = (batch, spec.in_chans, img_size, img_size)
            timers[spec.arch_id] = backend.network_timer(build_model(spec, inference=True), shape)
        return timers[spec.arch_id]()

    return time_network


def measure_network(backend: Backend, spec: ArchSpec, img_size: int, batch: int) -> Timing:
    """End-to-end latency of the fused network in one sweep, by the same backend and protocol as its ops."""
    return network_timers(backend, img_size, batch)(spec)


def measure_missing(table: LatencyTable, backend: Backend, specs: Iterable[ArchSpec], path: Path | None = None,
                    progress: bool = False, checkpoint_s: float = 60.0,
                    networks: Sequence[ArchSpec] = ()) -> Measured:
    """Measure the ops of `specs` that `table` lacks (each unique op once per sweep), and `networks` end-to-end in
    the same sweeps and then alone up to `network_passes`; then time again the new entries that lie above their
    family's trend (`trend.py`).

    The networks (a build's calibration) are spread evenly through the ops, so that they meet the host in the
    states the ops met, and share their sweeps and their re-timing once a slow spell ends. Timed in one block
    after the ops, all twelve calibration networks of a 256 px ONNX Runtime build fell into one spell that
    outlasted the wait for calm; divided by its level (1.15) while the held-out networks were timed at 0.94, they
    made every prediction 7.7 % too fast (within ±10 %: 74 %, Spearman 0.997). Small blocks are timed inside a
    network (`in_context.py`): each chain of copies and each context alone is an item of the sweeps, and a block's
    entry is its share of the difference of their best sweeps, once both are final. The re-check comes after all
    sweeps, so its items meet the host minutes after their first timings, and an entry keeps the better of the
    two (`measure.calm_first`). A build resumed after an interruption re-checks only what it measures itself.
    """
    meta = table.meta
    protocol = backend.protocol
    specs = list(specs)
    needed = unique_ops(specs, meta.img_size, meta.batch)
    missing = [needed[k] for k in table.missing(needed)]
    contexts = block_contexts(specs, meta.img_size, meta.batch, protocol.context_max_side)
    inside = [InContext(contexts[op.key], op) for op in missing if op.key in contexts]
    measured = [*dict.fromkeys(item.context for item in inside), *inside,
                *(op for op in missing if op.key not in contexts)]
    items: list[Op | InContext | Context | ArchSpec] = [
        networks[i] if is_network else measured[i] for is_network, i in _interleave(len(networks), len(measured))]
    passes = [protocol.network_passes if isinstance(item, ArchSpec) else
              protocol.context_passes if isinstance(item, InContext | Context) else protocol.passes for item in items]
    last_save = [time.monotonic()]
    network_timings: dict[str, Timing] = {}
    timers: dict[Context, Callable[[Op | None, int], Timing]] = {}
    context_timings: dict[Context, Timing] = {}
    chains: dict[Context, list[tuple[Op, Timing]]] = {}
    stored: dict[str, Timing] = {}
    time_network = network_timers(backend, meta.img_size, meta.batch)
    timings = [0]

    def timer(context: Context) -> Callable[[Op | None, int], Timing]:
        if context not in timers:
            timers[context] = backend.chain_timer(*context.parts(), context.in_shape, context.mid_shape)
        return timers[context]

    def time_item(item: Op | InContext | Context | ArchSpec) -> Timing:
        timings[0] += 1
        if isinstance(item, ArchSpec):
            return time_network(item)
        if isinstance(item, Context):
            return timer(item)(None, 0)
        if isinstance(item, InContext):
            return timer(item.context)(item.op, protocol.context_copies)
        return backend.time_op(item)

    def add(timed: list[tuple[Op, Timing]]) -> None:
        table.add(timed)
        stored.update((op.key, timing) for op, timing in timed)
        if path is not None and time.monotonic() - last_save[0] > checkpoint_s:
            table.save(path)
            last_save[0] = time.monotonic()

    def done(item: Op | InContext | Context | ArchSpec, timing: Timing) -> None:
        if isinstance(item, ArchSpec):
            network_timings[item.arch_id] = timing
            return
        if isinstance(item, Op):
            add([(item, timing)])
            return
        if isinstance(item, Context):
            context = item
            context_timings[context] = timing
        else:
            context = item.context
            chains.setdefault(context, []).append((item.op, timing))
        if context in context_timings:
            alone = context_timings[context]
            add([(op, block_timing(chain, alone, protocol.context_copies)) for op, chain in chains.pop(context, [])])

    _sweeps(backend, items, time_item, passes, "ops" + (" + networks" if networks else ""), "item", progress, done)
    suspects = above_trend(table.rows, protocol.recheck_tol) & stored.keys()
    again = [item for item in measured if not isinstance(item, Context) and _op(item).key in suspects]
    lowered = []
    if again:
        retimed = _sweeps(backend, again, time_item, [protocol.recheck_passes] * len(again), "re-check", "item",
                          progress)
        rank = calm_first(backend)
        for item, timing in zip(again, retimed, strict=True):
            if isinstance(item, InContext):
                timing = block_timing(timing, context_timings[item.context], protocol.context_copies)
            if rank(timing) < rank(stored[_op(item).key]):
                lowered.append((_op(item), timing))
        table.retime(lowered)
    return Measured(len(needed), len(missing), len(again), len(lowered), timings[0],
                    sum(passes) + protocol.recheck_passes * len(again),
                    [network_timings[spec.arch_id] for spec in networks])


def _op(item: Op | InContext) -> Op:
    return item.op if isinstance(item, InContext) else item


def measure_networks(backend: Backend, specs: list[ArchSpec], img_size: int, batch: int,
                     progress: bool = False, desc: str = "end-to-end") -> list[Timing]:
    """End-to-end latencies of the fused networks, by the same backend and protocol as the ops, in the protocol's
    `network_passes` sweeps."""
    passes = [backend.protocol.network_passes] * len(specs)
    return _sweeps(backend, specs, network_timers(backend, img_size, batch), passes, desc, "net", progress)


def recalibrate(table: LatencyTable, backend: Backend, progress: bool = False,
                alongside: Sequence[ArchSpec] = ()) -> tuple[float, list[Timing]]:
    """Measure the LUT's calibration networks again, now, and refit on these points alone.

    A device's speed drifts between the build and the use (clocks, thermal state, other tenants of a shared
    host), while its ops keep their relative costs; re-timing the few calibration networks moves the whole
    table to the device's present state in seconds, without re-measuring thousands of ops. `alongside` networks
    (validation's held-out ones) are timed in the same sweeps, interleaved with the calibration networks, so a
    burst of interference lands on both alike instead of skewing the calibration alone. Returns the drift
    (median ratio of the new end-to-end latencies to the old ones) and the timings of `alongside`.
    """
    old = (table.meta.calibration or {}).get("points", [])
    if not old:
        raise LutError("recalibrate: the LUT has no calibration networks; build it with --calib N (N >= "
                       f"{MIN_CALIBRATION_POINTS})")
    specs = [ArchSpec.from_dict(p["spec"]) for p in old]
    order = _interleave(len(specs), len(alongside))
    both = [specs[i] if is_calibration else alongside[i] for is_calibration, i in order]
    timed = measure_networks(backend, both, table.meta.img_size, table.meta.batch, progress, desc="recalibration")
    split = {kind: [t for (is_calibration, _), t in zip(order, timed, strict=True) if is_calibration is kind]
             for kind in (True, False)}  # each in its own order: `_interleave` keeps it
    points = [_calibration_point(spec, t) for spec, t in zip(specs, split[True], strict=True)]
    refit(table, points)
    table.meta.calibration["recalibrated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    drift = float(np.median([new["measured_ms"] / prev["measured_ms"] for new, prev in zip(points, old, strict=True)]))
    return drift, split[False]


def _sweeps(backend: Backend, items: Sequence[T], time_one: Callable[[T], Timing], passes: list[int], desc: str,
            unit: str, progress: bool, on_done: Callable[[T, Timing], None] | None = None) -> list[Timing]:
    """`best_of_passes` by the backend's protocol (extra sweeps, agreement) and host, with a progress bar whose
    total is a floor, raised as items whose sweeps disagree get extra ones."""
    protocol = backend.protocol
    with tqdm(total=sum(passes), unit=unit, desc=desc, disable=not progress, dynamic_ncols=True) as bar:

        def timed(item: T) -> Timing:
            bar.total = max(bar.total, bar.n + 1)
            bar.update()
            return time_one(item)

        return best_of_passes(items, timed, passes, on_done, host=backend, extra=protocol.extra_passes,
                              agree_tol=protocol.agree_tol)


def _interleave(n_calibration: int, n_alongside: int) -> list[tuple[bool, int]]:
    """(is_calibration, index) pairs, each list spread evenly over the whole sequence and kept in its order."""
    keyed = [((i + 0.5) / n_calibration, True, i) for i in range(n_calibration)]
    keyed += [((j + 0.5) / n_alongside, False, j) for j in range(n_alongside)]
    return [(is_calibration, i) for _, is_calibration, i in sorted(keyed)]


def _calibration_point(spec: ArchSpec, timing: Timing) -> dict:
    return {"arch_id": spec.arch_id, "spec": spec.to_dict(), "measured_ms": timing.latency_ms,
            "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "count": timing.count,
            "slowdown": timing.slowdown}


def refit(table: LatencyTable, points: list[dict]) -> None:
    """Fit the calibration on the stored end-to-end points and keep both in the LUT metadata.

    With fewer than three points nothing is fitted and predictions are the raw sums.
    """
    if len(points) < MIN_CALIBRATION_POINTS:
        table.meta.calibration = {"points": points}
        return
    specs = [ArchSpec.from_dict(p["spec"]) for p in points]
    sums, calls = Predictor(table).op_totals(specs)
    fit = fit_calibration(sums, calls, np.array([p["measured_ms"] for p in points]))
    table.meta.calibration = {"points": points, "fit": fit.to_dict()}


def build_lut(out: Path, backend: Backend, *, specs: list[ArchSpec] | None = None, space: SpaceSource | None = None,
              calibration: list[ArchSpec] | None = None, img_size: int = 256, batch: int = 1,
              calibration_n: int = CALIBRATION_NETWORKS, seed: int = 0, progress: bool = False) -> BuildReport:
    """Create or extend the LUT at `out` with every op of `specs` and of `space`, then calibrate.

    Only ops missing from an existing LUT are measured; an existing LUT of another device, setting or library
    version is refused. Every timing is divided by the host's slowdown against the LUT's speed reference
    (`speed.py`) when the protocol has one. Calibration networks: `calibration` if given, else `calibration_n`
    networks of the space chosen to pin the fit down (`design.py`), else the first `calibration_n` of `specs`.
    """
    start = time.monotonic()
    out = Path(out)
    table = open_table(out, new_meta(backend, img_size, batch, space.ref if space else None))
    backend = speed_normalised(backend, table.meta)
    wanted = list(specs or [])
    if space is not None:
        wanted += space_specs(space, img_size, batch, seed)
    if calibration is None:
        calibration = (calibration_specs(space, calibration_n, img_size) if space is not None
                       else list({s.arch_id: s for s in wanted}.values())[:calibration_n])
    points = (table.meta.calibration or {}).get("points", [])
    have = {p["arch_id"] for p in points}
    todo = list({s.arch_id: s for s in calibration if s.arch_id not in have}.values())
    done = measure_missing(table, backend, wanted + calibration, out, progress, networks=todo)
    if calibration:
        refit(table, [*points, *(_calibration_point(spec, t) for spec, t in zip(todo, done.networks, strict=True))])
    table.save(out)
    return BuildReport(path=str(out), unique_ops=done.needed, measured=done.measured,
                       reused=done.needed - done.measured, rechecked=done.rechecked, lowered=done.lowered,
                       timings=done.timings, planned_timings=done.planned,
                       calibration_measured=len(todo), calibration=(table.meta.calibration or {}).get("fit", {}),
                       seconds=time.monotonic() - start)
