"""Several LUTs of one device scored on one fidelity run's held-out networks, calibration aside.

A table's figures in `lut_fidelity.py` mix two things: how well its entries follow the networks (its shape) and how
well its few calibration points place it (scale and offset, fitted on 12 networks timed during its build). To
compare tables built at different times, or with different protocols (blocks alone or in context, paired or not),
this fits each table's raw sums to the run's held-out networks themselves with an affine fit: an upper bound no
calibration can beat, which shows the shape alone. It also gives the spread of raw sum / measured, free of any fit.
Both against the networks as measured and as re-measured. Then, per pair of tables, how often their entries for
the ops every table timed alone differ by more than `FAR` (each table's median ratio taken out, so a table built
at another host speed is not "far" everywhere): two builds of one protocol should differ only by the host.

    .venv/bin/python benchmarks/lut_tables_compare.py benchmarks/results/lut_fidelity_ctx8floor_onnxruntime_128.json \
        benchmarks/results/lut_fidelity_ctx8floor_onnxruntime_128/onnxruntime_cpu_fp32_b1_128.parquet OTHER.parquet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from lut_in_network import load_run

from fastvit_nas.latency_lut import LatencyTable, Predictor
from fastvit_nas.latency_lut.in_context import BLOCK_TYPES
from fastvit_nas.latency_lut.validate import figures

RESULTS = Path(__file__).parent / "results"
FAR = 0.16
"""Entries further apart than this (relative) disagree: three times the 5 % within which a build's sweeps of one
op must agree (`Protocol.agree_tol`), so what is counted is what a slow spell or a fault left, not timing noise."""


def shape_figures(raw: np.ndarray, measured: np.ndarray) -> dict:
    """Figures of the affine fit of `raw` to `measured` (least squares), and the spread of their ratio."""
    scale, offset = np.linalg.lstsq(np.c_[raw, np.ones_like(raw)], measured, rcond=None)[0]
    ratio = raw / measured
    return {**figures(raw * scale + offset, measured), "scale": float(scale), "offset_ms": float(offset),
            "raw_spread": float(ratio.std() / ratio.mean())}


def entry_agreement(tables: dict[str, LatencyTable]) -> list[dict]:
    """Per pair of tables, the share of the ops timed alone in all of them whose entries are over `FAR` apart."""
    side = max(t.meta.measuring_protocol()["context_max_side"] for t in tables.values())
    latency = pd.DataFrame({name: t.rows.set_index("key")["latency_ms"].astype(float) for name, t in tables.items()})
    rows = next(iter(tables.values())).rows.set_index("key").reindex(latency.index)
    alone = latency[~(rows["op_type"].isin(BLOCK_TYPES) & (rows["in_h"] <= side))].dropna()
    out = []
    for i, first in enumerate(alone.columns):
        for second in alone.columns[i + 1:]:
            log_ratio = np.log(alone[first] / alone[second])
            log_ratio -= log_ratio.median()
            out.append({"first": first, "second": second, "ops": len(alone),
                        "first_higher": float((log_ratio > np.log1p(FAR)).mean()),
                        "second_higher": float((log_ratio < -np.log1p(FAR)).mean())})
    return out


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
    tables = {lut: LatencyTable.load(Path(lut)) for lut in args.luts}
    rows = []
    for lut, table in tables.items():
        sums, _ = Predictor(table).op_totals(run.held_out)
        for name, measured in timings.items():
            r = {"lut": lut, "against": name, **shape_figures(sums.sum(axis=1), measured)}
            rows.append(r)
            print(f"{lut}\n  vs {name:>10}: ±10% {r['within_10']:5.1f}  ±5% {r['within_5']:5.1f}  "
                  f"MAPE {r['mape']:.2f}  Spearman {r['spearman']:.4f}  raw spread {100 * r['raw_spread']:.2f} %")
    pairs = entry_agreement(tables)
    for p in pairs:
        print(f"{p['first']}\n  vs {p['second']}: {p['ops']} ops alone, over {100 * FAR:.0f} % apart: "
              f"{100 * (p['first_higher'] + p['second_higher']):.1f} % (first higher {100 * p['first_higher']:.1f} "
              f"%, second {100 * p['second_higher']:.1f} %)")
    Path(args.out).write_text(json.dumps({"args": vars(args), "n": len(run.held_out), "rows": rows, "entries": pairs,
                                          "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                         indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
