"""`SearchSpace`: sample, suggest, count, enumerate, check, mutate and cross FastViT networks of a space.

A network is decided stage by stage (width, mixer, then the fields that apply) and finally its branch recipe.
The structural rules (`constraints.Rules`) only ever offer choices that can be completed, so without a
param/FLOP range every walk succeeds on its first try. With a range, the walk is a depth-first search that
prunes any partial network whose exact size bounds (this stage's remaining choices at their min/max, plus the
min/max of every completion) miss the range, and checks the exact size at the end. Each walk is capped in
steps (`ATTEMPT_STEPS`) and the number of walks is capped too, so nothing can spin; load-time search proves
the ranges hold at least one network, or the file is rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from math import prod
from typing import Any

import numpy as np

from ..fastvit.spec import ArchSpec, BranchRecipe, StageSpec
from .choosers import AtRandom, Chooser, Decision, FromTrial, InOrder, Preferring
from .constraints import Rules
from .encode import encode
from .errors import SpaceError
from .schema import Range, SpaceConfig
from .size import (
    Size,
    block_size,
    cpe_size,
    head_size,
    network_size,
    patch_embed_size,
    stage_resolutions,
    stage_size,
    stem_size,
)

Tied = tuple[tuple[str, Any], ...]
"""Values of tied fields decided so far, sorted by field name (hashable, for memo tables)."""

Bounds = tuple[int, int, int, int]
"""(min params, max params, min flops, max flops)."""

SEARCH_STEPS = 1_000_000
"""Load-time search budget for a first network inside the param/FLOP ranges."""

ATTEMPT_STEPS = 500
"""Steps one ranged walk may take before it gives up and a fresh one starts. Bounds on params and on FLOPs are
exact one at a time but not together (a minimum on params and a maximum on FLOPs can exclude a whole subtree
that neither bound alone excludes), so an unlucky early choice could otherwise make one walk exhaustive."""

ATTEMPTS = 1_000
"""Ranged walks `sample` tries before it reports that the ranges hold too few networks to sample."""


class SearchSpace:
    """The networks a space file describes; see the module docstring for how walks work."""

    def __init__(self, config: SpaceConfig, source: str = "<memory>") -> None:
        self.config = config
        self.source = source
        self.rules = Rules(config, source)
        self.img_size = config.img_size
        self.ranges: dict[str, Range] = {
            k: r for k, r in (("params", config.constraints.params), ("flops", config.constraints.flops))
            if r is not None
        }
        self._resolutions = stage_resolutions(config.img_size, self.rules.n_stages)
        self._tie_options = {f: next(r.options[f] for r in self.rules.stages if self.rules.field_may_apply(r.index, f))
                             for f in self.rules.ties}
        self._count_memo: dict[tuple, int] = {}
        self._suffix_memo: dict[tuple, Bounds] = {}
        self._stage_memo: dict[tuple, Bounds] = {}
        if self.ranges:
            self._check_ranges()

    # ---- public API ------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator | int | None = None) -> ArchSpec:
        """One network, each decision drawn uniformly among the values that can still be completed."""
        rng = np.random.default_rng(rng)
        if not self.ranges:
            return next(self._walk(AtRandom(rng), bounded=False))
        for _ in range(ATTEMPTS):
            spec = self._attempt(AtRandom(rng))
            if spec is not None:
                return spec
        raise SpaceError(f"space file {self.source}: no network inside the params/flops ranges was reached in "
                         f"{ATTEMPTS} walks of {ATTEMPT_STEPS} steps; the ranges hold too few networks, widen them")

    def suggest(self, trial: Any) -> ArchSpec:
        """One network from an optuna trial: one categorical parameter per real choice.

        Parameter names encode everything their options depend on (e.g. `s1.width@48` lists the widths
        that may follow 48), so each name always has the same distribution, as optuna requires. Outside a
        param/FLOP range, the network is repaired deterministically to the nearest one inside (choices in
        file order closest to the asked ones; failing that, walks seeded by the answers, then the first
        network of the space), so the same parameters always give the same network.
        """
        asked = FromTrial(trial)
        raw = next(self._walk(asked, bounded=False))
        if self._in_ranges(raw):
            return raw
        spec = self._attempt(Preferring(lambda d: [asked.answers.get((d.key, d.stage))]))
        seed = int(raw.arch_id, 16)
        for k in range(ATTEMPTS // 10):
            if spec is not None:
                return spec
            spec = self._attempt(AtRandom(np.random.default_rng([seed, k])))
        return spec if spec is not None else self._anchor

    def enumerate(self, limit: int = 1_000_000) -> Iterator[ArchSpec]:
        """Every network once, in file order; refuses spaces with more than `limit` structural networks."""
        total = self._count(0, None, ())
        if total > limit:
            raise SpaceError(f"space file {self.source}: {total} networks are too many to enumerate (limit {limit})")
        return self._walk(InOrder(), bounded=bool(self.ranges))

    def cardinality(self, max_steps: int | None = None) -> int | None:
        """The exact number of networks, constraints and ranges included.

        Without ranges this is a product/sum over memoised stage states (instant for any size). With ranges,
        partial networks whose size bounds lie wholly inside are counted in one step and only the boundary is
        walked; `max_steps` caps that walk, returning None when it would be exceeded.
        """
        if not self.ranges:
            return self._count(0, None, ())
        budget = [max_steps if max_steps is not None else -1]
        return self._count_in_ranges(0, None, (), Size(0, 0), budget)

    def check(self, spec: ArchSpec) -> list[str]:
        """Why `spec` is not in the space (one reason per offending field); empty when it is."""
        reasons = self.rules.check(spec)
        if not reasons:
            size = network_size(spec, self.img_size)
            for name, rng in self.ranges.items():
                value = getattr(size, name)
                if not rng.contains(value):
                    reasons.append(f"{name}: {value} is outside constraints.{name} [{rng.min}, {rng.max}] "
                                   f"at img_size {self.img_size}")
        return reasons

    def contains(self, spec: ArchSpec) -> bool:
        return not self.check(spec)

    def size(self, spec: ArchSpec) -> Size:
        """Exact params and FLOPs of the fused network at the space's img_size (analytic, microseconds)."""
        return network_size(spec, self.img_size)

    def encode(self, spec: ArchSpec) -> np.ndarray:
        """Fixed-length features of a network of this space (`encode.feature_names` gives the columns)."""
        return encode(spec)

    def decisions(self, spec: ArchSpec) -> list[tuple[Decision, Any]]:
        """The real choices that produce `spec`, with the value taken at each."""
        self._require(spec)
        taken: list[tuple[Decision, Any]] = []

        class Replay:
            def order(self, d: Decision) -> Iterator[Any]:
                value = _value_of(spec, d)
                taken.append((d, value))
                yield value

        next(self._walk(Replay(), bounded=False))
        return taken

    def mutate(self, spec: ArchSpec, rng: np.random.Generator | int | None = None) -> ArchSpec:
        """A different network of the space that changes one decision (later ones follow only if they must)."""
        rng = np.random.default_rng(rng)
        targets = [d for d, _ in self.decisions(spec)]
        for j in rng.permutation(len(targets)):
            target = targets[j]

            def is_target(d: Decision, target: Decision = target) -> bool:
                return d.key == target.key and d.stage == target.stage

            chooser = Preferring(lambda d, t=is_target: [] if t(d) else [_value_of(spec, d)], rest="random", rng=rng,
                                 avoid=lambda d, t=is_target: [_value_of(spec, d)] if t(d) else [])
            child = self._attempt(chooser)
            if child is not None and child != spec:
                return child
        raise SpaceError(f"space file {self.source}: no network of the space differs from this one in one choice")

    def crossover(self, a: ArchSpec, b: ArchSpec, rng: np.random.Generator | int | None = None) -> ArchSpec:
        """A network taking each decision from a or b at random (the other parent's value as a fallback)."""
        self._require(a)
        self._require(b)
        rng = np.random.default_rng(rng)

        def prefer(d: Decision) -> list[Any]:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            return [_value_of(first, d), _value_of(second, d)]

        child = self._attempt(Preferring(prefer, rest="random", rng=rng))
        return child if child is not None else self.mutate(a, rng)

    # ---- the walk ---------------------------------------------------------------------------------------
    def _attempt(self, chooser: Chooser) -> ArchSpec | None:
        """The first network of a walk, or None when a ranged walk runs out of `ATTEMPT_STEPS`."""
        if not self.ranges:
            return next(self._walk(chooser, bounded=False))
        try:
            return next(self._walk(chooser, bounded=True, budget=[ATTEMPT_STEPS]), None)
        except _OutOfSteps:
            return None

    def _walk(self, chooser: Chooser, bounded: bool, budget: list[int] | None = None) -> Iterator[ArchSpec]:
        """Depth-first over decisions in `chooser` order, yielding every network reached (lazily)."""
        return self._walk_stage(chooser, bounded, budget, 0, None, (), (), Size(0, 0))

    def _walk_stage(self, chooser, bounded, budget, i, prev, tied, done, acc) -> Iterator[ArchSpec]:
        if i == self.rules.n_stages:
            head = head_size(prev, self.config.num_classes, self._resolutions[-1])
            if not bounded or self._size_in_ranges(acc + head):
                yield from self._walk_branches(chooser, done)
            return
        for stage, new_tied, cost in self._stage_choices(chooser, bounded, budget, i, prev, tied, acc):
            yield from self._walk_stage(chooser, bounded, budget, i + 1, stage.width, new_tied, (*done, stage), cost)

    def _stage_choices(self, chooser, bounded, budget, i, prev, tied, acc) -> Iterator[tuple[StageSpec, Tied, Size]]:
        """Every decided stage i (with the tied values and size so far) that may still fit the ranges."""
        rules = self.rules
        name = f"s{i}.width" if prev is None else f"s{i}.width@{prev}"
        for width in _choose(chooser, Decision(name, ("stage", i, "width"), rules.widths_after(i, prev), i)):
            mixers = rules.mixers_for(i, width)
            for mixer in _choose(chooser, Decision(f"s{i}.mixer", ("stage", i, "mixer"), mixers, i)):
                fields = rules.inner_fields(i, mixer)
                yield from self._field_choices(chooser, bounded, budget, i, prev, width, mixer, fields, {}, tied, acc)

    def _field_choices(self, chooser, bounded, budget, i, prev, width, mixer, fields, values, tied, acc):
        if budget is not None:
            budget[0] -= 1
            if budget[0] == 0:
                raise _OutOfSteps
        if bounded and not self._may_fit(i, prev, width, mixer, values, tied, acc):
            return
        if len(values) == len(fields):
            stage = self._stage(i, width, mixer, values)
            yield stage, tied, (acc + self._stage_cost(i, prev, stage) if bounded else acc)
            return
        field = fields[len(values)]
        if field in self.rules.ties:
            fixed = dict(tied)
            if field in fixed:
                yield from self._field_choices(chooser, bounded, budget, i, prev, width, mixer, fields,
                                               {**values, field: fixed[field]}, tied, acc)
                return
            decision = Decision(field, ("tie", field), self._tie_options[field], i)
        else:
            decision = Decision(f"s{i}.{field}", ("stage", i, field), self.rules.stages[i].options[field], i)
        for value in _choose(chooser, decision):
            new_tied = _with(tied, field, value) if field in self.rules.ties else tied
            yield from self._field_choices(chooser, bounded, budget, i, prev, width, mixer, fields,
                                           {**values, field: value}, new_tied, acc)

    def _walk_branches(self, chooser: Chooser, stages: tuple[StageSpec, ...]) -> Iterator[ArchSpec]:
        opts = self.rules.branch_options
        for kind in _choose(chooser, Decision("branches.kind", ("branches", "kind"), opts["kind"], None)):
            decision = Decision("branches.conv_branches", ("branches", "conv_branches"), opts["conv_branches"], None)
            for conv_branches in _choose(chooser, decision):
                yield ArchSpec(stages=stages, branches=BranchRecipe(kind, conv_branches),
                               in_chans=self.config.in_chans, num_classes=self.config.num_classes)

    @staticmethod
    def _stage(i: int, width: int, mixer: str, values: dict[str, Any]) -> StageSpec:
        return StageSpec(depth=values["depth"], width=width, mixer=mixer, mlp_ratio=values["mlp_ratio"],
                         repmixer_kernel=values.get("repmixer_kernel"), ffn_kernel=values["ffn_kernel"],
                         cpe_kernel=values.get("cpe_kernel"), patch_kernel=values.get("patch_kernel"))

    # ---- exact counting ---------------------------------------------------------------------------------
    def _count(self, i: int, prev: int | None, tied: Tied) -> int:
        """Networks completing stages i.. after width `prev` with these tied values (memoised)."""
        memo_key = (i, prev, tied)
        if memo_key in self._count_memo:
            return self._count_memo[memo_key]
        rules = self.rules
        if i == rules.n_stages:
            return prod(len(o) for o in rules.branch_options.values())
        total = 0
        for width in rules.widths_after(i, prev):
            for mixer in rules.mixers_for(i, width):
                fields = rules.inner_fields(i, mixer)
                fixed = dict(tied)
                free = [f for f in fields if f in rules.ties and f not in fixed]
                mult = prod(len(rules.stages[i].options[f]) for f in fields if f not in rules.ties)
                for combo in product(*(self._tie_options[f] for f in free)):
                    new_tied = tied
                    for f, v in zip(free, combo, strict=True):
                        new_tied = _with(new_tied, f, v)
                    total += mult * self._count(i + 1, width, new_tied)
        self._count_memo[memo_key] = total
        return total

    def _count_in_ranges(self, i: int, prev: int | None, tied: Tied, acc: Size, budget: list[int]) -> int | None:
        """Networks completing a partial one of size `acc` inside the ranges; None when `budget` runs out."""
        lo_p, hi_p, lo_f, hi_f = _shift(self._suffix(i, prev, tied), acc)
        if self._size_in_ranges(Size(lo_p, lo_f)) and self._size_in_ranges(Size(hi_p, hi_f)):
            return self._count(i, prev, tied)
        if not self._bounds_meet((lo_p, hi_p, lo_f, hi_f)):
            return 0
        total = 0
        try:
            for stage, new_tied, cost in self._stage_choices(InOrder(), True, budget, i, prev, tied, acc):
                sub = self._count_in_ranges(i + 1, stage.width, new_tied, cost, budget)
                if sub is None:
                    return None
                total += sub
        except _OutOfSteps:
            return None
        return total

    # ---- size bounds -------------------------------------------------------------------------------------
    def _stage_cost(self, i: int, prev: int | None, stage: StageSpec) -> Size:
        cost = stage_size(stage, prev, self._resolutions[i])
        return cost + stem_size(self.config.in_chans, stage.width, self.img_size) if i == 0 else cost

    def _stage_bounds(self, i: int, prev: int | None, width: int, mixer: str, fixed: dict[str, Any]) -> Bounds:
        """Exact min/max size of stage i given width, mixer and some fields; the others range freely."""
        key = (i, prev, width, mixer, tuple(sorted(fixed.items())))
        if key in self._stage_memo:
            return self._stage_memo[key]
        opts = self.rules.stages[i].options
        fields = self.rules.inner_fields(i, mixer)

        def choices(f: str) -> tuple:
            return (fixed[f],) if f in fixed else (opts[f] if f in fields else (None,))

        res = self._resolutions[i]
        blocks = [block_size(width, mixer, int(width * r), rk, fk, res)
                  for r, rk, fk in product(choices("mlp_ratio"), choices("repmixer_kernel"), choices("ffn_kernel"))]
        depths = choices("depth")
        extras = [cpe_size(width, ck, res) + (patch_embed_size(prev, width, pk, res) if pk else Size(0, 0))
                  for ck, pk in product(choices("cpe_kernel"), choices("patch_kernel"))]
        base = stem_size(self.config.in_chans, width, self.img_size) if i == 0 else Size(0, 0)
        bounds = (
            base.params + min(e.params for e in extras) + min(depths) * min(b.params for b in blocks),
            base.params + max(e.params for e in extras) + max(depths) * max(b.params for b in blocks),
            base.flops + min(e.flops for e in extras) + min(depths) * min(b.flops for b in blocks),
            base.flops + max(e.flops for e in extras) + max(depths) * max(b.flops for b in blocks),
        )
        self._stage_memo[key] = bounds
        return bounds

    def _suffix(self, i: int, prev: int | None, tied: Tied) -> Bounds:
        """Exact min/max size of everything from stage i on (head included), given `prev` and tied values."""
        memo_key = (i, prev, tied)
        if memo_key in self._suffix_memo:
            return self._suffix_memo[memo_key]
        if i == self.rules.n_stages:
            head = head_size(prev, self.config.num_classes, self._resolutions[-1])
            return head.params, head.params, head.flops, head.flops
        best: Bounds | None = None
        for width in self.rules.widths_after(i, prev):
            for mixer in self.rules.mixers_for(i, width):
                fixed = dict(tied)
                free = [f for f in self.rules.inner_fields(i, mixer) if f in self.rules.ties and f not in fixed]
                for combo in product(*(self._tie_options[f] for f in free)):
                    new_tied, values = tied, {f: v for f, v in fixed.items()
                                              if f in self.rules.inner_fields(i, mixer)}
                    for f, v in zip(free, combo, strict=True):
                        new_tied, values[f] = _with(new_tied, f, v), v
                    stage = self._stage_bounds(i, prev, width, mixer, values)
                    rest = self._suffix(i + 1, width, new_tied)
                    total = tuple(s + r for s, r in zip(stage, rest, strict=True))
                    best = total if best is None else (min(best[0], total[0]), max(best[1], total[1]),
                                                       min(best[2], total[2]), max(best[3], total[3]))
        assert best is not None, "feasible widths are never empty (checked at load)"
        self._suffix_memo[memo_key] = best
        return best

    def _may_fit(self, i, prev, width, mixer, values, tied, acc: Size) -> bool:
        """Whether some completion of this partial stage can land inside the ranges (exact bounds)."""
        fields = self.rules.inner_fields(i, mixer)
        fixed = {**{f: v for f, v in tied if f in fields}, **values}
        stage = self._stage_bounds(i, prev, width, mixer, fixed)
        rest = self._suffix(i + 1, width, _merge(tied, values, self.rules.ties))
        return self._bounds_meet(_shift(tuple(s + r for s, r in zip(stage, rest, strict=True)), acc))

    def _bounds_meet(self, bounds: Bounds) -> bool:
        lo_p, hi_p, lo_f, hi_f = bounds
        return all(
            (r.max is None or lo <= r.max) and (r.min is None or hi >= r.min)
            for r, lo, hi in ((self.ranges.get("params"), lo_p, hi_p), (self.ranges.get("flops"), lo_f, hi_f))
            if r is not None
        )

    def _size_in_ranges(self, size: Size) -> bool:
        return all(r.contains(getattr(size, name)) for name, r in self.ranges.items())

    def _in_ranges(self, spec: ArchSpec) -> bool:
        return not self.ranges or self._size_in_ranges(network_size(spec, self.img_size))

    def _check_ranges(self) -> None:
        """Fail at load when the ranges leave no network; keeps the one found as `suggest`'s last resort."""
        lo_p, hi_p, lo_f, hi_f = self._suffix(0, None, ())
        spans = {"params": (lo_p, hi_p), "flops": (lo_f, hi_f)}
        for name, rng in self.ranges.items():
            lo, hi = spans[name]
            if (rng.max is not None and lo > rng.max) or (rng.min is not None and hi < rng.min):
                raise SpaceError(f"space file {self.source}: constraints.{name}: [{rng.min}, {rng.max}] leaves no "
                                 f"valid network; the space spans [{lo}, {hi}] at img_size {self.img_size}")
        try:
            found = next(self._walk(InOrder(), bounded=True, budget=[SEARCH_STEPS]), None)
        except _OutOfSteps:
            raise SpaceError(f"space file {self.source}: constraints: no network inside the params/flops ranges "
                             f"was found in {SEARCH_STEPS} search steps; widen the ranges") from None
        if found is None:
            raise SpaceError(f"space file {self.source}: constraints: no network of the space has its params and "
                             "flops inside the ranges together")
        self._anchor = found

    def _require(self, spec: ArchSpec) -> None:
        reasons = self.check(spec)
        if reasons:
            raise SpaceError(f"spec {spec.arch_id} is not in space {self.source}: {reasons[0]}")


