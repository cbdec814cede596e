"""Few long sweeps or many short ones for end-to-end networks: both designs on the same networks, side by side.

Networks used to be timed in four sweeps of 10-60 calls (at most 1 s) each, their fastest call kept; this compared
that design with 16 sweeps of 4 calls (`Protocol.network_calls`), the default since. On this host the load
decorrelates within about a second (`lut_estimators.py`'s noise sample), so the calls of one sweep share one state
of the host and four sweeps draw four states: a network whose four sweeps all met a busy state keeps a slow fastest
call, which is what the held-out networks that repeat worst show (the first measurement 13 % above the second). Many
short sweeps draw more states from about as many calls. This times a stored run's calibration and held-out networks
by each design (no speed reference) in rounds that alternate between the designs (A B B A ..., or B A A B ...: a
design's repeat is between its own rounds, which lie next to each other in one order and far apart in the other),
refits the table's calibration on each round's calibration networks, scores the held-out networks, and gives each
design's own repeat between its rounds and the ratio of its floors to the other design's. Each network is built once
and its instance timed by both designs: a torch network's time does not depend on its instance (`lut_findings.md`),
and building a fused network (0.5-3 s) would otherwise take most of the many short sweeps' time. Prints a table and
writes benchmarks/results/lut_network_sweeps_<run>.json. With `--warmup-calls N`, the two designs are short sweeps
with the stored protocol's warm-up calls and short sweeps with N (`_warmup<N>` in the file name).

    .venv/bin/python benchmarks/lut_network_sweeps.py benchmarks/results/lut_fidelity_cal24d_torch_128.json
    .venv/bin/python benchmarks/lut_network_sweeps.py benchmarks/results/lut_fidelity_sweeplog27_torch_128.json \
        --warmup-calls 1
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from lut_estimators import host_noise, network_shape, retiming_parser, score, stored_networks, timed_rounds

from fastvit_nas.fastvit.model import build_model
from fastvit_nas.latency_lut.validate import backend_for, figures

RESULTS = Path(__file__).parent / "results"
LONG_SWEEPS = 4
"""Sweeps of the long design: the protocol's default before short sweeps replaced it."""


def designs(short_sweeps: int, short_calls: int, warmup_calls: int | None = None) -> dict[str, tuple[int, dict]]:
    """Sweeps per round and protocol changes of each design: long sweeps, each until the median settles, and short
    sweeps of fixed calls (`Protocol.network_calls`); with `warmup_calls`, short sweeps with the stored protocol's
    network warm-up calls (`Protocol.network_warmup_calls`; an op's three in tables written before it, 3 of a short
    sweep's 7 calls) against short sweeps with that many."""
    short = {"network_calls": short_calls}
    if warmup_calls is not None:
        return {"short": (short_sweeps, short), "warm": (short_sweeps, {**short, "network_warmup_calls": warmup_calls})}
    return {"long": (LONG_SWEEPS, {"network_calls": 0}), "short": (short_sweeps, short)}


def main() -> None:
    parser = retiming_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per design")
    parser.add_argument("--short-sweeps", type=int, default=16)
    parser.add_argument("--short-calls", type=int, default=4, help="timed calls per short sweep")
    parser.add_argument("--short-first", action="store_true",
                        help="rounds B A A B ...: the long design's rounds then lie next to each other")
    parser.add_argument("--warmup-calls", type=int, default=None,
                        help="compare short sweeps with this many warm-up calls against the stored protocol's")
    args = parser.parse_args()
    run, points, calibration, stored = stored_networks(args)
    meta = run.table.meta
    networks = calibration + run.held_out
    n = len(calibration)
    plan = designs(args.short_sweeps, args.short_calls, args.warmup_calls)
    modules = [build_model(spec, inference=True) for spec in networks]
    rng = np.random.default_rng(args.seed)
    noise = host_noise(args.noise_s, meta.threads or 1) if args.noise_s else None
    if noise:
        print(f"host: calm {noise['calm_share']:.0%} of {noise['window_ms']:.1f} ms windows (runs of "
              f"{noise['calm_run_ms_median']:.0f} ms), median/p2 {noise['median_ms'] / noise['p2_ms']:.2f}", flush=True)
    timed: dict[str, list[np.ndarray]] = {name: [] for name in plan}
    seconds: dict[str, float] = dict.fromkeys(plan, 0.0)
    for r in range(args.rounds):
        first = list(plan)[::-1] if args.short_first else list(plan)
        for name in (first if r % 2 == 0 else first[::-1]):
            sweeps, changes = plan[name]
            backend = backend_for(meta, dataclasses.replace(stored, **changes))
            start = time.monotonic()
            timers = [backend.network_timer(module, network_shape(meta, spec))
                      for module, spec in zip(modules, networks, strict=True)]
            timed[name].append(timed_rounds(timers, 1, sweeps, rng)[0]["min"])
            seconds[name] += time.monotonic() - start
            print(f"{name} round {r}: {time.monotonic() - start:.0f} s", flush=True)
    results = {}
    for name, rounds in timed.items():
        other = next(o for o in plan if o != name)
        floors = float(np.median(np.concatenate([mine / theirs for mine, theirs in zip(rounds, timed[other],
                                                                                        strict=True)])))
        repeat = figures(rounds[1][n:], rounds[0][n:]) if len(rounds) > 1 else None
        scored = [score(run.table, "min", points, ms[:n], run.held_out, ms[n:]) for ms in rounds]
        results[name] = {"sweeps": plan[name][0], "protocol_changes": plan[name][1], "seconds": seconds[name],
                         "rounds": scored, "repeat": repeat, "floors_over_other": floors}
        for r, s in enumerate(scored):
            print(f"{name:5s} round {r}: ±10 % {s['within_10']:5.1f}  ±5 % {s['within_5']:5.1f}  MAPE "
                  f"{s['mape']:5.2f}  Spearman {s['spearman']:.4f}  LOO {s['loo_mape']:.2f} %", flush=True)
        if repeat:
            print(f"{name:5s} repeat: ±10 % {repeat['within_10']:5.1f}  ±5 % {repeat['within_5']:5.1f}  MAPE "
                  f"{repeat['mape']:5.2f}; floors / {other}'s {floors:.3f}; {seconds[name]:.0f} s", flush=True)
    stem = Path(args.fidelity).stem.removeprefix("lut_fidelity_")
    suffix = "" if args.warmup_calls is None else f"_warmup{args.warmup_calls}"
    out = Path(args.out or RESULTS / f"lut_network_sweeps_{stem}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "args": vars(args), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": meta.device, "platform": platform.platform(), "torch": torch.__version__,
        "backend": meta.backend, "img_size": meta.img_size, "host_noise": noise, "results": results,
        "networks_ms": {name: [ms.tolist() for ms in rounds] for name, rounds in timed.items()},
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
