"""Where the time of timing one op goes in a build, and what the savings made in it save: ONNX Runtime's kept
exports, torch's weight copies made by `modules.weight_copy`.

A build times every op in several sweeps (`Protocol.passes`, more while sweeps disagree, and the re-check), so
a per-op cost that does not depend on the host's state is worth paying once, or cheaply. For `--ops` random ops of
the default space: the wall time of each step of one timing as the protocol runs it; then, side by side per op and
in alternating order, a timing the old way against one the way a build times it now, with the wall time of each
and the latency each measured (which must not change).

- `--backend onnxruntime`: build the module, export it, replicate it `op_replicas` times, create the session, time
  it; a timing that exports afresh (`Backend.time_op`, the path every sweep took before exports were kept)
  against one that reuses the kept export (`OnnxRuntime.time_op`). With `--census`, also the export size of every
  op of the full default space: how many a build keeps, and in how many bytes.
- `--backend torch`: build the module, then make the copies that hold `cold_weights_mb` of its weights with
  `copy.deepcopy` and with `weight_copy`; a timing whose copies are made by `copy.deepcopy` (what every timing did
  before) against one by `weight_copy`.

Prints a table and writes benchmarks/results/lut_build_cost[_torch].json.

    .venv/bin/python benchmarks/lut_build_cost.py --img-size 128 --ops 60 --census
    .venv/bin/python benchmarks/lut_build_cost.py --backend torch --img-size 128 --ops 60 --rounds 4
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime
import torch

from fastvit_nas.latency_lut import Protocol, Timing, get_backend, resolve_space, unique_ops
from fastvit_nas.latency_lut.backends import Backend, torch_eager
from fastvit_nas.latency_lut.backends.onnxruntime import (
    KEPT_EXPORT_BYTES,
    KEPT_EXPORTS_BYTES,
    export_onnx,
    replicated,
    session,
    time_session,
)
from fastvit_nas.latency_lut.build import space_specs
from fastvit_nas.latency_lut.measure import weight_copies
from fastvit_nas.latency_lut.modules import op_module, weight_copy
from fastvit_nas.latency_lut.ops import Op

RESULTS = Path(__file__).parent / "results"
ONNX_STEPS = ("module", "export", "replicate", "session", "timing")


def onnx_step_times(backend: Backend, ops: list[Op]) -> tuple[dict[str, list[float]], list[int]]:
    """Milliseconds of each step of one timing per op, run as `OnnxRuntime.time_op` runs them, and the size of
    each op's export in bytes."""
    replicas = backend.protocol.op_replicas
    out: dict[str, list[float]] = {step: [] for step in ONNX_STEPS}
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
        for step, start, end in zip(ONNX_STEPS, marks, marks[1:], strict=False):
            out[step].append((end - start) * 1000)
    return out, sizes


def torch_step_times(backend: Backend, ops: list[Op]) -> dict[str, list[float]]:
    """Milliseconds to build each op's module and to make its weight copies with `copy.deepcopy` and with
    `weight_copy`."""
    out: dict[str, list[float]] = {"module": [], "deepcopy": [], "weight_copy": []}
    for op in ops:
        start = time.perf_counter()
        module = op_module(op)
        out["module"].append((time.perf_counter() - start) * 1000)
        copies = weight_copies(module, backend.protocol)
        for way, make in (("deepcopy", copy.deepcopy), ("weight_copy", weight_copy)):
            start = time.perf_counter()
            [make(module) for _ in range(copies - 1)]
            out[way].append((time.perf_counter() - start) * 1000)
    return out


def timing_ways(backend: Backend) -> dict[str, Callable[[Op], Timing]]:
    """The old way of timing an op, then the way a build times it now."""
    if backend.name == "onnxruntime":
        return {"fresh": lambda op: Backend.time_op(backend, op), "kept": backend.time_op}

    def by_deepcopy(op: Op) -> Timing:
        with mock.patch.object(torch_eager, "weight_copy", copy.deepcopy):
            return backend.time_op(op)

    return {"deepcopy": by_deepcopy, "weight_copy": backend.time_op}


