"""Specs per second drawn from the default search space, by `sample()` and by optuna `suggest()`.

Run: `.venv/bin/python benchmarks/space_sampling.py [--repeats 5]`. Prints a table and writes
`benchmarks/results/space_sampling.json` with the median of the repeats (after one warm-up repeat, which
also fills the space's memo tables) and the versions and machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import yaml

from fastvit_nas.space import DEFAULT_SPACE, SearchSpace, load_space, parse_space

RESULTS = Path(__file__).parent / "results" / "space_sampling.json"


def _ranged(constraints: dict) -> SearchSpace:
    raw = yaml.safe_load(DEFAULT_SPACE.read_text())
    raw["constraints"].update(constraints)
    return SearchSpace(parse_space(raw, "default+ranges"), source="default+ranges")


def _sampler(space: SearchSpace, n: int) -> Callable[[], None]:
    def run() -> None:
        rng = np.random.default_rng(0)
        for _ in range(n):
            space.sample(rng)

    return run


def _suggester(space: SearchSpace, n: int) -> Callable[[], None]:
    """ask → suggest → tell on an in-memory RandomSampler study: what a search loop pays per candidate."""

    def run() -> None:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(n):
            trial = study.ask()
            study.tell(trial, float(space.size(space.suggest(trial)).params))

    return run


def _fixed_suggester(space: SearchSpace, n: int) -> Callable[[], None]:
    """suggest() on FixedTrials replaying sampled networks' parameters: the space's own cost, no optuna storage."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        params.append(dict(trial.params))

    def run() -> None:
        for p in params:
            space.suggest(optuna.trial.FixedTrial(p))

    return run


def _rate(run: Callable[[], None], n: int, repeats: int) -> dict:
    run()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(n / (time.perf_counter() - start))
    return {"specs_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "n": n,
            "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-n", type=int, default=1000, help="specs per repeat for sample()")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    default = load_space("default")
    params_range = _ranged({"params": {"min": 3_000_000, "max": 6_000_000}})
    joint_range = _ranged({"params": {"min": 3_000_000, "max": 6_000_000}, "flops": {"max": 1_000_000_000}})
    cases = {
        "sample default": (_sampler(default, args.n), args.n),
        "suggest default (optuna RandomSampler ask/suggest/tell)": (_suggester(default, args.n // 5), args.n // 5),
        "suggest default (FixedTrial: the space's own cost)": (_fixed_suggester(default, args.n // 2), args.n // 2),
        "sample default + params 3M-6M": (_sampler(params_range, args.n // 5), args.n // 5),
        "sample default + params 3M-6M + flops <= 1G": (_sampler(joint_range, 50), 50),
    }
    results = {name: _rate(run, n, args.repeats) for name, (run, n) in cases.items()}

    width = max(map(len, results))
    print(f"{'case':<{width}}  specs/s (median)   min      max")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['specs_per_s']:>15,.0f}  {r['min']:>7,.0f}  {r['max']:>7,.0f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "space_sampling",
        "space": "default",
        "cardinality": default.cardinality(),
        "results": results,
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": 1,
        "note": "single Python thread; timings are medians of repeats after one warm-up repeat",
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
