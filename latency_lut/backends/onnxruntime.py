"""ONNX Runtime: each module is exported to ONNX in memory and run by an InferenceSession.

CPU uses the CPU execution provider with fixed intra-op threads and sequential execution; CUDA uses the
CUDA execution provider where the installed onnxruntime has it. Timing is the wall clock of `session.run`
with a host input, for ops and networks alike, so transfer costs cancel in the calibration.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ...errors import FastVitNasError
from ..measure import Timing, measure, wall_clock
from .base import Backend

OPSET = 17


def export_onnx(module: nn.Module, in_shape: tuple[int, ...], dtype: str = "float32") -> bytes:
    """Serialise an eval-mode module to ONNX bytes with a static input shape.

    Uses the TorchScript exporter: about 25x faster than the dynamo one on these small graphs, which
    matters when a space has hundreds of ops. Its deprecation warning is expected and silenced here only.
    """
    torch_dtype = getattr(torch, dtype)
    module = module.eval().to(dtype=torch_dtype)
    x = torch.randn(in_shape, dtype=torch_dtype)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"])
    return buffer.getvalue()


def session(model: bytes | str, device: str = "cpu", threads: int = 2) -> ort.InferenceSession:
    """An InferenceSession with the LUT's threads and provider; the same settings for ops and networks."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
    if provider not in ort.get_available_providers():
        raise FastVitNasError(f"--backend onnxruntime --device {device}: this onnxruntime has no {provider} "
                              f"(available: {', '.join(ort.get_available_providers())})")
    return ort.InferenceSession(model, options, providers=[provider])


def time_session(sess: ort.InferenceSession, protocol, dtype: str = "float32") -> Timing:
    """Time one session on a random input of its declared (static) shape."""
    meta = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(meta.shape).astype(dtype)
    feed = {meta.name: x}
    return measure(wall_clock(lambda: sess.run(None, feed)), protocol)


class OnnxRuntime(Backend):
    """Ops and networks exported to ONNX and run by onnxruntime."""

    name = "onnxruntime"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.protocol = replace(self.protocol, cold_weights_mb=0.0)
        if self.dtype == "bfloat16" or (self.dtype == "float16" and self.device == "cpu"):
            raise FastVitNasError(f"--backend onnxruntime: dtype {self.dtype} is not supported on {self.device} "
                                  "(use fp32, or fp16 on cuda)")

    def version(self) -> str:
        return ort.__version__

    def time_module(self, module: nn.Module, in_shape: tuple[int, ...], copies: int = 1) -> Timing:
        """Ops are timed with warm weights (`copies` 1): each session has its own thread pool, whose threads spin
        on after a run, so copies as sessions slowed each other (64 of them timed 2.25x the warm sum)."""
        if copies != 1:
            raise FastVitNasError("--backend onnxruntime times ops with warm weights only (cold_weights_mb 0)")
        sess = session(export_onnx(module, in_shape, self.dtype), self.device, self.threads)
        return time_session(sess, self.protocol, self.dtype)

    def prepare(self, module: nn.Module, in_shape: tuple[int, ...]) -> Callable[[], Timing]:
        sess = session(export_onnx(module, in_shape, self.dtype), self.device, self.threads)
        return lambda: time_session(sess, self.protocol, self.dtype)