class _OutOfSteps(Exception):
    """A bounded search ran out of steps (caught by its caller, never escapes the module)."""


def _choose(chooser: Chooser, decision: Decision) -> Iterator[Any]:
    """Single-option decisions are not choices: taken without asking (so optuna never sees them)."""
    if len(decision.options) == 1:
        return iter(decision.options)
    return chooser.order(decision)


def _with(tied: Tied, field: str, value: Any) -> Tied:
    return tuple(sorted((*tied, (field, value)), key=lambda kv: kv[0]))


def _merge(tied: Tied, values: dict[str, Any], ties: frozenset[str]) -> Tied:
    out = tied
    known = dict(tied)
    for f, v in values.items():
        if f in ties and f not in known:
            out = _with(out, f, v)
    return out


def _shift(bounds: Bounds, acc: Size) -> Bounds:
    lo_p, hi_p, lo_f, hi_f = bounds
    return lo_p + acc.params, hi_p + acc.params, lo_f + acc.flops, hi_f + acc.flops


def _value_of(spec: ArchSpec, decision: Decision) -> Any:
    """The value `spec` takes at a decision (carried between networks by mutate and crossover)."""
    kind, field = decision.key[0], decision.key[-1]
    if kind == "branches":
        return getattr(spec.branches, field)
    return getattr(spec.stages[decision.stage], field)
