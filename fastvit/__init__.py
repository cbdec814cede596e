"""The model layer: specs, train-time build, exact re-parameterization, profiling and timm export."""

from . import registry as _registry  # noqa: F401  (registers the timm architectures on import)
from .model import FastVitNas, build_model
from .presets import PRESETS
from .spec import ArchSpec, BranchRecipe, StageSpec

__all__ = ["PRESETS", "ArchSpec", "BranchRecipe", "FastVitNas", "StageSpec", "build_model"]
