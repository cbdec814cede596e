"""Structural rules of a space: which choices exist at each stage given the choices before it.

Everything a network's validity depends on is decided here once, at load time: the widths reachable at each
stage (non-decreasing, a multiple of the previous width because timm's patch embedding is a conv grouped by
its input width, and able to continue to the last stage), the mixers allowed per (stage, width), and which
fields apply to which stage. Sampling then picks among precomputed feasible choices and never dead-ends;
a space whose rules leave nothing raises `SpaceError` with the field path at load.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fastvit.spec import ATTENTION_HEAD_DIM, ArchSpec, StageSpec
from .errors import SpaceError
from .schema import STAGE_FIELDS, SpaceConfig

INNER_FIELDS = ("depth", "mlp_ratio", "repmixer_kernel", "ffn_kernel", "cpe_kernel", "patch_kernel")
"""Fields decided after width and mixer; which of them apply depends on the stage and its mixer."""


@dataclass(frozen=True)
class StageRule:
    """The resolved choices of one stage (defaults merged); `options[field]` in file order."""

    index: int
    options: dict[str, tuple]


class Rules:
    """Resolved choices plus the feasibility tables derived from the constraints."""

    def __init__(self, config: SpaceConfig, source: str) -> None:
        self.config = config
        self.source = source
        self.n_stages = len(config.stages)
        self.ties = frozenset(config.tie)
        self.attention_from = config.constraints.attention_from_stage
        self.cpe_anywhere = config.constraints.cpe_on == "any"
        self.stages = tuple(self._resolve_stage(i) for i in range(self.n_stages))
        self.branch_options = {"kind": tuple(config.branches.kind),
                               "conv_branches": tuple(config.branches.conv_branches)}
        self.feasible_widths = self._feasible_widths()
        self._after = {(i, prev): tuple(w for w in self.feasible_widths[i] if prev is None or _follows(prev, w))
                       for i in range(self.n_stages)
                       for prev in ((None,) if i == 0 else self.feasible_widths[i - 1])}
        self._check_ties()
        self._check_hidden()

    def fail(self, message: str) -> SpaceError:
        return SpaceError(f"space file {self.source}: {message}")

    # ---- resolution ----------------------------------------------------------------------------------
    def _resolve_stage(self, i: int) -> StageRule:
        stage, defaults = self.config.stages[i], self.config.defaults
        if i == 0 and stage.patch_kernel is not None:
            raise self.fail("stages.0.patch_kernel: the first stage has no patch embedding (the stem feeds it)")
        options: dict[str, tuple] = {}
        for name in STAGE_FIELDS:
            value = getattr(stage, name)
            if value is None and not (i == 0 and name == "patch_kernel"):
                value = getattr(defaults, name)
            if value is None and name == "mixer":
                value = ["repmixer"]
            if value is None and name == "cpe_kernel":
                value = [None]
            if value is not None:
                options[name] = tuple(value)
        required = ["depth", "width", "mlp_ratio", "ffn_kernel"] + (["patch_kernel"] if i else [])
        if "repmixer" in options["mixer"]:
            required.append("repmixer_kernel")
        for name in required:
            if name not in options:
                raise self.fail(f"stages.{i}.{name}: missing (list it in the stage or in defaults)")
        if i == 0:
            options.pop("patch_kernel", None)
        return StageRule(i, options)

    def _feasible_widths(self) -> tuple[tuple[int, ...], ...]:
        """Per stage, the widths on at least one complete chain of valid (width, mixer) choices."""
        local = []
        for rule in self.stages:
            widths = [w for w in rule.options["width"] if self.mixers_for(rule.index, w)]
            if not widths:
                raise self.fail(
                    f"stages.{rule.index}: constraints leave no width/mixer pair (attention needs stage >= "
                    f"constraints.attention_from_stage={self.attention_from} and a width multiple of "
                    f"{ATTENTION_HEAD_DIM})")
            local.append(widths)
        reach = [local[0]]
        for i in range(1, self.n_stages):
            widths = [w for w in local[i] if any(_follows(p, w) for p in reach[-1])]
            if not widths:
                raise self.fail(
                    f"stages.{i}.width: constraints leave no valid network: no choice is >= and a multiple of "
                    f"a reachable stages.{i - 1}.width {sorted(reach[-1])} (the patch embedding is grouped "
                    "by its input width)")
            reach.append(widths)
        ok = [reach[-1]]
        for i in range(self.n_stages - 2, -1, -1):
            ok.insert(0, [w for w in reach[i] if any(_follows(w, nxt) for nxt in ok[0])])
        return tuple(tuple(widths) for widths in ok)

    def _check_ties(self) -> None:
        for k, name in enumerate(self.config.tie):
            lists = [(r.index, r.options[name]) for r in self.stages if self.field_may_apply(r.index, name)]
            for index, opts in lists[1:]:
                if set(opts) != set(lists[0][1]):
                    raise self.fail(f"tie.{k}: {name} is tied but stages.{lists[0][0]} and stages.{index} list "
                                    "different choices")

    def _check_hidden(self) -> None:
        for rule in self.stages:
            width, ratio = min(self.feasible_widths[rule.index]), min(rule.options["mlp_ratio"])
            if int(width * ratio) < 1:
                raise self.fail(f"stages.{rule.index}.mlp_ratio: {ratio:g} gives no hidden channel at width {width}")

    # ---- queries used while deciding a network ---------------------------------------------------------
    def mixers_for(self, i: int, width: int) -> tuple[str, ...]:
        """Mixers allowed at stage i for this width, in file order."""
        return tuple(m for m in self.stages[i].options["mixer"]
                     if m == "repmixer" or (i >= self.attention_from and width % ATTENTION_HEAD_DIM == 0))

    def widths_after(self, i: int, prev: int | None) -> tuple[int, ...]:
        """Widths at stage i that follow `prev` (None for stage 0) and can still reach the last stage."""
        return self._after[i, prev]

    def cpe_applies(self, mixer: str) -> bool:
        return self.cpe_anywhere or mixer == "attention"

    def inner_fields(self, i: int, mixer: str) -> tuple[str, ...]:
        """The fields decided after width and mixer at stage i, in decision order."""
        skip = {"repmixer_kernel"} if mixer == "attention" else set()
        if not self.cpe_applies(mixer):
            skip.add("cpe_kernel")
        if i == 0:
            skip.add("patch_kernel")
        return tuple(f for f in INNER_FIELDS if f not in skip)

    def field_may_apply(self, i: int, name: str) -> bool:
        """Whether some network of the space decides `name` at stage i (for tie checks)."""
        mixers = self.stages[i].options["mixer"]
        return any(name in self.inner_fields(i, m) for m in mixers)

    # ---- membership --------------------------------------------------------------------------------------
    def check(self, spec: ArchSpec) -> list[str]:
        """Why `spec` is not a network of this space (structure only); empty when it is."""
        reasons = []
        if spec.in_chans != self.config.in_chans:
            reasons.append(f"in_chans: the space has {self.config.in_chans}, the spec {spec.in_chans}")
        if spec.num_classes != self.config.num_classes:
            reasons.append(f"num_classes: the space has {self.config.num_classes}, the spec {spec.num_classes}")
        for name, options in self.branch_options.items():
            value = getattr(spec.branches, name)
            if value not in options:
                reasons.append(f"branches.{name}: {value!r} is not one of {list(options)}")
        if len(spec.stages) != self.n_stages:
            return [*reasons, f"stages: the space has {self.n_stages} stages, the spec {len(spec.stages)}"]
        tied: dict[str, object] = {}
        prev = None
        for i, stage in enumerate(spec.stages):
            reasons.extend(self._check_stage(i, stage, prev, tied))
            prev = stage.width
        return reasons

    def _check_stage(self, i: int, stage: StageSpec, prev: int | None, tied: dict[str, object]) -> list[str]:
        rule, path, reasons = self.stages[i], f"stages[{i}]", []
        if stage.width not in rule.options["width"]:
            reasons.append(f"{path}.width: {stage.width} is not one of {list(rule.options['width'])}")
        elif prev is not None and not _follows(prev, stage.width):
            reasons.append(f"{path}.width: {stage.width} must be >= and a multiple of the previous width {prev}")
        if stage.mixer not in rule.options["mixer"]:
            reasons.append(f"{path}.mixer: {stage.mixer!r} is not one of {list(rule.options['mixer'])}")
        elif stage.mixer not in self.mixers_for(i, stage.width):
            reasons.append(f"{path}.mixer: attention needs stage >= {self.attention_from} and a width multiple of "
                           f"{ATTENTION_HEAD_DIM}")
        fields = self.inner_fields(i, stage.mixer)
        for name in INNER_FIELDS:
            value = getattr(stage, name)
            if name not in fields:
                if value is not None and name in ("cpe_kernel", "repmixer_kernel", "patch_kernel"):
                    reasons.append(f"{path}.{name}: must be null here (not decided for this stage and mixer)")
                continue
            if value not in rule.options[name]:
                reasons.append(f"{path}.{name}: {value!r} is not one of {list(rule.options[name])}")
            elif name in self.ties:
                if name in tied and tied[name] != value:
                    reasons.append(f"{path}.{name}: tied across stages, but {value!r} differs from {tied[name]!r}")
                tied.setdefault(name, value)
        return reasons


def _follows(prev: int, width: int) -> bool:
    """A width can follow `prev`: non-decreasing and divisible (grouped patch-embedding conv)."""
    return width >= prev and width % prev == 0
