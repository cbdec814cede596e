"""The YAML format of a search space, validated by pydantic.

Every model forbids unknown fields and every type is strict (no "3" for 3, no true for 1), so a typo in a
space file is an error instead of a silently different space. `parse_space_file` turns the first pydantic
error into one line that names the field path, e.g. `space file s.yaml: stages.2.width.1: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from ..fastvit.spec import BRANCH_KINDS
from .errors import SpaceError

T = TypeVar("T")

STAGE_FIELDS = ("depth", "width", "mixer", "mlp_ratio", "repmixer_kernel", "ffn_kernel", "cpe_kernel", "patch_kernel")
"""Per-stage choices, in the order a network is decided (width and mixer first: the rest depends on them)."""

TIEABLE_FIELDS = ("depth", "mlp_ratio", "repmixer_kernel", "ffn_kernel", "cpe_kernel", "patch_kernel")
"""Fields that may take one value for all stages; width and mixer are tied by constraints instead."""


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"kernel sizes must be odd (centre-aligned fusion), got {value}")
    return value


def _unique(values: list[T]) -> list[T]:
    if len(set(values)) != len(values):
        raise ValueError(f"choices must be distinct, got {values}")
    return values


PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Kernel = Annotated[StrictInt, Field(ge=1), AfterValidator(_odd)]
BigKernel = Annotated[StrictInt, Field(ge=3), AfterValidator(_odd)]
Ratio = Annotated[StrictFloat | StrictInt, Field(gt=0), AfterValidator(float)]
Mixer = Literal["repmixer", "attention"]
BranchKind = Literal[BRANCH_KINDS]  # type: ignore[valid-type]


def Choices(item: Any) -> Any:
    """A non-empty list of distinct choices of `item`."""
    return Annotated[list[item], Field(min_length=1), AfterValidator(_unique)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageChoices(_Strict):
    """Choices for one stage; a missing field is taken from `defaults`."""

    depth: Choices(PositiveInt) | None = None
    width: Choices(PositiveInt) | None = None
    mixer: Choices(Mixer) | None = None
    mlp_ratio: Choices(Ratio) | None = None
    repmixer_kernel: Choices(BigKernel) | None = None
    ffn_kernel: Choices(Kernel) | None = None
    cpe_kernel: Choices(BigKernel | None) | None = None
    patch_kernel: Choices(BigKernel) | None = None


class BranchChoices(_Strict):
    """Train-time branch recipes: they never change the inference network, only training."""

    kind: Choices(BranchKind) = ["mobileone"]
    conv_branches: Choices(PositiveInt) = [1]


class Range(_Strict):
    """An inclusive range; either end may be left open."""

    min: NonNegativeInt | None = None
    max: NonNegativeInt | None = None

    def model_post_init(self, _context: Any) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")

    def contains(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Constraints(_Strict):
    """Rules across choices. Widths are always non-decreasing and multiples of the previous width."""

    attention_from_stage: NonNegativeInt = 0
    cpe_on: Literal["attention", "any"] = "attention"
    params: Range | None = None
    flops: Range | None = None


class SpaceConfig(_Strict):
    """A whole space file."""

    img_size: PositiveInt = 256
    in_chans: PositiveInt = 3
    num_classes: PositiveInt = 1000
    defaults: StageChoices = StageChoices()
    stages: Annotated[list[StageChoices], Field(min_length=1)]
    tie: Annotated[list[Literal[TIEABLE_FIELDS]], AfterValidator(_unique)] = []  # type: ignore[valid-type]
    branches: BranchChoices = BranchChoices()
    constraints: Constraints = Constraints()


def _error_line(exc: ValidationError) -> str:
    """The first error as `path: message`; union and validator tags are dropped from the path."""
    err = exc.errors()[0]
    parts = [str(p) for p in err["loc"] if isinstance(p, int) or ("[" not in p and p not in ("int", "float", "none"))]
    path = ".".join(parts) or "(top level)"
    return f"{path}: {err['msg']}"


def parse_space(data: Any, source: str) -> SpaceConfig:
    """Validate already-loaded YAML data; `source` names the file in error messages."""
    if not isinstance(data, dict):
        raise SpaceError(f"space file {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SpaceConfig.model_validate(data)
    except ValidationError as exc:
        raise SpaceError(f"space file {source}: {_error_line(exc)}") from None


def parse_space_file(path: Path) -> SpaceConfig:
    """Read and validate a space YAML file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"space file {path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpaceError(f"space file {path}: not valid YAML{where}") from None
    return parse_space(data, str(path))
