"""Latency of the unfused model, timm's `reparameterize_model` and ours, for every preset, side by side.

The three variants are timed in interleaved rounds (A, B, C, A, B, C, ...) with the LUT's measurement protocol,
so load on this shared machine hits all three alike; the table reports the median over rounds and the ratios.

    .venv/bin/python benchmarks/reparam.py [--presets t8 sa12] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import timm
import torch

from fastvit_nas.fastvit import PRESETS, build_model
from fastvit_nas.fastvit.reparameterize import reparameterize
from fastvit_nas.latency_lut.measure import Protocol, measure, wall_clock

RESULTS = Path(__file__).parent / "results" / "reparam.json"


def bench(names: list[str], rounds: int, threads: int, img_size: int) -> list[dict]:
    torch.set_num_threads(threads)
    protocol = Protocol(warmup_calls=3, min_reps=10, max_reps=40, max_s=2.0)
    x = torch.randn(1, 3, img_size, img_size)
    rows = []
    for name in names:
        unfused = build_model(PRESETS[name]).eval()
        variants = {
            "unfused": unfused,
            "timm_fused": timm.utils.reparameterize_model(unfused),
            "ours_fused": reparameterize(unfused),
        }
        samples: dict[str, list[float]] = {k: [] for k in variants}
        with torch.inference_mode():
            for _ in range(rounds):
                for key, model in variants.items():
                    samples[key].append(measure(wall_clock(lambda m=model: m(x)), protocol).median_ms)
        med = {k: float(np.median(v)) for k, v in samples.items()}
        rows.append({
            "preset": name,
            **{f"{k}_ms": round(v, 3) for k, v in med.items()},
            "timm_speedup": round(med["unfused"] / med["timm_fused"], 3),
            "ours_speedup": round(med["unfused"] / med["ours_fused"], 3),
            "ours_vs_timm": round(med["timm_fused"] / med["ours_fused"], 3),
            **{f"{k}_params": sum(p.numel() for p in m.parameters()) for k, m in variants.items()},
        })
        print(f"{name:>5}  unfused {med['unfused']:8.2f} ms  timm {med['timm_fused']:8.2f} ms  "
              f"ours {med['ours_fused']:8.2f} ms  ours/timm speed x{rows[-1]['ours_vs_timm']:.3f}  "
              f"params {rows[-1]['unfused_params'] / 1e6:.2f}M -> {rows[-1]['ours_fused_params'] / 1e6:.2f}M",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=256)
    args = parser.parse_args()
    rows = bench(args.presets, args.rounds, args.threads, args.img_size)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rows": rows,
        "settings": {"img_size": args.img_size, "batch": 1, "threads": args.threads, "rounds": args.rounds,
                     "estimator": "median of per-round medians, interleaved"},
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()},
        "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "load_avg": os.getloadavg()},
    }, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
