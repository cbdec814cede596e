"""Proxy fidelity: how well the cheap scores rank architectures the way a longer training does.

A search is only as good as its accuracy score, so this is the number that says how far to trust one: train N
candidates at the proxy budget and at `factor`× that budget, and report Kendall τ and Spearman ρ (scipy) of the
proxy top-1 and of every zero-cost proxy against the long-budget top-1, with the seconds each costs.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..errors import FastVitNasError
from ..fastvit.spec import ArchSpec
from ..space import load_space
from ..workers import worker_pool
from .cache import ProxyCache
from .data import ProxyData
from .proxy import ProxyBudget, ProxyResult, proxy_score, torch_threads
from .zero_cost import zero_cost_scores

VOTE_MEMBERS = ("synflow", "naswot", "snip")
"""Rank-averaged into `zc_vote`, after Abdelfattah et al.'s zero-cost vote (synflow, jacob_cov ≈ NASWOT, snip)."""


@dataclass(frozen=True)
class FidelityRow:
    """One candidate: its short and long training, its zero-cost scores and what they cost."""

    spec: ArchSpec
    proxy: ProxyResult
    long: ProxyResult
    zero_cost: dict[str, float]
    zero_cost_s: float
    long_repeat: ProxyResult | None = None
    """The long training again with another seed: its agreement with `long` is the best any scorer can reach."""

    @property
    def usable(self) -> bool:
        return self.proxy.ok and self.long.ok and (self.long_repeat is None or self.long_repeat.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"arch_id": self.spec.arch_id, "readable": self.spec.readable, "spec": self.spec.to_dict(),
                "proxy": self.proxy.to_dict(), "long": self.long.to_dict(), "zero_cost": self.zero_cost,
                "zero_cost_s": self.zero_cost_s,
                "long_repeat": self.long_repeat.to_dict() if self.long_repeat else None}


