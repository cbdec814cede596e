"""In-network cost of a LUT's blocks: what one more block costs inside the networks a fidelity run mispredicts most.

A table prices a network as the sum of its ops timed alone. When a block costs more (or less) inside a network
than alone, and by a different factor for different blocks, no calibration of the sums can follow: the deep stage
of one spec is then mispriced by that factor times its depth. This measures the factor directly. For each of the
`--worst` under-predicted and `--best` over-predicted held-out specs of a `lut_fidelity.py` run, the deepest stage
is made `--offsets` blocks shallower and deeper; every variant is timed end-to-end by the table's own backend and
protocol in each of `--rounds` rounds, interleaved so that a slow spell of the shared host lands on all variants
alike. The slope of the per-variant medians over depth is one block's in-network cost (its spread: the standard
deviation of the slope over rounds resampled with replacement), compared with the block's table entry, raw and as
the calibration scales it. With `--sample K`, K blocks of each (block kind, resolution) met in the held-out specs
are probed too, each in a light network (its spec with every other stage one block deep): the factor is mostly
the block's own, not its network's (the same block cost 1.27-1.39 times its entry in a light, its own and a heavier
network), so these map how the factor varies over the space. Needs the run's LUT file (`results[i].lut`).

    .venv/bin/python benchmarks/lut_in_network.py benchmarks/results/lut_fidelity_rc_onnxruntime_128.json
    .venv/bin/python benchmarks/lut_in_network.py RUN.json --worst 0 --best 0 --sample 4 --rounds 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import Backend, LatencyTable, Predictor, resolve_space
from fastvit_nas.latency_lut.build import measure_network
from fastvit_nas.latency_lut.ops import OP_TYPES, Op, op_counts, probe_spec
from fastvit_nas.latency_lut.validate import backend_for

RESULTS = Path(__file__).parent / "results"
BOOTSTRAP = 200


def slope_and_spread(depths: list[int], rounds: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Slope (ms per block) of the per-depth medians over rounds, and its bootstrap standard deviation."""
    x = np.asarray(depths, dtype=float)
    slope = float(np.polyfit(x, np.median(rounds, axis=0), 1)[0])
    rng = np.random.default_rng(seed)
    resampled = [np.polyfit(x, np.median(rounds[rng.integers(0, len(rounds), len(rounds))], axis=0), 1)[0]
                 for _ in range(BOOTSTRAP)]
    return slope, float(np.std(resampled))


def deepest(spec: ArchSpec) -> int:
    return max(range(len(spec.stages)), key=lambda i: spec.stages[i].depth)


def light(spec: ArchSpec, stage: int, depth: int) -> ArchSpec:
    """`spec` with `stage` `depth` blocks deep and every other stage one: a small network around that block."""
    return probe_spec(spec).with_stage(stage, depth=depth)


def stage_blocks(spec: ArchSpec, img_size: int, batch: int) -> list[tuple[int, Op]]:
    """(stage index, block op) of each stage of `spec`."""
    return [(op.stage, op) for op, _ in op_counts(spec, img_size, batch)
            if op.module_path.endswith(".blocks.0")]


def sampled_blocks(specs: list[ArchSpec], img_size: int, batch: int, per_group: int,
                   seed: int = 0) -> list[tuple[ArchSpec, int]]:
    """Up to `per_group` distinct (spec, stage) of each (block kind, resolution), in light networks."""
    groups: dict[tuple[str, int], dict[str, tuple[ArchSpec, int]]] = {}
    for spec in specs:
        for stage, op in stage_blocks(spec, img_size, batch):
            groups.setdefault((op.op_type, op.in_h), {}).setdefault(
                op.key, (light(spec, stage, spec.stages[stage].depth), stage))
    rng = np.random.default_rng(seed)
    chosen = []
    for key in sorted(groups):
        pool = list(groups[key].values())
        chosen += [pool[i] for i in rng.permutation(len(pool))[:per_group]]
    return chosen


def probe(spec: ArchSpec, stage: int, error: float | None, table: LatencyTable, predictor: Predictor,
          backend: Backend, offsets: list[int], rounds: int) -> dict:
    """Time `spec` with `stage` at each offset of depth, interleaved over rounds; compare the slope."""
    meta = table.meta
    depth = spec.stages[stage].depth
    depths = sorted({depth + o for o in offsets if depth + o >= 1})
    variants = [spec.with_stage(stage, depth=d) for d in depths]
    times = np.array([[measure_network(backend, v, meta.img_size, meta.batch).latency_ms for v in variants]
                      for _ in range(rounds)])
    slope, spread = slope_and_spread(depths, times)
    block = dict(stage_blocks(spec, meta.img_size, meta.batch))[stage]
    entry = table.latencies()[block.key]
    t = OP_TYPES.index(block.op_type)
    calibrated = entry * predictor.calibration.scales[t] + predictor.calibration.call_ms[t]
    return {"arch_id": spec.arch_id, "error_pct": None if error is None else error * 100, "stage": stage,
            "resolution": block.in_h, "mixer": spec.stages[stage].mixer,
            "width": spec.stages[stage].width, "depth": depth, "block": block.key, "depths": depths,
            "median_ms": np.median(times, axis=0).tolist(), "entry_ms": entry, "calibrated_entry_ms": calibrated,
            "slope_ms": slope, "slope_sd_ms": spread, "slope_over_entry": slope / entry,
            "slope_over_calibrated": slope / calibrated}


