"""Reading specs from where users keep them: a preset name or a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecError
from .presets import PRESETS
from .spec import ArchSpec


def load_spec(ref: str | Path) -> ArchSpec:
    """Resolve a preset name (t8 … ma36) or read a spec JSON file, with one clear error for either."""
    if str(ref) in PRESETS:
        return PRESETS[str(ref)]
    path = Path(ref)
    if not path.is_file():
        raise SpecError(f"{ref}: neither a preset ({', '.join(PRESETS)}) nor a spec JSON file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read ({exc})") from None
    try:
        return ArchSpec.from_json(text)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def save_spec(spec: ArchSpec, path: Path) -> None:
    path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
