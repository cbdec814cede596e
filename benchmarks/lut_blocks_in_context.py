"""Blocks timed inside a network (`latency_lut/in_context.py`) against the same table's blocks timed alone.

`lut_in_network.py` showed that a block costs a multiple of its isolated table entry inside a network, that the
multiple differs from block to block (about 1.0 at 16×16 and 32×32, 1.0-1.6 at 8×8 and 4×4 at 128 px), and that it
belongs to the block rather than to its network. This takes a `lut_fidelity.py` run whose table timed every block
alone, re-measures the block ops of its calibration and held-out specs up to `--max-side` the way a build does
with `Protocol.context_max_side` (each chained `--copies` times in its light context, less the context alone), and
scores both tables on the run's held-out networks, each refitted on the table's stored calibration points. With
`--retime`, the calibration and held-out networks are timed again in the same sweeps as the blocks (as a build
times its calibration networks among the ops), and both tables are refitted and scored on those timings instead,
so that a drift of the host since the run counts against neither.

    .venv/bin/python benchmarks/lut_blocks_in_context.py benchmarks/results/lut_fidelity_rc_onnxruntime_128.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from lut_in_network import load_run

from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import LatencyTable, Predictor, Protocol, fit_calibration
from fastvit_nas.latency_lut.build import measure_missing
from fastvit_nas.latency_lut.in_context import block_contexts
from fastvit_nas.latency_lut.validate import backend_for, figures

RESULTS = Path(__file__).parent / "results"


def scored(table: LatencyTable, latency: np.ndarray, calibration: list[ArchSpec], calibration_ms: np.ndarray,
           held_out: list[ArchSpec], held_out_ms: np.ndarray) -> dict:
    """Held-out figures of `table` with its latencies replaced by `latency`, calibrated on the given points."""
    variant = copy.copy(table)
    variant.rows = table.rows.assign(latency_ms=latency)
    predictor = Predictor(variant)
    fit = fit_calibration(*predictor.op_totals(calibration), calibration_ms)
    sums, calls = predictor.op_totals(held_out)
    raw = sums.sum(axis=1) / held_out_ms
    return {**figures(fit.apply(sums, calls), held_out_ms), "model": fit.model,
            "raw_spread": float(raw.std() / raw.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fidelity", help="a results JSON of benchmarks/lut_fidelity.py")
    parser.add_argument("--config", type=int, default=0, help="which of its results (backend, size)")
    parser.add_argument("--max-side", type=int, default=8, help="blocks up to this input side are re-timed")
    parser.add_argument("--copies", type=int, default=Protocol.context_copies, help="blocks chained per context")
    parser.add_argument("--passes", type=int, default=Protocol.context_passes, help="sweeps over the blocks")
    parser.add_argument("--retime", action="store_true",
                        help="time the calibration and held-out networks again in the same sweeps and score on those")
    parser.add_argument("--out", default=str(RESULTS / "lut_blocks_in_context.json"))
    args = parser.parse_args()
    run = load_run(args.fidelity, args.config)
    table, held_out = run.table, run.held_out
    meta = table.meta
    backend = backend_for(meta, replace(Protocol(**meta.measuring_protocol()), context_max_side=args.max_side,
                                        context_copies=args.copies, context_passes=args.passes, reference_s=0.0,
                                        distinct_copies=True))
    points = meta.calibration["points"]
    calibration = [ArchSpec.from_dict(p["spec"]) for p in points]
    calibration_ms = np.array([p["measured_ms"] for p in points])
    held_out_ms = np.asarray(run.per_spec["measured_ms"])
    specs = calibration + held_out
    contexts = block_contexts(specs, meta.img_size, meta.batch, args.max_side)
    timed_inside = copy.copy(table)
    timed_inside.rows = table.rows[~table.rows["key"].isin(set(contexts))].reset_index(drop=True)
    start = time.time()
    done = measure_missing(timed_inside, backend, specs, progress=True, networks=specs if args.retime else ())
    blocks, networks = done.measured, done.networks
    if args.retime:
        calibration_ms = np.array([t.latency_ms for t in networks[:len(calibration)]])
        held_out_ms = np.array([t.latency_ms for t in networks[len(calibration):]])
    measured = timed_inside.latencies()
    in_context = {key: measured[key] for key in contexts}
    entries = table.rows["latency_ms"].to_numpy(dtype=float)
    replaced = np.array([in_context.get(key, ms) for key, ms in zip(table.rows["key"], entries, strict=True)])
    result = {"args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": meta.device, "backend": meta.backend, "img_size": meta.img_size, "blocks": blocks,
              "contexts": len(set(contexts.values())), "seconds": time.time() - start,
              "alone": scored(table, entries, calibration, calibration_ms, held_out, held_out_ms),
              "in_context": scored(table, replaced, calibration, calibration_ms, held_out, held_out_ms),
              "in_context_ms": in_context}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("alone", "in_context"):
        f = result[name]
        print(f"{name:>10}: ±10% {f['within_10']:5.1f}  ±5% {f['within_5']:5.1f}  MAPE {f['mape']:.2f}  "
              f"Spearman {f['spearman']:.4f}  raw spread {f['raw_spread']:.3f}  ({f['model']})")
    print(f"{blocks} blocks in {result['contexts']} contexts, {result['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
