"""The search space: a validated YAML description of FastViT variants and the `SearchSpace` that walks it."""

from .choosers import Decision
from .encode import encode, feature_names
from .errors import SpaceError
from .io import BUILTIN_SPACES, DEFAULT_SPACE, TINY_SPACE, load_space
from .schema import SpaceConfig, parse_space, parse_space_file
from .size import Size, network_size
from .space import SearchSpace

__all__ = [
    "BUILTIN_SPACES",
    "DEFAULT_SPACE",
    "TINY_SPACE",
    "Decision",
    "SearchSpace",
    "Size",
    "SpaceConfig",
    "SpaceError",
    "encode",
    "feature_names",
    "load_space",
    "network_size",
    "parse_space",
    "parse_space_file",
]
