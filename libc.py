"""The few C-library calls the measurement and worker code needs, where the platform has them.

The process already has its C library loaded, so its symbols are looked up there (`CDLL(None)`) rather than
located on disk: `ctypes.util.find_library` runs `ldconfig` in a subprocess, once per caller.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache


@cache
def libc_function(name: str) -> Callable[..., int] | None:
    """The C library's `name` (e.g. `mallopt`, `prctl`), or None where this platform's C library lacks it."""
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except (OSError, TypeError):  # TypeError: Windows cannot open the process itself by None
        return None