def side_by_side(ways: dict[str, Callable[[Op], Timing]], ops: list[Op], rounds: int) -> dict[str, dict]:
    """Wall milliseconds and measured latency of a timing each way, per op, in alternating order (after one
    timing of every op, which leaves each kept export in place)."""
    for op in ops:
        list(ways.values())[-1](op)
    out: dict[str, dict] = {way: {"wall_ms": [], "latency_ms": []} for way in ways}
    for r in range(rounds):
        for i, op in enumerate(ops):
            for way in list(ways) if (i + r) % 2 else list(ways)[::-1]:
                start = time.perf_counter()
                timing = ways[way](op)
                out[way]["wall_ms"].append((time.perf_counter() - start) * 1000)
                out[way]["latency_ms"].append(timing.latency_ms)
    return out


def census(img_size: int) -> dict[str, float]:
    """Export sizes of every op of the full default space: the share a build keeps and the bytes they hold."""
    ops = unique_ops(space_specs(resolve_space("default"), img_size, 1), img_size).values()
    sizes = np.array([len(export_onnx(op_module(op), op.in_shape)) for op in ops])
    small = sizes[sizes <= KEPT_EXPORT_BYTES]
    return {"ops": len(sizes), "all_bytes": int(sizes.sum()), "small_ops": len(small),
            "small_bytes": int(small.sum()), "kept_within_budget": bool(small.sum() <= KEPT_EXPORTS_BYTES)}


def ratios(walls: dict[str, dict]) -> dict[str, dict[str, float]]:
    """New way over old way: wall time per timing (median, total) and measured latency (p10, median, p90)."""
    old, new = walls.values()
    wall = np.array(new["wall_ms"]) / np.array(old["wall_ms"])
    latency = np.array(new["latency_ms"]) / np.array(old["latency_ms"])
    return {"wall": {"median": float(np.median(wall)), "total": sum(new["wall_ms"]) / sum(old["wall_ms"])},
            "latency": {name: float(np.percentile(latency, q)) for name, q in (("p10", 10), ("median", 50),
                                                                              ("p90", 90))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", type=int, default=60, help="random ops, from 40 default-space specs")
    parser.add_argument("--rounds", type=int, default=2, help="side-by-side rounds over the ops")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--census", action="store_true", help="also export every op of the full default space "
                                                              "(ONNX Runtime)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.out = args.out or RESULTS / f"lut_build_cost{'_torch' if args.backend == 'torch' else ''}.json"
    backend = get_backend(args.backend, threads=args.threads, protocol=Protocol(reference_s=0.0))
    pool = list(unique_ops(resolve_space("default").sample(40, args.seed), args.img_size).values())
    ops = [pool[i] for i in np.random.default_rng(args.seed).choice(len(pool), min(args.ops, len(pool)),
                                                                      replace=False)]
    sizes: list[int] = []
    if args.backend == "onnxruntime":
        steps, sizes = onnx_step_times(backend, ops)
    else:
        steps = torch_step_times(backend, ops)
    walls = side_by_side(timing_ways(backend), ops, args.rounds)
    summary = ratios(walls)
    total = sum(sum(v) for v in steps.values())
    print(f"{args.backend}: {len(ops)} ops at {args.img_size} px, {args.threads} threads"
          + (f"; {sum(s <= KEPT_EXPORT_BYTES for s in sizes)} export to at most {KEPT_EXPORT_BYTES / 1e6:g} MB and "
             "are kept" if sizes else f"; copies hold {backend.protocol.cold_weights_mb:g} MB of weights"))
    # shares of one timing for ONNX Runtime, whose steps make it up; torch's two ways of copying are alternatives
    print(f"{'step':12s} {'median ms':>9s} {'mean ms':>8s}" + (f" {'share %':>8s}" if sizes else ""))
    for step, ms in steps.items():
        share = f" {sum(ms) / total * 100:8.1f}" if sizes else ""
        print(f"{step:12s} {np.median(ms):9.1f} {np.mean(ms):8.1f}{share}")
    old, new = walls
    print(f"a timing, {old}: median {np.median(walls[old]['wall_ms']):.1f} ms; {new}: median "
          f"{np.median(walls[new]['wall_ms']):.1f} ms; {new} / {old} per op: median {summary['wall']['median']:.2f}, "
          f"total {summary['wall']['total']:.2f}; measured latency {new} / {old}: median "
          f"{summary['latency']['median']:.3f} (p10 {summary['latency']['p10']:.3f}, p90 "
          f"{summary['latency']['p90']:.3f})")
    every = census(args.img_size) if args.census and sizes else None
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
        "ops": [op.key for op in ops], "export_bytes": sizes, "census": every, "steps_ms": steps,
        "timings": walls, "new_over_old": summary,
    }, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
