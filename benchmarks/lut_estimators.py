"""Fastest call or median call as *the* latency, on this host now: both statistics of the same calls, side by side.

A LUT's rows keep both statistics of each timing, and `Protocol.estimator` picks which one is the latency. On a host
whose load changes within a second, a long call (a network: 10-60 ms at 128 px) lands whole in a calm moment less
often than a short one (an op), so the fastest call may favour ops over networks; the median, which follows the
average load, may not. This re-times a stored run's calibration and held-out networks in `--rounds` rounds of
`--sweeps` shuffled sweeps (no speed reference), keeps each network's best sweep by each statistic, refits the
table's calibration on each round's calibration networks with each statistic (the table's rows read by the same
one), and scores the held-out networks, the other round giving the host's own repeat. First it samples the host
for `--noise-s` seconds: one convolution timed in windows of five calls, how often a window is calm (within 10 % of
the fastest 2 %), how long calm lasts and how fast the load decorrelates. Prints a table and writes
benchmarks/results/lut_estimators_<run>.json.

    .venv/bin/python benchmarks/lut_estimators.py benchmarks/results/lut_fidelity_s23_torch_128.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lut_in_network import FidelityRun, load_run

from fastvit_nas.fastvit.model import build_model
from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import LatencyTable, LutMeta, Predictor, Protocol, Timing
from fastvit_nas.latency_lut.build import refit
from fastvit_nas.latency_lut.validate import backend_for, figures

RESULTS = Path(__file__).parent / "results"
STATISTICS = {"min": "min_ms", "median": "median_ms"}
CALM = 1.10
"""A window is calm within this factor of the host's fastest 2 % of windows."""


