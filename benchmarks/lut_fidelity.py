"""LUT fidelity on this machine: held-out specs of the default space, predicted vs measured end-to-end.

For each backend and input size: build a LUT (the full default space with `--full-space`, else only the ops the
held-out and calibration networks need), calibrate on `--calib` networks (picked by FLOPs spread,
`latency_lut/design.py`), measure `--n` held-out networks end-to-end with the same protocol, and report the share
within ±10 % / ±5 %, MAPE, Spearman and Kendall, plus the build time and unique-op count. The machine is shared,
so the load average is recorded before and after each configuration, and the held-out networks are measured twice
(the machine's own repeatability, the ceiling of any table). With `--recalibrate`, the calibration networks are
re-timed in the same sweeps as the held-out ones and the build-time calibration's figures are kept beside
(`as_built`): the share of the error that is the host's drift since the build. Writes
benchmarks/results/lut_fidelity.json (LUTs and scatter PNGs in the folder of the same name).

    .venv/bin/python benchmarks/lut_fidelity.py                      # full run
    .venv/bin/python benchmarks/lut_fidelity.py --n 10 --img-sizes 128 --backends torch --calib 6   # quick
    .venv/bin/python benchmarks/lut_fidelity.py --recalibrate --out benchmarks/results/lut_fidelity_recalibrated.json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime
import timm
import torch

from fastvit_nas.latency_lut import (
    LatencyTable,
    Predictor,
    Protocol,
    Timing,
    build_lut,
    get_backend,
    resolve_space,
    unique_ops,
    validate,
)
from fastvit_nas.latency_lut import build as build_module
from fastvit_nas.latency_lut.build import new_meta, refit
from fastvit_nas.latency_lut.design import CALIBRATION_NETWORKS, calibration_specs
from fastvit_nas.latency_lut.ops import stage_ops
from fastvit_nas.latency_lut.table import speed_summary
from fastvit_nas.latency_lut.validate import ValidationReport, figures
from fastvit_nas.workers import worker_pool

RESULTS = Path(__file__).parent / "results"


def prediction_rate(space_ref: str, n: int = 3000, seed: int = 3) -> dict[str, float]:
    """Specs per wall-second and per CPU-second of a vectorized prediction with cold caches (best of three).

    Uses a table with unit latencies for every op of `n` sampled specs: speed does not depend on the values.
    """
    specs = resolve_space(space_ref).sample(n, seed)
    table = LatencyTable(new_meta(get_backend("torch"), img_size=256, batch=1))
    table.add([(op, Timing(1.0, 1.0, 1.0, 0.0, 1)) for op in unique_ops(specs, 256).values()])
    wall, cpu = [], []
    for _ in range(3):
        predictor = Predictor(table)
        stage_ops.cache_clear()
        w0, c0 = time.perf_counter(), time.process_time()
        predictor.predict_many(specs)
        wall.append(len(specs) / (time.perf_counter() - w0))
        cpu.append(len(specs) / max(time.process_time() - c0, 1e-9))
    return {"specs": len(specs), "wall_specs_per_s": max(wall), "cpu_specs_per_s": max(cpu)}


def _figures(f: dict) -> str:
    return (f"±10%: {f['within_10']:5.1f}%  ±5%: {f['within_5']:5.1f}%  MAPE {f['mape']:5.2f}%  "
            f"Spearman {f['spearman']:.4f}")


def unnormalised(lut: Path, report: ValidationReport, specs: list) -> dict:
    """The same run as if no speed reference had been used, side by side with the normalised figures.

    Every op, calibration point and held-out timing is multiplied back by the slowdown it was divided by, the
    calibration is refitted on those points, and the figures are recomputed: what the LUT would have scored
    without dividing by the slowdown. The items re-timed once the host was calm again (`Protocol.calm_wait_s`) keep
    their calm timings, so this isolates the division; compare a run with `--calm-wait-s 0` for the re-timing.
    """
    table = LatencyTable.load(lut)
    table.rows["latency_ms"] = table.rows["latency_ms"] * table.rows["slowdown"]
    refit(table, [{**p, "measured_ms": p["measured_ms"] * p.get("slowdown", 1.0)}
                  for p in table.meta.calibration["points"]])
    predicted = Predictor(table).predict_many(specs)
    measured = np.array(report.measured_ms) * np.array(report.slowdowns)
    remeasured = np.array(report.remeasured_ms) * np.array(report.remeasured_slowdowns)
    return {**figures(predicted, measured), "repeatability": figures(remeasured, measured)}


def slowdown_trace(lut: Path) -> dict:
    """The host's slowdown readings during build and validation: how much there was to normalise."""
    record = LatencyTable.load(lut).meta.speed_reference
    summary = speed_summary(record)
    return {**summary, "trace": record["trace"]} if summary else {}


