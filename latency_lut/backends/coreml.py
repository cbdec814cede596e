"""Core ML export of ops and networks, to be timed on Apple devices (CPU, GPU and Neural Engine).

coremltools turns a traced torch module into an ML program (`.mlpackage`), the file that Xcode's performance
report, or `coremltools.models.MLModel.predict` on a Mac, times on the device. Conversion runs anywhere and
prediction needs macOS, so this machine writes the files and the device times them. coremltools is an optional
dependency (`pip install 'fastvit-nas[coreml]'`): only users who export for Apple devices need it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ...errors import FastVitNasError

PRECISIONS = ("fp16", "fp32")
"""Compute precision of the ML program. fp16 is Core ML's default for ML programs and what the Neural Engine
runs, so it is the default here; fp32 keeps the GPU and CPU at full precision (the Neural Engine then falls back
to them)."""

DEPLOYMENT_TARGET = "iOS16"
"""The oldest OS the files run on. ML programs need iOS 15; 16 is the oldest release Apple still updates for the
devices it supports."""


def coremltools_module(precision: str = "fp16"):
    """coremltools, or one clear line saying how to get it (or that `precision` is not one Core ML offers)."""
    if precision not in PRECISIONS:
        raise FastVitNasError(f"--coreml-precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its notices about optional native parts on import
            import coremltools
    except ImportError:
        raise FastVitNasError("--format coreml: coremltools is not installed; pip install 'fastvit-nas[coreml]' "
                              "(or coremltools>=8)") from None
    return coremltools


class SideBySide(nn.Module):
    """Copies of one op, each with its own weights, all reading the same input: the Core ML twin of
    `onnxruntime.replicated`, so that a runtime's fixed cost per prediction is shared among them."""

    def __init__(self, copies: list[nn.Module]) -> None:
        super().__init__()
        self.copies = nn.ModuleList(copies)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(copy(x) for copy in self.copies)


def export_coreml(make_module: Callable[[], nn.Module], in_shape: tuple[int, ...], path: Path,
                  precision: str = "fp16", replicas: int = 1) -> None:
    """Write `replicas` fresh modules from `make_module`, side by side, as one ML program at `path`.

    Each copy comes from its own call of `make_module`, so copies hold different weights: the converter merges
    identical constants, and copies sharing their weights would be timed with weights that stay in the cache.
    The module goes to the converter through `torch.export`, not `torch.jit.trace`: coremltools 9 fails on the
    traced attention of this torch (a shape product cast to int), and the exported program converts every op
    type. The converter's progress bars and its notice about the untested torch version are kept off the
    terminal: one export writes thousands of files.
    """
    ct = coremltools_module(precision)
    module = SideBySide([make_module() for _ in range(replicas)]) if replicas > 1 else make_module()
    program = torch.export.export(module.eval(), (torch.randn(in_shape),)).run_decompositions({})
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        converted = ct.convert(program, inputs=[ct.TensorType(name="input", shape=in_shape)],
                               convert_to="mlprogram", compute_precision=compute,
                               minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
    converted.save(str(path))
