"""Several LUTs of one device scored on one fidelity run's held-out networks, calibration aside.

A table's figures in `lut_fidelity.py` mix two things: how well its entries follow the networks (its shape) and how
well its few calibration points place it (scale and offset, fitted on 12 networks timed during its build). To
compare tables built at different times, or with different protocols (blocks alone or in context, paired or not),
this fits each table's raw sums to the run's held-out networks themselves with an affine fit: an upper bound no
calibration can beat, which shows the shape alone. It also gives the spread of raw sum / measured, free of any fit.
Both against the networks as measured and as re-measured.

    .venv/bin/python benchmarks/lut_tables_compare.py benchmarks/results/lut_fidelity_ctx8floor_onnxruntime_128.json \
        benchmarks/results/lut_fidelity_ctx8floor_onnxruntime_128/onnxruntime_cpu_fp32_b1_128.parquet OTHER.parquet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from lut_in_network import load_run

from fastvit_nas.latency_lut import LatencyTable, Predictor
from fastvit_nas.latency_lut.validate import figures

RESULTS = Path(__file__).parent / "results"


def shape_figures(raw: np.ndarray, measured: np.ndarray) -> dict:
    """Figures of the affine fit of `raw` to `measured` (least squares), and the spread of their ratio."""
    scale, offset = np.linalg.lstsq(np.c_[raw, np.ones_like(raw)], measured, rcond=None)[0]
    ratio = raw / measured
    return {**figures(raw * scale + offset, measured), "scale": float(scale), "offset_ms": float(offset),
            "raw_spread": float(ratio.std() / ratio.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fidelity", help="a results JSON of benchmarks/lut_fidelity.py (its held-out networks)")
    parser.add_argument("luts", nargs="+", help="LUT parquet files of the same device, backend and settings")
    parser.add_argument("--config", type=int, default=0, help="which of the run's results (backend, size)")
    parser.add_argument("--out", default=str(RESULTS / "lut_tables_compare.json"))
    args = parser.parse_args()
    run = load_run(args.fidelity, args.config)
    timings = {"measured": np.asarray(run.per_spec["measured_ms"]),
               "remeasured": np.asarray(run.per_spec["remeasured_ms"])}
    rows = []
    for lut in args.luts:
        sums, _ = Predictor(LatencyTable.load(Path(lut))).op_totals(run.held_out)
        for name, measured in timings.items():
            r = {"lut": lut, "against": name, **shape_figures(sums.sum(axis=1), measured)}
            rows.append(r)
            print(f"{lut}\n  vs {name:>10}: ±10% {r['within_10']:5.1f}  ±5% {r['within_5']:5.1f}  "
                  f"MAPE {r['mape']:.2f}  Spearman {r['spearman']:.4f}  raw spread {100 * r['raw_spread']:.2f} %")
    Path(args.out).write_text(json.dumps({"args": vars(args), "n": len(run.held_out), "rows": rows,
                                          "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