@contextlib.contextmanager
def sweeps_logged(path: Path) -> Iterator[None]:
    """Every timing that the build's and validation's sweeps make, one JSON line each as it is made: which sweeps
    (`desc`), the item (op key or network id), its times, the divisor, whether it counted as calm and the calm
    level's anchor then. With every op given all its extra sweeps (`--agree-tol 0`), other rules for ending an
    op's sweeps can be replayed on the same timings (`benchmarks/sweep_rules_replay.py`)."""
    original = build_module._sweeps

    with gzip.open(path, "wt") as log:
        def logged(backend, items, time_one, passes, desc, unit, progress, on_done=None):
            calm = getattr(backend, "calm", None)

            def timed(item):
                timing = time_one(item)
                log.write(json.dumps({
                    "desc": desc, "item": getattr(item, "key", None) or getattr(item, "arch_id", None),
                    "latency_ms": timing.latency_ms, "measured_ms": timing.measured_ms,
                    "slowdown": timing.slowdown, "settled": backend.settled(timing),
                    "anchor": calm.anchor if calm else 1.0, "at": time.monotonic()}) + "\n")
                return timing

            return original(backend, items, timed, passes, desc, unit, progress, on_done)

        with mock.patch.object(build_module, "_sweeps", logged):
            yield


def run_one(backend_name: str, img: int, batch: int, args: argparse.Namespace, out_dir: Path) -> dict:
    space = resolve_space(args.space)
    held_out = space.sample(args.n, args.seed)
    calibration = calibration_specs(space, args.calib, img)
    backend = get_backend(backend_name, device=args.device, dtype=args.dtype, threads=args.threads,
                          protocol=Protocol(estimator=args.estimator, passes=args.passes,
                                            network_passes=args.network_passes, network_calls=args.network_calls,
                                            network_warmup_calls=args.network_warmup_calls,
                                            extra_passes=args.extra_passes,
                                            agree_tol=args.agree_tol,
                                            reference_s=args.reference_s, calm_wait_s=args.calm_wait_s,
                                            cold_weights_mb=args.cold_weights_mb, op_replicas=args.op_replicas,
                                            context_max_side=args.context_max_side, recheck_tol=args.recheck_tol))
    name = f"{backend_name}_{args.device}_{args.dtype}_b{batch}_{img}"
    lut = out_dir / f"{name}.parquet"
    lut.unlink(missing_ok=True)
    load_before = os.getloadavg()
    with sweeps_logged(out_dir / f"{name}_sweeps.jsonl.gz") if args.sweep_log else contextlib.nullcontext():
        build = build_lut(lut, backend, specs=held_out, space=space if args.full_space else None,
                          calibration=calibration, img_size=img, batch=batch, seed=args.seed, progress=args.progress)
        report = validate(lut, held_out, plot=out_dir / f"{name}.png", backend=backend,
                          progress=args.progress, remeasure=True, recalibrate_first=args.recalibrate)
    speed = slowdown_trace(lut)
    return {
        "unnormalised": unnormalised(lut, report, held_out) if speed else None, "slowdown": speed,
        "backend": backend_name, "device": args.device, "dtype": args.dtype, "img_size": img,
        "threads": args.threads, "batch": batch, "estimator": args.estimator, "passes": args.passes,
        "network_passes": args.network_passes, "network_calls": args.network_calls,
        "network_warmup_calls": args.network_warmup_calls,
        "extra_passes": args.extra_passes, "agree_tol": args.agree_tol,
        "cold_weights_mb": backend.protocol.cold_weights_mb, "op_replicas": backend.protocol.op_replicas,
        "context_max_side": backend.protocol.context_max_side, "recheck_tol": backend.protocol.recheck_tol,
        "n": report.n, "within_10": report.within_10, "within_5": report.within_5, "mape": report.mape,
        "spearman": report.spearman, "kendall": report.kendall, "repeatability": report.repeatability,
        "as_built": report.as_built, "drift": report.drift,
        "build_s": build.seconds, "unique_ops": build.unique_ops, "rechecked": build.rechecked,
        "lowered": build.lowered, "timings": build.timings, "planned_timings": build.planned_timings,
        "full_space": args.full_space,
        "calibration": build.calibration, "validate_s": report.seconds,
        "load_before": load_before, "load_after": os.getloadavg(), "lut": str(lut), "plot": report.plot,
        "per_spec": {"arch_id": report.arch_ids, "predicted_ms": report.predicted_ms,
                     "measured_ms": report.measured_ms, "remeasured_ms": report.remeasured_ms,
                     "slowdown": report.slowdowns, "remeasured_slowdown": report.remeasured_slowdowns},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="held-out specs per configuration")
    parser.add_argument("--img-sizes", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--calib", type=int, default=CALIBRATION_NETWORKS, help="calibration networks")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--space", default="default")
    parser.add_argument("--estimator", default=Protocol.estimator, choices=("median", "min"))
    parser.add_argument("--passes", type=int, default=Protocol.passes, help="sweeps over all ops; fastest kept")
    parser.add_argument("--network-passes", type=int, default=Protocol.network_passes,
                        help="sweeps over the end-to-end networks (calibration and held-out); fastest kept")
    parser.add_argument("--network-calls", type=int, default=Protocol.network_calls,
                        help="timed calls per sweep of a network (0: as an op's)")
    parser.add_argument("--network-warmup-calls", type=int, default=Protocol.network_warmup_calls,
                        help="warm-up calls before each sweep of a network")
    parser.add_argument("--extra-passes", type=int, default=Protocol.extra_passes,
                        help="more sweeps, at most, for an item whose two fastest disagree by over --agree-tol")
    parser.add_argument("--agree-tol", type=float, default=Protocol.agree_tol)
    parser.add_argument("--reference-s", type=float, default=Protocol.reference_s,
                        help="seconds between host-speed reference readings; the figures without the reference are "
                             "reported beside (0: no reference)")
    parser.add_argument("--calm-wait-s", type=float, default=Protocol.calm_wait_s,
                        help="seconds to wait for a slow spell of the host to end, to re-time what no sweep timed "
                             "calm (0: never)")
    parser.add_argument("--cold-weights-mb", type=float, default=None,
                        help="MB of weight copies an op is timed through, so its weights come from beyond the cache "
                             "as in a network (default: the backend's, 64 for torch; ONNX Runtime: warm only, 0)")
    parser.add_argument("--op-replicas", type=int,
                        help="copies of an op per timed call (default: the backend's, 8 for ONNX Runtime, 1 for torch)")
    parser.add_argument("--context-max-side", type=int, default=Protocol.context_max_side,
                        help="blocks up to this input side are timed inside a network (default 0: none)")
    parser.add_argument("--recheck-tol", type=float, default=Protocol.recheck_tol,
                        help="entries this far (log) above their family's trend are timed again (0: never)")
    parser.add_argument("--full-space", action="store_true", help="build the whole default space's LUT")
    parser.add_argument("--recalibrate", action="store_true",
                        help="re-time the calibration networks interleaved with the held-out ones")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--sweep-log", action="store_true",
                        help="log every timing of every sweep (NAME_sweeps.jsonl.gz beside the LUT) for replays")
    parser.add_argument("--out", default=str(RESULTS / "lut_fidelity.json"))
    args = parser.parse_args()
    out_dir = Path(args.out).with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = get_backend("torch", device=args.device, threads=args.threads).fingerprint()
    result = {
        "args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": fingerprint, "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "timm": timm.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "prediction_speed": prediction_rate(args.space),
        "results": [],
    }
    print(f"prediction: {result['prediction_speed']}", flush=True)
    for batch, img, backend in itertools.product(args.batches, args.img_sizes, args.backends):
        with worker_pool(1) as fresh:
            r = fresh.submit(run_one, backend, img, batch, args, out_dir).result()
        result["results"].append(r)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # after each configuration
        print(f"{r['backend']:11s} {r['device']} {r['dtype']} b{r['batch']} {r['img_size']:4d}px n={r['n']:3d}  "
              f"{_figures(r)}  Kendall {r['kendall']:.4f}  build {r['build_s']:5.0f}s / {r['unique_ops']} ops, "
              f"{r['timings']} timings (planned {r['planned_timings']})  "
              f"load {r['load_before'][0]:.1f}->{r['load_after'][0]:.1f}\n"
              f"{'':>27}re-measured vs measured (ceiling): {_figures(r['repeatability'])}", flush=True)
        if r["unnormalised"]:
            s = r["slowdown"]
            print(f"{'':>27}without the speed reference: {_figures(r['unnormalised'])}; ceiling "
                  f"{_figures(r['unnormalised']['repeatability'])}\n{'':>27}host slowdown {s['min']:.3f}-"
                  f"{s['max']:.3f} (median {s['median']:.3f}) over {s['readings']} readings, {s['reading_s']:.0f} s; "
                  f"{s['levels']} confirmed level(s); {s['waits']} slow spell(s) waited for, "
                  f"{s['waited_s']:.0f} s",
                  flush=True)
        if r["as_built"]:
            print(f"{'':>27}as built, before recalibration (drift {r['drift']:.3f}x): {_figures(r['as_built'])}",
                  flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
