"""A candidate protocol, tried on one fidelity run: each block timed inside a network instead of alone.

`lut_in_network.py` showed that a block costs a multiple of its isolated table entry inside a network, that the
multiple differs from block to block (about 1.0 at 16×16 and 32×32, 1.0-1.6 at 8×8 and 4×4 at 128 px), and that it
belongs to the block rather than to its network. So this times every block op of the run's calibration and
held-out specs inside a light network (its spec with every other stage one block deep) at stage depth `LOW` and
`HIGH`, keeps the fastest of `--rounds` for each, and takes the difference per added block as the block's
in-network cost. Those costs replace the table's block entries; the calibration is refitted on the table's stored
calibration points and scored on the run's stored held-out measurements, beside the table as it is. With
`--retime`, the calibration and held-out networks are timed again in the same rounds, shuffled among the blocks,
and both tables are refitted and scored on those timings instead, so a drift of the host since the run does not
count against either. Two network timings per block per round make it several times slower than the table's own
protocol.

    .venv/bin/python benchmarks/lut_blocks_in_context.py benchmarks/results/lut_fidelity_rc_onnxruntime_128.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
from lut_in_network import light, load_run, stage_blocks
from tqdm import tqdm

from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import LatencyTable, Predictor, fit_calibration
from fastvit_nas.latency_lut.build import measure_network
from fastvit_nas.latency_lut.validate import backend_for, figures

RESULTS = Path(__file__).parent / "results"
LOW, HIGH = 1, 13
"""Stage depths a block is timed at: a lever of 12 blocks keeps the networks' own noise (2-3 %) small against
the difference."""


def contexts(specs: list[ArchSpec], img_size: int, batch: int) -> dict[str, tuple[ArchSpec, ArchSpec]]:
    """For each block op of `specs`, the light network around it at depth `LOW` and `HIGH`."""
    out = {}
    for spec in specs:
        for stage, op in stage_blocks(spec, img_size, batch):
            if op.key not in out:
                out[op.key] = (light(spec, stage, LOW), light(spec, stage, HIGH))
    return out


def scored(table: LatencyTable, latency: np.ndarray, calibration: list[ArchSpec], calibration_ms: np.ndarray,
           held_out: list[ArchSpec], held_out_ms: np.ndarray) -> dict:
    """Held-out figures of `table` with its latencies replaced by `latency`, calibrated on the stored points."""
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
    parser.add_argument("--rounds", type=int, default=3, help="timings of each network; the fastest is kept")
    parser.add_argument("--retime", action="store_true",
                        help="time the calibration and held-out networks again in the same rounds and score on those")
    parser.add_argument("--out", default=str(RESULTS / "lut_blocks_in_context.json"))
    args = parser.parse_args()
    run = load_run(args.fidelity, args.config)
    table, held_out = run.table, run.held_out
    meta = table.meta
    backend = backend_for(meta)
    points = meta.calibration["points"]
    calibration = [ArchSpec.from_dict(p["spec"]) for p in points]
    calibration_ms = np.array([p["measured_ms"] for p in points])
    held_out_ms = np.asarray(run.per_spec["measured_ms"])
    around = contexts(calibration + held_out, meta.img_size, meta.batch)
    networks = {spec.arch_id: (spec,) for spec in calibration + held_out} if args.retime else {}
    items = {**around, **networks}
    fastest = {key: [np.inf] * len(variants) for key, variants in items.items()}
    start = time.time()
    with tqdm(total=args.rounds * len(items), unit="item", desc="blocks in context") as bar:
        for round_ in range(args.rounds):
            for key in np.random.default_rng(round_).permutation(list(items)):
                for i, network in enumerate(items[key]):
                    ms = measure_network(backend, network, meta.img_size, meta.batch).latency_ms
                    fastest[key][i] = min(fastest[key][i], ms)
                bar.update()
    if args.retime:
        calibration_ms = np.array([fastest[s.arch_id][0] for s in calibration])
        held_out_ms = np.array([fastest[s.arch_id][0] for s in held_out])
    in_context = {key: (fastest[key][1] - fastest[key][0]) / (HIGH - LOW) for key in around}
    entries = table.rows["latency_ms"].to_numpy(dtype=float)
    replaced = np.array([in_context.get(key, ms) for key, ms in zip(table.rows["key"], entries, strict=True)])
    result = {"args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": meta.device, "backend": meta.backend, "img_size": meta.img_size, "blocks": len(around),
              "seconds": time.time() - start,
              "as_is": scored(table, entries, calibration, calibration_ms, held_out, held_out_ms),
              "blocks_in_context": scored(table, replaced, calibration, calibration_ms, held_out, held_out_ms),
              "in_context_ms": in_context}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("as_is", "blocks_in_context"):
        f = result[name]
        print(f"{name:>18}: ±10% {f['within_10']:5.1f}  ±5% {f['within_5']:5.1f}  MAPE {f['mape']:.2f}  "
              f"Spearman {f['spearman']:.4f}  raw spread {f['raw_spread']:.3f}  ({f['model']})")
    print(f"{len(around)} blocks in {result['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
