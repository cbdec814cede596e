"""Finding and loading space files: a path, or the name of a space shipped with the package."""

from __future__ import annotations

from pathlib import Path

from .errors import SpaceError
from .schema import parse_space_file
from .space import SearchSpace

SPACES_DIR = Path(__file__).parent
DEFAULT_SPACE = SPACES_DIR / "default.yaml"
TINY_SPACE = SPACES_DIR / "tiny.yaml"
BUILTIN_SPACES = {"default": DEFAULT_SPACE, "tiny": TINY_SPACE}


def load_space(ref: str | Path = "default") -> SearchSpace:
    """Load `default`, `tiny` or a YAML file path; malformed or contradictory files raise `SpaceError`."""
    path = BUILTIN_SPACES.get(str(ref), Path(ref))
    if not path.is_file():
        raise SpaceError(f"space file {ref}: not found (give a YAML path or one of {', '.join(BUILTIN_SPACES)})")
    return SearchSpace(parse_space_file(path), source=str(ref) if str(ref) in BUILTIN_SPACES else str(path))
