"""fastvit-nas: hardware-aware search over FastViT variants, with exact re-parameterization and timm export.

Importing the package registers the `fastvit_nas*` architectures with timm, so `timm.create_model` builds
any `ArchSpec` and loads exported non-stock variants.
"""

from .errors import FastVitNasError, SpecError
from .fastvit import ArchSpec, BranchRecipe, StageSpec, build_model

__all__ = ["ArchSpec", "BranchRecipe", "FastVitNasError", "SpecError", "StageSpec", "build_model"]
__version__ = "0.1.0"
