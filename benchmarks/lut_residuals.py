"""Where the held-out error of stored fidelity runs comes from: network features, concentration, a block cost.

At 128 px the best tables predict held-out networks with an error whose sd (4-5 %) is about twice one
measurement's own noise, and the calibration's form was ruled out (`calibration_design.py --model`). This asks
three questions of the residuals log(measured / predicted) of runs whose LUT is still on disk:

- Do they follow a network feature (blocks, attention's share of the raw sum, MFLOPs, weights)? Spearman per run.
- Are networks that lean on a few heavy entries (a wide block repeated at 4x4) predicted worse? Concentration is
  the square root of the Herfindahl index of the entries' shares of a network's raw sum (an entry repeated n
  times counts once, with n times its share); if entries erred independently, a network's error would scale
  with it, and timing heavy entries in more sweeps would pay.
- Does one cost per block call, shared by both block kinds, on top of the global scale and offset, predict
  better than the scale alone? Refitted on half of each run's measured networks (held-out and calibration),
  scored on the other half, over `--splits` random halves.

    .venv/bin/python benchmarks/lut_residuals.py benchmarks/results/lut_fidelity_ctx8_onnxruntime_128.json ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from lut_in_network import load_run
from scipy.stats import spearmanr

from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import Predictor
from fastvit_nas.latency_lut.ops import OP_TYPES, op_counts
from fastvit_nas.latency_lut.predict import GROUPS, _Model, _solve
from fastvit_nas.latency_lut.validate import figures
from fastvit_nas.space.size import network_size

RESULTS = Path(__file__).parent / "results"
MODELS = {"global": _Model([tuple(OP_TYPES)], []),
          "block_call": _Model([tuple(OP_TYPES)], [GROUPS["repmixer"] + GROUPS["attention"]])}
"""The single scale, and the single scale plus one cost per block call of either kind; solved by the library's own
calibration solver, so bounds and weighting are the calibration's and only the model differs."""


def concentration(spec: ArchSpec, latencies: dict[str, float], img_size: int, batch: int) -> float:
    """sqrt(Σ share²) over a network's distinct entries, each share its count times its latency over the raw sum."""
    weight: Counter[str] = Counter()
    for op, count in op_counts(spec, img_size, batch):
        weight[op.key] += count * latencies[op.key]
    shares = np.array(list(weight.values())) / sum(weight.values())
    return float(np.sqrt((shares ** 2).sum()))


def analyse(path: str, splits: int, seed: int) -> dict:
    """One run's residual correlations, concentration and held-out halves; the residuals and concentrations
    are kept so that `by_concentration` can pool them over runs."""
    run = load_run(path, 0)
    meta = run.table.meta
    predictor = Predictor(run.table)
    held = run.held_out
    residual = np.log(np.array(run.per_spec["measured_ms"]) / np.array(run.per_spec["predicted_ms"]))
    specs, measured = run.measured_networks()
    all_sums, all_calls = predictor.op_totals(specs)
    sums = all_sums[:len(held)]
    sizes = [network_size(spec, meta.img_size) for spec in held]
    latencies = run.table.latencies()
    features = {"blocks": [sum(stage.depth for stage in spec.stages) for spec in held],
                "attention_share": sums[:, OP_TYPES.index("attention_block")] / sums.sum(axis=1),
                "mflops": [size.flops / 1e6 for size in sizes],
                "weights_mb": [size.params * 4 / 2 ** 20 for size in sizes]}
    spread = np.abs(residual - np.median(residual))
    conc = np.array([concentration(spec, latencies, meta.img_size, meta.batch) for spec in held])

    rng = np.random.default_rng(seed)
    scores: dict[str, list[dict]] = {name: [] for name in MODELS}
    for _ in range(splits):
        order = rng.permutation(len(specs))
        fit, test = order[:len(specs) // 2], order[len(specs) // 2:]
        for name, model in MODELS.items():
            cal = _solve(all_sums[fit], all_calls[fit], measured[fit], model)
            scores[name].append(figures(cal.apply(all_sums[test], all_calls[test]), measured[test]))
    return {"run": path, "residual_sd_pct": float(residual.std() * 100),
            "spearman": {name: float(spearmanr(values, residual)[0]) for name, values in features.items()},
            "concentration": {"min": float(conc.min()), "max": float(conc.max()),
                              "spearman_with_abs_error": float(spearmanr(conc, spread)[0])},
            "halves": {name: {k: float(np.mean([s[k] for s in runs])) for k in ("within_10", "mape")}
                       for name, runs in scores.items()},
            "concentration_values": conc.tolist(), "residuals": residual.tolist()}


def by_concentration(rows: list[dict]) -> list[dict]:
    """All runs' networks pooled (each run's residuals centred on its median), in quarters of concentration."""
    conc = np.concatenate([r["concentration_values"] for r in rows])
    res = np.concatenate([np.array(r["residuals"]) - np.median(r["residuals"]) for r in rows])
    edges = np.quantile(conc, [0, 0.25, 0.5, 0.75, 1])
    out = []
    for low, high in itertools.pairwise(edges):
        inside = (conc >= low) & (conc <= high)
        out.append({"from": float(low), "to": float(high), "sd_pct": float(res[inside].std() * 100),
                    "outside_10_pct": float(np.mean(np.abs(np.expm1(res[inside])) > 0.10) * 100)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="results JSONs of benchmarks/lut_fidelity.py whose LUT is on disk")
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "lut_residuals.json"))
    args = parser.parse_args()
    rows = [analyse(path, args.splits, args.seed) for path in args.runs]
    names = list(rows[0]["spearman"])
    print(f"{'run':<48} {'sd %':>5} " + " ".join(f"{n:>15}" for n in names)
          + f" {'conc~|err|':>10} {'global ±10/MAPE':>16} {'+block call':>14}")
    for r in rows:
        halves = r["halves"]
        print(f"{Path(r['run']).stem:<48} {r['residual_sd_pct']:5.1f} "
              + " ".join(f"{r['spearman'][n]:+15.2f}" for n in names)
              + f" {r['concentration']['spearman_with_abs_error']:+10.2f}"
              + f" {halves['global']['within_10']:7.1f} / {halves['global']['mape']:5.2f}"
              + f" {halves['block_call']['within_10']:6.1f} / {halves['block_call']['mape']:5.2f}")
    mean = {name: {k: float(np.mean([r["halves"][name][k] for r in rows])) for k in ("within_10", "mape")}
            for name in MODELS}
    print("mean halves: " + ", ".join(f"{n} {m['within_10']:.1f} / {m['mape']:.2f}" for n, m in mean.items()))
    quarters = by_concentration(rows)
    for q in quarters:
        print(f"concentration {q['from']:.2f}-{q['to']:.2f}: residual sd {q['sd_pct']:.1f} %, "
              f"outside ±10 % {q['outside_10_pct']:.0f} %")
    Path(args.out).write_text(json.dumps({"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "args": vars(args), "mean_halves": mean, "by_concentration": quarters,
                                          "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
