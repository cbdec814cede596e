"""Calibration networks picked by FLOPs spread against picked at random, replayed on stored fidelity runs.

A table's calibration is fitted on a dozen networks timed end to end (`latency_lut/design.py`). This replays the
choice on runs whose LUT is still on disk: a run's held-out and calibration networks, all measured, are split at
random into a pool and a test half; from the pool, `--n` networks are picked at random or by
`design.widest_spread` on their FLOPs, the calibration is refitted on them (`fit_calibration`, model selection
included, or one model alone with `--model`) and scored on the test half. Averaged over `--splits` splits per run,
both pickings on the same splits.

    .venv/bin/python benchmarks/calibration_design.py benchmarks/results/lut_fidelity_ctx8_onnxruntime_128.json ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from lut_in_network import load_run

from fastvit_nas.latency_lut import Predictor, fit_calibration
from fastvit_nas.latency_lut.design import widest_spread
from fastvit_nas.latency_lut.predict import MODELS
from fastvit_nas.latency_lut.validate import figures
from fastvit_nas.space.size import network_size

RESULTS = Path(__file__).parent / "results"


def replay(path: str, n: int, splits: int, seed: int, models: tuple[str, ...] = MODELS) -> dict:
    """Mean figures of both pickings over `splits` random pool/test splits of one run's measured networks."""
    run = load_run(path, 0)
    specs, measured = run.measured_networks()
    sums, calls = Predictor(run.table).op_totals(specs)
    flops = np.array([network_size(spec, run.table.meta.img_size).flops for spec in specs], dtype=float)
    rng = np.random.default_rng(seed)
    scores: dict[str, list[dict]] = {"random": [], "spread": []}
    for _ in range(splits):
        order = rng.permutation(len(specs))
        pool, test = order[:len(specs) // 2], order[len(specs) // 2:]
        picks = {"random": rng.choice(pool, n, replace=False), "spread": pool[widest_spread(flops[pool], n)]}
        for name, chosen in picks.items():
            fit = fit_calibration(sums[chosen], calls[chosen], measured[chosen], models)
            scores[name].append(figures(fit.apply(sums[test], calls[test]), measured[test]))
    return {"run": path, "networks": len(specs), "flops_latency_corr": float(np.corrcoef(flops, measured)[0, 1]),
            **{name: {k: float(np.mean([s[k] for s in runs])) for k in runs[0]} for name, runs in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="results JSONs of benchmarks/lut_fidelity.py whose LUT is on disk")
    parser.add_argument("--n", type=int, default=12, help="calibration networks picked from each pool")
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--model", choices=("select", *MODELS), default="select",
                        help="calibration model: chosen by leave-one-out among all (select), or this one alone")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "calibration_design.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'run':<52} {'random ±10 / MAPE':>18} {'spread ±10 / MAPE':>18}")
    for path in args.runs:
        row = replay(path, args.n, args.splits, args.seed, MODELS if args.model == "select" else (args.model,))
        rows.append(row)
        print(f"{Path(path).stem:<52} {row['random']['within_10']:9.1f} / {row['random']['mape']:5.2f} "
              f"{row['spread']['within_10']:9.1f} / {row['spread']['mape']:5.2f}")
    mean = {name: {k: float(np.mean([r[name][k] for r in rows])) for k in ("within_10", "mape")}
            for name in ("random", "spread")}
    print(f"{'mean':<52} {mean['random']['within_10']:9.1f} / {mean['random']['mape']:5.2f} "
          f"{mean['spread']['within_10']:9.1f} / {mean['spread']['mape']:5.2f}")
    Path(args.out).write_text(json.dumps({"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "args": vars(args), "mean": mean, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
