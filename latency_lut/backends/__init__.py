"""Backends that time modules on a device; a new backend is a new file plus one line in `BACKENDS`."""

from __future__ import annotations

from ...errors import FastVitNasError
from .base import Backend, canonical_dtype
from .onnxruntime import OnnxRuntime
from .torch_eager import TorchEager

BACKENDS: dict[str, type[Backend]] = {TorchEager.name: TorchEager, OnnxRuntime.name: OnnxRuntime}


def get_backend(name: str, **kwargs) -> Backend:
    """Instantiate a backend by name (`torch`, `onnxruntime`), with a clear error for unknown names."""
    if name not in BACKENDS:
        raise FastVitNasError(f"--backend: must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name](**kwargs)


__all__ = ["BACKENDS", "Backend", "canonical_dtype", "get_backend"]