def host_noise(seconds: float, threads: int) -> dict:
    """How the host's speed moves over `seconds`: one 3x3 convolution (64 channels, 56x56) timed back to back."""
    torch.set_num_threads(threads)
    x, conv = torch.randn(1, 64, 56, 56), torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    windows, stamps = [], []
    with torch.inference_mode():
        for _ in range(5):
            conv(x)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            calls = []
            for _ in range(5):
                start = time.perf_counter()
                conv(x)
                calls.append(time.perf_counter() - start)
            windows.append(min(calls) * 1e3)
            stamps.append(time.monotonic())
    ms = np.array(windows)
    calm = ms <= CALM * np.percentile(ms, 2)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, calm.astype(int), 0])))[::2]
    window_s = float(np.diff(stamps).mean())
    logs = np.log(ms)
    lags = [lag for lag in (1, 5, 25, 100, 250) if lag < len(ms) // 2]
    return {"windows": len(ms), "window_ms": window_s * 1e3, "p2_ms": float(np.percentile(ms, 2)),
            "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "calm_share": float(calm.mean()), "calm_run_ms_median": float(np.median(runs) * window_s * 1e3),
            "autocorrelation": {f"{lag * window_s:.2f}s": float(np.corrcoef(logs[:-lag], logs[lag:])[0, 1])
                                for lag in lags}}


def timed_rounds(timers: list[Callable[[], Timing]], rounds: int, sweeps: int,
                 rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Per round and statistic, each network's best sweep, its sweeps in shuffled order; all statistics come from
    the same calls. `timers` time one network each (`Backend.network_timer`), built once for all sweeps."""
    out = []
    for _ in range(rounds):
        best = {name: np.full(len(timers), np.inf) for name in STATISTICS}
        for _ in range(sweeps):
            for i in rng.permutation(len(timers)):
                timing = timers[i]()
                for name, field in STATISTICS.items():
                    best[name][i] = min(best[name][i], getattr(timing, field))
        out.append(best)
    return out


def score(stored: LatencyTable, statistic: str, points: list[dict], calibration_ms: np.ndarray,
          held_out: list[ArchSpec], measured: np.ndarray) -> dict:
    """A copy of the table read by `statistic`, calibrated on `calibration_ms`, against `measured`."""
    table = copy.deepcopy(stored)
    table.rows["latency_ms"] = table.rows[STATISTICS[statistic]]
    refit(table, [{**p, "measured_ms": float(ms)} for p, ms in zip(points, calibration_ms, strict=True)])
    fit = table.meta.calibration["fit"]
    return {**figures(Predictor(table).predict_many(held_out), measured), "model": fit["model"],
            "loo_mape": fit["loo_mape"]}


def network_shape(meta: LutMeta, spec: ArchSpec) -> tuple[int, ...]:
    """The input shape a network of `spec` is timed on at the table's settings."""
    return (meta.batch, spec.in_chans, meta.img_size, meta.img_size)


def retiming_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that re-times a stored run's networks: the run, the noise sample, the seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("fidelity", help="a results JSON of benchmarks/lut_fidelity.py (its LUT file must exist)")
    parser.add_argument("--config", type=int, default=0, help="which of its results (backend, size)")
    parser.add_argument("--noise-s", type=float, default=30.0, help="seconds of host-noise sampling first (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="order of the sweeps")
    parser.add_argument("--out")
    return parser


def stored_networks(args: argparse.Namespace) -> tuple[FidelityRun, list[dict], list[ArchSpec], Protocol]:
    """The stored run, its calibration points and networks, and its protocol without the speed reference: the
    networks are re-timed side by side, so the host's state is shared and needs no reading."""
    run = load_run(args.fidelity, args.config)
    points = run.table.meta.calibration["points"]
    protocol = dataclasses.replace(Protocol(**run.table.meta.measuring_protocol()), reference_s=0.0, calm_wait_s=0.0)
    return run, points, [ArchSpec.from_dict(p["spec"]) for p in points], protocol


def main() -> None:
    parser = retiming_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sweeps", type=int, help="sweeps per round (default: the run's own network_passes)")
    args = parser.parse_args()
    run, points, calibration, protocol = stored_networks(args)
    meta = run.table.meta
    backend = backend_for(meta, protocol)
    noise = host_noise(args.noise_s, meta.threads or 1) if args.noise_s else None
    if noise:
        print(f"host: {noise['windows']} windows of {noise['window_ms']:.1f} ms, calm {noise['calm_share']:.0%} "
              f"(runs of {noise['calm_run_ms_median']:.0f} ms, median), median/p2 "
              f"{noise['median_ms'] / noise['p2_ms']:.2f}, autocorrelation {noise['autocorrelation']}", flush=True)
    start = time.monotonic()
    timers = [backend.network_timer(build_model(spec, inference=True), network_shape(meta, spec))
              for spec in calibration + run.held_out]
    rounds = timed_rounds(timers, args.rounds, args.sweeps or protocol.network_passes, np.random.default_rng(args.seed))
    n = len(calibration)
    results = {}
    for statistic in STATISTICS:
        for r, timed in enumerate(rounds):
            scored = score(run.table, statistic, points, timed[statistic][:n], run.held_out, timed[statistic][n:])
            repeat = [figures(other[statistic][n:], timed[statistic][n:])["within_10"]
                      for other in rounds if other is not timed]
            results[f"{statistic}_round{r}"] = {**scored, "repeat_within_10": repeat}
            print(f"{statistic:6s} round {r}: ±10 % {scored['within_10']:5.1f}  ±5 % {scored['within_5']:5.1f}  "
                  f"MAPE {scored['mape']:5.2f}  Spearman {scored['spearman']:.4f}  calibration {scored['model']}, "
                  f"LOO {scored['loo_mape']:.2f} %  | other rounds repeat ±10 %: {repeat}", flush=True)
    out = Path(args.out or RESULTS / f"lut_estimators_{Path(args.fidelity).stem.removeprefix('lut_fidelity_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": meta.device, "platform": platform.platform(), "torch": torch.__version__,
        "backend": meta.backend, "img_size": meta.img_size, "seconds": time.monotonic() - start, "host_noise": noise,
        "results": results,
        "networks_ms": {f"{s}_round{r}": timed[s].tolist() for r, timed in enumerate(rounds) for s in STATISTICS},
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