@dataclasses.dataclass(frozen=True)
class FidelityRun:
    """One configuration of a `lut_fidelity.py` results file: its table, held-out specs and their timings."""

    table: LatencyTable
    held_out: list[ArchSpec]
    per_spec: dict

    def measured_networks(self) -> tuple[list[ArchSpec], np.ndarray]:
        """Every network the run timed end to end, held-out then calibration, with its measured ms: the points a
        replay refits and scores the calibration on."""
        points = self.table.meta.calibration["points"]
        specs = [*self.held_out, *(ArchSpec.from_dict(p["spec"]) for p in points)]
        return specs, np.array([*self.per_spec["measured_ms"], *(p["measured_ms"] for p in points)])


def load_run(path: str, config: int) -> FidelityRun:
    run = json.loads(Path(path).read_text())
    chosen = run["results"][config]
    held_out = resolve_space(run["args"]["space"]).sample(run["args"]["n"], run["args"]["seed"])
    return FidelityRun(LatencyTable.load(Path(chosen["lut"])), held_out, chosen["per_spec"])


RELIABLE = 0.12
"""A slope whose bootstrap sd is under this share of it enters the summary; tiny blocks at low depth give slopes
that the networks' own noise swamps."""


def summary(probes: list[dict]) -> dict[str, list[float]]:
    """Factor (slope / entry) range per block kind and resolution, over the reliable probes."""
    groups: dict[str, list[float]] = {}
    for r in probes:
        if r["slope_sd_ms"] < RELIABLE * abs(r["slope_ms"]):
            groups.setdefault(f"{r['mixer']} {r['resolution']}x{r['resolution']}", []).append(r["slope_over_entry"])
    return {k: [min(v), float(np.median(v)), max(v), len(v)] for k, v in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fidelity", help="a results JSON of benchmarks/lut_fidelity.py")
    parser.add_argument("--config", type=int, default=0, help="which of its results (backend, size) to probe")
    parser.add_argument("--worst", type=int, default=3, help="most under-predicted specs to probe")
    parser.add_argument("--best", type=int, default=2, help="most over-predicted specs to probe")
    parser.add_argument("--sample", type=int, default=0,
                        help="blocks of each (kind, resolution) to probe in light networks")
    parser.add_argument("--offsets", type=int, nargs="+", default=[-8, -4, 0, 4, 8],
                        help="blocks added to the probed stage (negative: removed)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(RESULTS / "lut_in_network.json"))
    args = parser.parse_args()
    run = load_run(args.fidelity, args.config)
    table, held_out, per_spec = run.table, run.held_out, run.per_spec
    meta = table.meta
    predictor = Predictor(table)
    backend = backend_for(meta)
    errors = np.asarray(per_spec["predicted_ms"]) / np.asarray(per_spec["measured_ms"]) - 1
    specs = {s.arch_id: s for s in held_out}
    order = np.argsort(errors)
    worst_and_best = [specs[per_spec["arch_id"][i]] for i in [*order[:args.worst], *order[len(order) - args.best:]]]
    error_of = dict(zip(per_spec["arch_id"], errors.tolist(), strict=True))
    probes = [(spec, deepest(spec), error_of[spec.arch_id]) for spec in worst_and_best]
    probes += [(spec, stage, None) for spec, stage in sampled_blocks(held_out, meta.img_size, meta.batch, args.sample)]
    result = {"args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": meta.device, "backend": meta.backend, "img_size": meta.img_size,
              "calibration_model": predictor.calibration.model, "probes": []}
    print(f"{'error':>7} {'stage':>5} {'res':>3} {'mixer':>9} {'width':>5} {'depth':>5} {'entry':>7} {'calib.':>7} "
          f"{'slope':>7} {'sd':>6} {'/entry':>6} {'/calib.':>7}")
    for spec, stage, error in probes:
        r = probe(spec, stage, error, table, predictor, backend, args.offsets, args.rounds)
        result["probes"].append(r)
        result["summary"] = summary(result["probes"])
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        shown = "  light" if error is None else f"{r['error_pct']:+6.1f}%"
        print(f"{shown} {r['stage']:5d} {r['resolution']:3d} {r['mixer']:>9} {r['width']:5d} {r['depth']:5d} "
              f"{r['entry_ms']:7.4f} {r['calibrated_entry_ms']:7.4f} {r['slope_ms']:7.4f} {r['slope_sd_ms']:6.4f} "
              f"{r['slope_over_entry']:6.2f} {r['slope_over_calibrated']:7.2f}", flush=True)
    print(f"factor (slope / entry) where the slope's sd is under {RELIABLE:.0%} of it: min, median, max, probes")
    for group, (low, mid, high, n) in result["summary"].items():
        print(f"  {group:>18}: {low:.2f} {mid:.2f} {high:.2f} ({n})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
