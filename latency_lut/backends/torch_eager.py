"""Torch eager execution on CPU (wall clock, fixed intra-op threads) or CUDA (events, synchronised)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..measure import Protocol, Timing, measure, round_robin, wall_clock
from ..modules import weight_copy
from .base import Backend


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Fix intra-op threads for the measurement and restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cuda_events(fn: Callable[[], object]) -> Callable[[], float]:
    """`run_once` on CUDA: events around one call, then wait for it, so the kernel time is what counts."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run_once() -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return run_once


class TorchEager(Backend):
    """`module(x)` under `torch.inference_mode`, in the LUT's dtype, on CPU or CUDA."""

    name = "torch"

    def version(self) -> str:
        return torch.__version__

    def time_module(self, module: nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        dtype = getattr(torch, self.dtype)
        module = module.eval().to(device=self.device, dtype=dtype)
        modules = [module, *(weight_copy(module) for _ in range(copies - 1))]
        x = torch.randn(in_shape, device=self.device, dtype=dtype)
        with _torch_threads(self.threads), torch.inference_mode():
            turn = round_robin([functools.partial(m, x) for m in modules])
            call = turn if replicas == 1 else lambda: [turn() for _ in range(replicas)]
            run = _cuda_events(call) if self.device == "cuda" else wall_clock(call)
            return measure(run, protocol or self.protocol, replicas)
