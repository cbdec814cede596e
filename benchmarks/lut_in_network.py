"""In-network cost of a LUT's blocks: what one more block costs inside the networks a fidelity run mispredicts most.

A table prices a network as the sum of its ops timed alone. When a block costs more (or less) inside a network
than alone, and by a different factor for different blocks, no calibration of the sums can follow: the deep stage
of one spec is then mispriced by that factor times its depth. This measures the factor directly. For each of the
`--worst` under-predicted and `--best` over-predicted held-out specs of a `lut_fidelity.py` run, the deepest stage
is made `--offsets` blocks shallower and deeper; every variant is timed end-to-end by the table's own backend and
protocol in each of `--rounds` rounds, interleaved so that a slow spell of the shared host lands on all variants
alike. The slope of the per-variant medians over depth is one block's in-network cost (its spread: the standard
deviation of the slope over rounds resampled with replacement), compared with the block's table entry, raw and as
the calibration scales it. Needs the run's LUT file (`results[i].lut`).

    .venv/bin/python benchmarks/lut_in_network.py benchmarks/results/lut_fidelity_rc_onnxruntime_128.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import LatencyTable, Predictor, resolve_space
from fastvit_nas.latency_lut.build import measure_network
from fastvit_nas.latency_lut.ops import OP_TYPES, op_counts
from fastvit_nas.latency_lut.validate import backend_for

RESULTS = Path(__file__).parent / "results"
BOOTSTRAP = 200


def with_depth(spec: ArchSpec, stage: int, depth: int) -> ArchSpec:
    stages = tuple(dataclasses.replace(s, depth=depth) if i == stage else s for i, s in enumerate(spec.stages))
    return dataclasses.replace(spec, stages=stages)


def slope_and_spread(depths: list[int], rounds: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Slope (ms per block) of the per-depth medians over rounds, and its bootstrap standard deviation."""
    x = np.asarray(depths, dtype=float)
    slope = float(np.polyfit(x, np.median(rounds, axis=0), 1)[0])
    rng = np.random.default_rng(seed)
    resampled = [np.polyfit(x, np.median(rounds[rng.integers(0, len(rounds), len(rounds))], axis=0), 1)[0]
                 for _ in range(BOOTSTRAP)]
    return slope, float(np.std(resampled))


def probe(spec: ArchSpec, error: float, table: LatencyTable, predictor: Predictor, offsets: list[int],
          rounds: int) -> dict:
    """Time `spec` with its deepest stage at each offset of depth, interleaved over rounds; compare the slope."""
    meta = table.meta
    backend = backend_for(meta)
    stage = max(range(len(spec.stages)), key=lambda i: spec.stages[i].depth)
    depth = spec.stages[stage].depth
    depths = sorted({depth + o for o in offsets if depth + o >= 1})
    variants = [with_depth(spec, stage, d) for d in depths]
    times = np.array([[measure_network(backend, v, meta.img_size, meta.batch).latency_ms for v in variants]
                      for _ in range(rounds)])
    slope, spread = slope_and_spread(depths, times)
    block = next(op for op, _ in op_counts(spec, meta.img_size, meta.batch)
                 if op.module_path == f"stages.{stage}.blocks.0")
    entry = float(table.rows.loc[table.rows["key"] == block.key, "latency_ms"].iloc[0])
    t = OP_TYPES.index(block.op_type)
    calibrated = entry * predictor.calibration.scales[t] + predictor.calibration.call_ms[t]
    return {"arch_id": spec.arch_id, "error_pct": error * 100, "stage": stage, "mixer": spec.stages[stage].mixer,
            "width": spec.stages[stage].width, "depth": depth, "block": block.key, "depths": depths,
            "median_ms": np.median(times, axis=0).tolist(), "entry_ms": entry, "calibrated_entry_ms": calibrated,
            "slope_ms": slope, "slope_sd_ms": spread, "slope_over_entry": slope / entry,
            "slope_over_calibrated": slope / calibrated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fidelity", help="a results JSON of benchmarks/lut_fidelity.py")
    parser.add_argument("--config", type=int, default=0, help="which of its results (backend, size) to probe")
    parser.add_argument("--worst", type=int, default=3, help="most under-predicted specs to probe")
    parser.add_argument("--best", type=int, default=2, help="most over-predicted specs to probe")
    parser.add_argument("--offsets", type=int, nargs="+", default=[-8, -4, 0, 4, 8],
                        help="blocks added to the deepest stage (negative: removed)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(RESULTS / "lut_in_network.json"))
    args = parser.parse_args()
    run = json.loads(Path(args.fidelity).read_text())
    config = run["results"][args.config]
    table = LatencyTable.load(Path(config["lut"]))
    predictor = Predictor(table)
    per_spec = config["per_spec"]
    errors = np.asarray(per_spec["predicted_ms"]) / np.asarray(per_spec["measured_ms"]) - 1
    specs = {s.arch_id: s for s in resolve_space(run["args"]["space"]).sample(run["args"]["n"], run["args"]["seed"])}
    order = np.argsort(errors)
    chosen = [*order[:args.worst], *order[len(order) - args.best:]]
    result = {"args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": table.meta.device, "backend": table.meta.backend, "img_size": table.meta.img_size,
              "calibration_model": predictor.calibration.model, "probes": []}
    print(f"{'error':>7} {'stage':>5} {'mixer':>9} {'width':>5} {'depth':>5} {'entry':>7} {'calib.':>7} "
          f"{'slope':>7} {'sd':>6} {'/entry':>6} {'/calib.':>7}")
    for i in chosen:
        r = probe(specs[per_spec["arch_id"][i]], float(errors[i]), table, predictor, args.offsets, args.rounds)
        result["probes"].append(r)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"{r['error_pct']:+6.1f}% {r['stage']:5d} {r['mixer']:>9} {r['width']:5d} {r['depth']:5d} "
              f"{r['entry_ms']:7.4f} {r['calibrated_entry_ms']:7.4f} {r['slope_ms']:7.4f} {r['slope_sd_ms']:6.4f} "
              f"{r['slope_over_entry']:6.2f} {r['slope_over_calibrated']:7.2f}", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