@dataclass
class FidelityReport:
    """All rows of one fidelity run; correlations and timings are derived on demand, so they never go stale."""

    rows: list[FidelityRow]
    factor: int
    settings: dict[str, Any] = field(default_factory=dict)

    def scores(self) -> dict[str, list[float]]:
        """Per scorer, one value per usable row (both trainings ok), in row order; `long` is the reference."""
        usable = [r for r in self.rows if r.usable]
        out = {"long": [r.long.top1 for r in usable], "proxy": [r.proxy.top1 for r in usable]}
        if usable and usable[0].long_repeat is not None:
            out["long_reseeded"] = [r.long_repeat.top1 for r in usable]
        for name in usable[0].zero_cost if usable else ():
            out[name] = [r.zero_cost[name] for r in usable]
        members = [m for m in VOTE_MEMBERS if m in out]
        if members and usable:
            out["zc_vote"] = list(np.mean([stats.rankdata(out[m]) for m in members], axis=0))
        return out

    def correlations(self) -> dict[str, dict[str, float]]:
        """Kendall τ and Spearman ρ of each scorer against the long-budget top-1 (NaN when undefined)."""
        scores = self.scores()
        reference = scores.pop("long")
        out = {}
        for name, values in scores.items():
            if len(values) < 3 or len(set(values)) < 2 or len(set(reference)) < 2:
                out[name] = {"kendall": float("nan"), "spearman": float("nan"), "n": len(values)}
                continue
            out[name] = {"kendall": float(stats.kendalltau(values, reference).statistic),
                         "spearman": float(stats.spearmanr(values, reference).statistic), "n": len(values)}
        return out

    def seconds(self) -> dict[str, float]:
        """Median seconds per candidate for each kind of score."""
        def median(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")
        return {"proxy": median([r.proxy.wall_time_s for r in self.rows]),
                "long": median([r.long.wall_time_s for r in self.rows]),
                "zero_cost_all": median([r.zero_cost_s for r in self.rows])}

    def table(self) -> str:
        corr, secs = self.correlations(), self.seconds()
        failed = sum(not r.usable for r in self.rows)
        lines = [f"{'scorer':<12} {'kendall':>8} {'spearman':>9} {'n':>3}   (vs top-1 after {self.factor}x budget)"]
        lines += [f"{name:<12} {c['kendall']:>8.3f} {c['spearman']:>9.3f} {c['n']:>3}" for name, c in corr.items()]
        lines.append(f"seconds per candidate (median): proxy {secs['proxy']:.1f}, long {secs['long']:.1f}, "
                     f"all zero-cost proxies {secs['zero_cost_all']:.1f}; failed runs left out: {failed}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "settings": self.settings, "correlations": self.correlations(),
                "seconds_per_candidate": self.seconds(), "rows": [r.to_dict() for r in self.rows]}

    def write(self, out_dir: str | Path, stem: str = "proxy_fidelity") -> tuple[Path, Path]:
        """`<stem>.json` (everything, NaN as null) and `<stem>.png` (scatter + correlation bars)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
        json_path.write_text(json.dumps(_nan_to_none(self.to_dict()), indent=1) + "\n")
        self.plot(png_path)
        return json_path, png_path

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        scores, corr = self.scores(), self.correlations()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        left.scatter(scores["proxy"], scores["long"])
        tau = corr.get("proxy", {}).get("kendall", float("nan"))
        left.set(xlabel="proxy top-1", ylabel=f"top-1 after {self.factor}x budget",
                 title=f"proxy vs long budget (τ = {tau:.2f})")
        names = list(corr)
        pos = np.arange(len(names))
        right.bar(pos - 0.2, [corr[n]["kendall"] for n in names], 0.4, label="Kendall τ")
        right.bar(pos + 0.2, [corr[n]["spearman"] for n in names], 0.4, label="Spearman ρ")
        right.set_xticks(pos, names, rotation=30)
        right.axhline(0, color="black", linewidth=0.8)
        right.set(ylim=(-1, 1), title="rank correlation with long-budget top-1")
        right.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _nan_to_none(obj: Any) -> Any:
    """Strict JSON has no NaN; an undefined correlation is written as null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def sample_specs(n: int, space: str | Path = "default", seed: int = 0, max_flops: int | None = None,
                 tries_per_spec: int = 2000, spread: bool = False, pool_factor: int = 20) -> list[ArchSpec]:
    """`n` distinct specs drawn with `seed` from a search space (a name or a YAML path).

    `max_flops` (at the space's img_size) keeps only networks a CPU can proxy-train in the time at hand; it
    rejects samples instead of adding a range to the space, so the kept networks follow the space's own
    distribution below the cap rather than piling up at it. With `spread`, `pool_factor` × `n` specs are drawn
    and the `n` at evenly spaced FLOPs quantiles kept: a search ranks networks across the whole cost range of
    its Pareto front, whereas uniform samples crowd where the space has most networks, and a fidelity figure
    measured there answers only the harder half of the question.
    """
    searchable = load_space(space)
    rng = np.random.default_rng(seed)
    want = n * pool_factor if spread else n
    specs: dict[str, ArchSpec] = {}
    for _ in range(tries_per_spec * want):
        spec = searchable.sample(rng)
        if max_flops is None or searchable.size(spec).flops <= max_flops:
            specs.setdefault(spec.arch_id, spec)
        if len(specs) == want:
            break
    if len(specs) < n:
        cap = f" under {max_flops} FLOPs" if max_flops is not None else ""
        raise FastVitNasError(f"space {space}: found only {len(specs)} distinct specs{cap}, asked for {n}")
    if not spread:
        return list(specs.values())
    by_flops = sorted(specs.values(), key=lambda s: (searchable.size(s).flops, s.arch_id))
    return [by_flops[round(i)] for i in np.linspace(0, len(by_flops) - 1, n)]


def reference_budget(budget: ProxyBudget, factor: int, repeat: int = 0) -> ProxyBudget:
    """The long budget, trained with a seed of its own (`repeat` 0 for the reference, 1 for its repetition).

    With the proxy's seed, the long run would start from the same weights and see the same batches, and the two
    would agree through that shared noise rather than through the architecture: on 2026-11-29 a shared-seed run
    gave the proxy τ 0.40 against the long budget and -0.08 against the same long budget with another seed.
    """
    return budget.scaled(factor).model_copy(update={"seed": budget.seed + 1 + repeat})


def _score_row(spec: ArchSpec, data: ProxyData, budget: ProxyBudget, factor: int, zero_cost: list[str] | None,
               cache_dir: str | None, repeat_long: bool) -> FidelityRow:
    """Everything one candidate needs (zero-cost scores, short, long and repeated long training): one unit of work
    for a worker process, so it takes only picklable arguments and opens the shared cache by its folder."""
    train = ProxyCache(cache_dir).score if cache_dir is not None else proxy_score
    t0 = time.perf_counter()
    with torch_threads(budget.threads):
        zc = zero_cost_scores(spec, data, zero_cost, seed=budget.seed)
    zc_s = time.perf_counter() - t0
    repeat = train(spec, data, reference_budget(budget, factor, repeat=1)) if repeat_long else None
    return FidelityRow(spec, train(spec, data, budget), train(spec, data, reference_budget(budget, factor)), zc, zc_s,
                       repeat)


def measure_fidelity(specs: Sequence[ArchSpec], data: ProxyData, budget: ProxyBudget, factor: int = 8,
                     zero_cost: list[str] | None = None, cache: ProxyCache | None = None,
                     on_row: Callable[[FidelityRow], None] | None = None,
                     repeat_long: bool = False, workers: int = 1) -> FidelityReport:
    """Train every spec at `budget` and at `budget.scaled(factor)`, score it zero-cost, and correlate.

    The long budget trains with seed + 1 (`reference_budget`). With `repeat_long`, it is trained a second time
    with seed + 2: the `long_reseeded` row of the report is then the noise ceiling, the rank agreement of the
    reference with itself. With `workers` > 1, candidates are trained in that many processes (each with
    `budget.threads` threads): small proxy networks are dominated by per-op overhead, which more threads per
    process do not hide but more processes do.
    `on_row` sees rows as they finish; the report keeps the order of `specs`.
    """
    cache_dir = str(cache.directory) if cache is not None else None
    args = [(spec, data, budget, factor, zero_cost, cache_dir, repeat_long) for spec in specs]
    rows: list[FidelityRow | None] = [None] * len(args)
    if workers <= 1:
        for i, item in enumerate(args):
            rows[i] = _score_row(*item)
            if on_row is not None:
                on_row(rows[i])
    else:
        with worker_pool(workers) as pool:
            futures = {pool.submit(_score_row, *item): i for i, item in enumerate(args)}
            for future in as_completed(futures):
                rows[futures[future]] = future.result()
                if on_row is not None:
                    on_row(rows[futures[future]])
    settings = {"budget": budget.model_dump(), "long_budget": reference_budget(budget, factor).model_dump(),
                "data": data.summary(), "workers": workers}
    return FidelityReport([r for r in rows if r is not None], factor, settings)
