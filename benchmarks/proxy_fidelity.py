"""Benchmark: how well the proxy (and each zero-cost proxy) ranks FastViT variants like a training 8x longer.

Samples N specs from a search space (under a FLOPs cap that a CPU can train in the time at hand), trains each
on Fashion-MNIST at the proxy budget and at `--factor` times it, and reports Kendall τ / Spearman ρ against the
long-budget top-1 plus seconds per candidate. Writes `benchmarks/results/proxy_fidelity.{json,png}` with library
versions, seeds and every setting.

    .venv/bin/python benchmarks/proxy_fidelity.py --n 16 --epochs 1 --factor 8 --workers 2 --repeat-long

The defaults took 35 minutes on two CPU cores with the flags above: 32 px, 250 training and 300 validation images
per class, one epoch as the proxy, specs under 250 MFLOPs at 256 px. `--repeat-long` is what makes the result
readable: if the long budget does not agree with itself across seeds, no proxy can be judged against it.
`--spread` keeps specs at evenly spaced FLOPs quantiles (the cost range a Pareto search ranks across).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import scipy
import timm
import torch

from fastvit_nas import __version__
from fastvit_nas.search import ProxyBudget, ProxyCache, ProxyResult, load_data, measure_fidelity, sample_specs

RESULTS = Path(__file__).resolve().parent / "results"


def _top1(result: ProxyResult) -> str:
    return f"{result.top1:.3f}" if result.ok else f"{result.status} ({result.reason})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of sampled specs")
    parser.add_argument("--space", default="default", help="space name or YAML path")
    parser.add_argument("--max-flops", type=float, default=250e6,
                        help="keep sampled specs under this many multiply-adds at the space's img_size (CPU budget)")
    parser.add_argument("--spread", action="store_true",
                        help="keep specs at evenly spaced FLOPs quantiles of a 20x larger sample (whole cost range)")
    parser.add_argument("--data", default=None, help="data folder (default: Fashion-MNIST)")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--train-per-class", type=int, default=250)
    parser.add_argument("--val-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1, help="proxy budget in epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--factor", type=int, default=8, help="long budget = factor x proxy budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="candidates trained in parallel processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat-long", action="store_true",
                        help="train the long budget again with another seed: the noise ceiling of the reference")
    parser.add_argument("--cache", default=str(RESULTS / "proxy_cache"), help="proxy result cache folder")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_data(args.data, img_size=args.img_size, train_per_class=args.train_per_class,
                     val_per_class=args.val_per_class, seed=args.seed)
    budget = ProxyBudget(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                         seed=args.seed)
    specs = sample_specs(args.n, args.space, seed=args.seed, max_flops=int(args.max_flops) if args.max_flops else None,
                         spread=args.spread)
    print(f"{len(specs)} specs, data {data.summary()}, budget {budget.model_dump()}", flush=True)

    def on_row(row) -> None:
        print(f"{row.spec.arch_id} {row.spec.readable[:48]:<48} proxy {_top1(row.proxy)} long {_top1(row.long)} "
              f"{'' if row.long_repeat is None else f'long(reseeded) {_top1(row.long_repeat)} '}"
              f"({row.proxy.wall_time_s:.0f}s + {row.long.wall_time_s:.0f}s + zc {row.zero_cost_s:.1f}s)", flush=True)

    t0 = time.perf_counter()
    report = measure_fidelity(specs, data, budget, factor=args.factor, cache=ProxyCache(args.cache), on_row=on_row,
                              repeat_long=args.repeat_long, workers=args.workers)
    report.settings.update({
        "space": args.space, "max_flops": args.max_flops, "spread": args.spread, "n": args.n, "seed": args.seed,
        "threads": args.threads, "workers": args.workers,
        "total_s": time.perf_counter() - t0, "command": " ".join(sys.argv),
        "versions": {"fastvit_nas": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "scipy": scipy.__version__, "python": platform.python_version()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
    })
    print(report.table())
    json_path, png_path = report.write(args.out)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
