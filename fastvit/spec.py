"""`ArchSpec`: the plain-data description of one FastViT network.

It is the only currency between modules (space, latency LUT, scoring, export), so it is frozen, hashable,
JSON-round-trippable and validated at construction: a spec that exists is a network that builds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError

TOKEN_MIXERS = ("repmixer", "attention")
BRANCH_KINDS = ("mobileone", "acb", "dbb")
ATTENTION_HEAD_DIM = 32
"""timm's FastViT attention uses a fixed head dim of 32 (not a constructor argument)."""

SPEC_FORMAT_VERSION = 1


def _check_int(path: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}: expected an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{path}: must be >= {minimum}, got {value}")


def _check_kernel(path: str, value: Any, minimum: int = 1) -> None:
    _check_int(path, value, minimum)
    if value % 2 == 0:
        raise SpecError(f"{path}: kernel sizes must be odd (centre-aligned fusion), got {value}")


def _reject_unknown(path: str, data: dict, cls: type) -> None:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class StageSpec:
    """One stage: an optional patch-embedding downsample, an optional CPE, then `depth` blocks.

    `patch_kernel` is None exactly for the first stage, which the convolutional stem feeds directly.
    `repmixer_kernel` is None exactly for attention stages, so one network has one spelling and one id.
    """

    depth: int
    width: int
    mixer: str = "repmixer"
    mlp_ratio: float = 3.0
    repmixer_kernel: int | None = 3
    ffn_kernel: int = 7
    cpe_kernel: int | None = None
    patch_kernel: int | None = 7

    def validate(self, path: str, index: int) -> None:
        _check_int(f"{path}.depth", self.depth)
        _check_int(f"{path}.width", self.width)
        if self.mixer not in TOKEN_MIXERS:
            raise SpecError(f"{path}.mixer: must be one of {TOKEN_MIXERS}, got {self.mixer!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, int | float):
            raise SpecError(f"{path}.mlp_ratio: expected a number, got {self.mlp_ratio!r}")
        if not self.mlp_ratio > 0 or int(self.width * self.mlp_ratio) < 1:
            raise SpecError(f"{path}.mlp_ratio: must give at least one hidden channel, got {self.mlp_ratio}")
        if self.mixer == "attention":
            if self.width % ATTENTION_HEAD_DIM:
                raise SpecError(
                    f"{path}.width: attention stages need a multiple of the head dim "
                    f"{ATTENTION_HEAD_DIM}, got {self.width}"
                )
            if self.repmixer_kernel is not None:
                raise SpecError(f"{path}.repmixer_kernel: must be null for an attention stage")
        else:
            if self.repmixer_kernel is None:
                raise SpecError(f"{path}.repmixer_kernel: required for a repmixer stage")
            _check_kernel(f"{path}.repmixer_kernel", self.repmixer_kernel, 3)
        _check_kernel(f"{path}.ffn_kernel", self.ffn_kernel)
        if self.cpe_kernel is not None:
            _check_kernel(f"{path}.cpe_kernel", self.cpe_kernel, 3)
        if index == 0:
            if self.patch_kernel is not None:
                raise SpecError(f"{path}.patch_kernel: must be null for the first stage (the stem feeds it)")
        else:
            if self.patch_kernel is None:
                raise SpecError(f"{path}.patch_kernel: required for every stage after the first")
            _check_kernel(f"{path}.patch_kernel", self.patch_kernel, 3)

    @property
    def hidden(self) -> int:
        """ConvFFN hidden width, rounded down exactly as timm's `int(dim * mlp_ratio)`."""
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class BranchRecipe:
    """The train-time branches added to every re-parameterizable kxk MobileOne conv.

    All kinds fold into the same single kxk conv, so they change training, never the inference
    network or its latency. `conv_branches` is MobileOne's over-parameterization factor k.
    """

    kind: str = "mobileone"
    conv_branches: int = 1

    def validate(self, path: str) -> None:
        if self.kind not in BRANCH_KINDS:
            raise SpecError(f"{path}.kind: must be one of {BRANCH_KINDS}, got {self.kind!r}")
        _check_int(f"{path}.conv_branches", self.conv_branches)


@dataclass(frozen=True)
class ArchSpec:
    """A whole FastViT network: stages plus the train-time branch recipe and I/O sizes."""

    stages: tuple[StageSpec, ...]
    branches: BranchRecipe = field(default_factory=BranchRecipe)
    in_chans: int = 3
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple) or not self.stages:
            raise SpecError("stages: expected a non-empty list of stages")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stages[{i}]: expected a stage, got {type(stage).__name__}")
            stage.validate(f"stages[{i}]", i)
            if i and stage.width % self.stages[i - 1].width:
                raise SpecError(
                    f"stages[{i}].width: must be a multiple of the previous stage's width "
                    f"{self.stages[i - 1].width} (the patch embedding is a conv grouped by its input "
                    f"channels), got {stage.width}"
                )
        if not isinstance(self.branches, BranchRecipe):
            raise SpecError("branches: expected a branch recipe")
        self.branches.validate("branches")
        _check_int("in_chans", self.in_chans)
        _check_int("num_classes", self.num_classes)

    # ---- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical plain dict: floats stay floats so the JSON (and the id) never depends on spelling."""
        out = dataclasses.asdict(self)
        out["stages"] = [dict(s, mlp_ratio=float(s["mlp_ratio"])) for s in out["stages"]]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        _reject_unknown("spec", data, cls)
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list | tuple):
            raise SpecError("stages: expected a list of stages")
        stages = []
        for i, raw in enumerate(raw_stages):
            _reject_unknown(f"stages[{i}]", raw, StageSpec)
            try:
                stages.append(StageSpec(**raw))
            except TypeError as exc:
                raise SpecError(f"stages[{i}]: {exc}") from None
        raw_branches = data.get("branches", {})
        _reject_unknown("branches", raw_branches, BranchRecipe)
        kwargs = {k: v for k, v in data.items() if k not in ("stages", "branches")}
        return cls(stages=tuple(stages), branches=BranchRecipe(**raw_branches), **kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)

    @classmethod
    def coerce(cls, spec: ArchSpec | dict[str, Any]) -> ArchSpec:
        """Accept a spec or its dict form (as timm passes `model_args` from a config.json)."""
        return spec if isinstance(spec, ArchSpec) else cls.from_dict(spec)

    # ---- identity --------------------------------------------------------------------------------------
    @property
    def arch_id(self) -> str:
        """Stable short id: a hash of the canonical JSON, identical across processes and versions."""
        digest = hashlib.sha256(f"v{SPEC_FORMAT_VERSION}:{self.to_json()}".encode()).hexdigest()
        return digest[:12]

    @property
    def readable(self) -> str:
        """A human-scannable summary, e.g. `d2.2.4.2-w48.96.192.384-RRRA-m3.3.3.4-k3.3.3-`."""
        s = self.stages
        mixers = "".join("A" if st.mixer == "attention" else "R" for st in s)

        def join(values) -> str:
            return ".".join("-" if v is None else f"{v:g}" for v in values)

        parts = [
            f"d{join(st.depth for st in s)}",
            f"w{join(st.width for st in s)}",
            mixers,
            f"m{join(st.mlp_ratio for st in s)}",
            f"rk{join(st.repmixer_kernel for st in s)}",
            f"fk{join(st.ffn_kernel for st in s)}",
            f"pe{join(st.cpe_kernel for st in s)}",
            f"pk{join(st.patch_kernel for st in s)}",
            f"{self.branches.kind}{self.branches.conv_branches}",
        ]
        return "_".join(parts)

    def replace(self, **changes: Any) -> ArchSpec:
        return dataclasses.replace(self, **changes)

    def with_stage(self, index: int, **changes: Any) -> ArchSpec:
        stages = list(self.stages)
        stages[index] = dataclasses.replace(stages[index], **changes)
        return dataclasses.replace(self, stages=tuple(stages))
