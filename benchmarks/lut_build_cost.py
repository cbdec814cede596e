"""Where the time of timing one op goes in an ONNX Runtime build, and what keeping its export saves.

A build times every op in several sweeps (`Protocol.passes`, more while sweeps disagree, and the re-check), so
a per-op cost that does not depend on the host's state can be paid once. For `--ops` random ops of the default
space: the wall time of each step of one timing as the protocol runs it (build the module, export it, replicate
it `op_replicas` times, create the session, time it); then, side by side per op and in alternating order, a
timing that exports afresh (`Backend.time_op`, the path every sweep took before exports were kept) against one
that reuses the kept export (`OnnxRuntime.time_op`). With `--census`, also the export size of every op of the
full default space: how many a build keeps, and in how many bytes. Prints a table and writes
benchmarks/results/lut_build_cost.json.

    .venv/bin/python benchmarks/lut_build_cost.py --img-size 128 --ops 60 --census
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from fastvit_nas.latency_lut import Protocol, get_backend, resolve_space, unique_ops
from fastvit_nas.latency_lut.backends import Backend
from fastvit_nas.latency_lut.backends.onnxruntime import (
    KEPT_EXPORT_BYTES,
    KEPT_EXPORTS_BYTES,
    export_onnx,
    replicated,
    session,
    time_session,
)
from fastvit_nas.latency_lut.build import space_specs
from fastvit_nas.latency_lut.modules import op_module

RESULTS = Path(__file__).parent / "results"
STEPS = ("module", "export", "replicate", "session", "timing")


def step_times(backend: Backend, ops: list) -> tuple[dict[str, list[float]], list[int]]:
    """Milliseconds of each step of one timing per op, run as `OnnxRuntime.time_op` runs them, and the size of
    each op's export in bytes."""
    replicas = backend.protocol.op_replicas
    out: dict[str, list[float]] = {step: [] for step in STEPS}
    sizes = []
    for op in ops:
        marks = [time.perf_counter()]
        module = op_module(op)
        marks.append(time.perf_counter())
        model = export_onnx(module, op.in_shape, backend.dtype)
        marks.append(time.perf_counter())
        sizes.append(len(model))
        graph = replicated(model, replicas)
        marks.append(time.perf_counter())
        sess = session(graph, backend.device, backend.threads)
        marks.append(time.perf_counter())
        time_session(sess, backend.protocol, backend.dtype, replicas)
        marks.append(time.perf_counter())
        for step, start, end in zip(STEPS, marks, marks[1:], strict=False):
            out[step].append((end - start) * 1000)
    return out, sizes


def side_by_side(backend: Backend, ops: list, rounds: int) -> dict[str, list[float]]:
    """Wall milliseconds of a fresh-export timing and of a kept-export timing of each op, in alternating order."""
    for op in ops:
        backend.time_op(op)
    walls: dict[str, list[float]] = {"fresh": [], "kept": []}
    for r in range(rounds):
        for i, op in enumerate(ops):
            order = (("fresh", Backend.time_op), ("kept", type(backend).time_op))
            for name, time_op in order if (i + r) % 2 else order[::-1]:
                start = time.perf_counter()
                time_op(backend, op)
                walls[name].append((time.perf_counter() - start) * 1000)
    return walls


def census(img_size: int) -> dict[str, float]:
    """Export sizes of every op of the full default space: the share a build keeps and the bytes they hold."""
    ops = unique_ops(space_specs(resolve_space("default"), img_size, 1), img_size).values()
    sizes = np.array([len(export_onnx(op_module(op), op.in_shape)) for op in ops])
    small = sizes[sizes <= KEPT_EXPORT_BYTES]
    return {"ops": len(sizes), "all_bytes": int(sizes.sum()), "small_ops": len(small),
            "small_bytes": int(small.sum()), "kept_within_budget": bool(small.sum() <= KEPT_EXPORTS_BYTES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", type=int, default=60, help="random ops, from 40 default-space specs")
    parser.add_argument("--rounds", type=int, default=2, help="side-by-side rounds over the ops")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--census", action="store_true", help="also export every op of the full default space")
    parser.add_argument("--out", type=Path, default=RESULTS / "lut_build_cost.json")
    args = parser.parse_args()
    backend = get_backend("onnxruntime", threads=args.threads, protocol=Protocol(reference_s=0.0))
    pool = list(unique_ops(resolve_space("default").sample(40, args.seed), args.img_size).values())
    ops = [pool[i] for i in np.random.default_rng(args.seed).choice(len(pool), min(args.ops, len(pool)),
                                                                      replace=False)]
    steps, sizes = step_times(backend, ops)
    total = sum(sum(v) for v in steps.values())
    kept = sum(size <= KEPT_EXPORT_BYTES for size in sizes)
    walls = side_by_side(backend, ops, args.rounds)
    ratio = np.array(walls["kept"]) / np.array(walls["fresh"])
    print(f"{len(ops)} ops at {args.img_size} px, {args.threads} threads; {kept} export to at most "
          f"{KEPT_EXPORT_BYTES / 1e6:g} MB and are kept")
    print(f"{'step':10s} {'median ms':>9s} {'mean ms':>8s} {'share %':>8s}")
    for step, ms in steps.items():
        print(f"{step:10s} {np.median(ms):9.1f} {np.mean(ms):8.1f} {sum(ms) / total * 100:8.1f}")
    print(f"a timing, fresh export: median {np.median(walls['fresh']):.1f} ms; kept export: median "
          f"{np.median(walls['kept']):.1f} ms; kept / fresh per op: median {np.median(ratio):.2f} "
          f"(p10 {np.percentile(ratio, 10):.2f}, p90 {np.percentile(ratio, 90):.2f}); total "
          f"{sum(walls['kept']) / sum(walls['fresh']):.2f}")
    every = census(args.img_size) if args.census else None
    if every:
        print(f"full default space: {every['ops']} ops, {every['all_bytes'] / 1e9:.2f} GB of exports; "
              f"{every['small_ops']} at most {KEPT_EXPORT_BYTES / 1e6:g} MB, {every['small_bytes'] / 1e9:.2f} GB "
              f"together ({'within' if every['kept_within_budget'] else 'over'} the "
              f"{KEPT_EXPORTS_BYTES / 1e9:g} GB budget)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": backend.fingerprint(), "platform": platform.platform(),
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "ops": [op.key for op in ops], "export_bytes": sizes, "kept": kept, "census": every, "steps_ms": steps,
        "walls_ms": walls,
        "kept_over_fresh": {"median": float(np.median(ratio)), "total": sum(walls["kept"]) / sum(walls["fresh"])},
    }, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
