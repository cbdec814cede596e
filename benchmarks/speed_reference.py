"""Which speed reference follows this host the way a build's ops and networks do?

For `--minutes`, rounds of: read each candidate reference, then time target ops and held-out networks exactly as a
build and a validation time them (`Backend.time_op`, `build.measure_network`).
Candidates: the sa12 reference ops one copy per call, the same ops as `op_replicas` copies per call (what
`speed.SpeedNormalised` reads), and the sa12 network end to end, each prepared once as the build prepares its
reference. Per target, the spread (std of log time over the rounds) as measured and divided by each candidate's
reading; per candidate, its correlation with the networks' and the ops' mean level, and the seconds a reading took.
Writes benchmarks/results/speed_reference.json.

    .venv/bin/python benchmarks/speed_reference.py --backend onnxruntime --img-size 128 --minutes 10
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastvit_nas.fastvit.model import build_model
from fastvit_nas.fastvit.presets import PRESETS
from fastvit_nas.latency_lut import Protocol, get_backend, resolve_space, unique_ops
from fastvit_nas.latency_lut.backends import Backend
from fastvit_nas.latency_lut.build import measure_network
from fastvit_nas.latency_lut.measure import Timing, geomean_ratio
from fastvit_nas.latency_lut.modules import op_module
from fastvit_nas.latency_lut.speed import REFERENCE

RESULTS = Path(__file__).parent / "results"


def candidates(backend: Backend, img: int) -> dict[str, dict[str, Callable[[], Timing]]]:
    """The reference ops as `copies` per call (1, and the backend's `op_replicas` where that differs), and the
    reference network end to end; each a timer per key, as `speed.SpeedNormalised` keeps them."""
    ops = unique_ops([PRESETS[REFERENCE]], img).values()
    network = PRESETS[REFERENCE]
    out = {f"ops, {copies} cop{'y' if copies == 1 else 'ies'} per call":
           {op.key: backend.prepare(op_module(op), op.in_shape, copies) for op in ops}
           for copies in sorted({1, backend.protocol.op_replicas})}
    out["network"] = {REFERENCE: backend.prepare(build_model(network, inference=True),
                                                 (1, network.in_chans, img, img))}
    return out


def targets(backend: Backend, img: int, n_ops: int, n_networks: int, seed: int) -> dict[str, Callable[[], Timing]]:
    space = resolve_space("default")
    pool = list(unique_ops(space.sample(40, seed), img).values())
    picked = [pool[i] for i in np.random.default_rng(seed).choice(len(pool), n_ops, replace=False)]

    out = {f"op {op.key}": (lambda op=op: backend.time_op(op)) for op in picked}
    out.update({f"network {spec.arch_id}": (lambda spec=spec: measure_network(backend, spec, img, 1))
                for spec in space.sample(n_networks, seed + 1)})
    return out


def record_rounds(reads: dict[str, dict[str, Callable[[], Timing]]], timed: dict[str, Callable[[], Timing]],
                  minutes: float) -> list[dict]:
    """Rounds until `minutes` pass; the candidates' order rotates and the targets' is shuffled per round."""
    rounds, start, names = [], time.monotonic(), list(reads)
    while time.monotonic() - start < minutes * 60:
        k = len(rounds)
        row: dict = {"t": time.monotonic() - start, "reading_ms": {}, "reading_s": {}}
        for name in names[k % len(names):] + names[:k % len(names)]:
            t0 = time.monotonic()
            row["reading_ms"][name] = {key: timer().latency_ms for key, timer in reads[name].items()}
            row["reading_s"][name] = time.monotonic() - t0
        row["target_ms"] = {key: timed[key]().latency_ms for key in np.random.default_rng(k).permutation(list(timed))}
        rounds.append(row)
        print(f"round {k + 1}: {row['t']:.0f} s", flush=True)
    return rounds


def score(rounds: list[dict]) -> dict:
    """Each candidate's level per round (geometric mean ratio to its first reading) against the targets."""
    names = list(rounds[0]["reading_ms"])
    level = {c: np.array([geomean_ratio(r["reading_ms"][c], rounds[0]["reading_ms"][c]) for r in rounds])
             for c in names}
    out = {}
    for kind in ("op", "network"):
        keys = [k for k in rounds[0]["target_ms"] if k.startswith(kind + " ")]
        logs = np.log(np.array([[r["target_ms"][k] for k in keys] for r in rounds]))
        mean_level = (logs - np.median(logs, axis=0)).mean(axis=1)
        out[kind] = {"measured": float(np.median(logs.std(axis=0)) * 100)}
        for c in names:
            out[kind][c] = {"spread_pct": float(np.median((logs - np.log(level[c])[:, None]).std(axis=0)) * 100),
                            "corr": float(np.corrcoef(np.log(level[c]), mean_level)[0, 1])}
    out["reading_s"] = {c: float(np.median([r["reading_s"][c] for r in rounds])) for c in names}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ops", type=int, default=12, help="target ops, from 40 default-space specs")
    parser.add_argument("--networks", type=int, default=6, help="target held-out networks")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS / "speed_reference.json")
    args = parser.parse_args()
    backend = get_backend(args.backend, threads=args.threads, protocol=Protocol(reference_s=0.0))
    rounds = record_rounds(candidates(backend, args.img_size),
                           targets(backend, args.img_size, args.ops, args.networks, args.seed), args.minutes)
    figures = score(rounds)
    print(f"\n{len(rounds)} rounds; spread = median over targets of the std of log time (%), corr = with their level")
    print(f"{'reference':28s} {'reading s':>9s} {'ops spread':>10s} {'ops corr':>8s} {'nets spread':>11s} "
          f"{'nets corr':>9s}")
    print(f"{'(none: as measured)':28s} {'':>9s} {figures['op']['measured']:10.2f} {'':>8s} "
          f"{figures['network']['measured']:11.2f}")
    for c, seconds in figures["reading_s"].items():
        op, net = figures["op"][c], figures["network"][c]
        print(f"{c:28s} {seconds:9.2f} {op['spread_pct']:10.2f} {op['corr']:8.2f} {net['spread_pct']:11.2f} "
              f"{net['corr']:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures,
                                    "device": backend.fingerprint(), "version": backend.version(),
                                    "rounds": rounds}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
