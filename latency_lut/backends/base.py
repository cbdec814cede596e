"""The backend contract: time one module on one input shape by the shared protocol.

A backend owns how a module runs (torch eager, an ONNX Runtime session, ...) and how one call is timed
(wall clock, CUDA events); it never owns the protocol, so ops and whole networks are measured alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

from torch import nn

from ...errors import FastVitNasError
from ..allocator import apply_allocator
from ..device import fingerprint, require_cuda
from ..measure import Protocol, Timing, weight_copies
from ..modules import op_module, weight_copy
from ..ops import Op

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def canonical_dtype(name: str) -> str:
    if name not in DTYPES:
        raise FastVitNasError(f"--dtype: must be one of fp32, fp16, bf16, got {name!r}")
    return DTYPES[name]


class Backend(ABC):
    """Runs and times modules on one device with fixed dtype and thread count."""

    name: ClassVar[str]
    default_op_replicas: ClassVar[int] = 1
    """Copies of an op per timed call when the protocol leaves it open (`Protocol.op_replicas`)."""
    default_cold_weights_mb: ClassVar[float] = 64.0
    """Megabytes of weight copies an op is timed through when the protocol leaves it open
    (`Protocol.cold_weights_mb`, `measure.weight_copies`)."""

    def __init__(self, device: str = "cpu", dtype: str = "float32", threads: int = 2,
                 protocol: Protocol | None = None) -> None:
        if device not in ("cpu", "cuda"):
            raise FastVitNasError(f"--device: must be cpu or cuda, got {device!r}")
        if device == "cuda":
            require_cuda()
        if threads < 1:
            raise FastVitNasError(f"--threads: must be >= 1, got {threads}")
        self.device = device
        self.dtype = canonical_dtype(dtype)
        self.threads = threads
        protocol = protocol or Protocol()
        self.protocol = replace(protocol, allocator=apply_allocator(protocol.allocator),
                                op_replicas=protocol.op_replicas or self.default_op_replicas,
                                cold_weights_mb=self.default_cold_weights_mb if protocol.cold_weights_mb is None
                                else protocol.cold_weights_mb)

    def fingerprint(self) -> dict[str, str | int]:
        return fingerprint(self.device, self.threads)

    @abstractmethod
    def version(self) -> str:
        """The runtime's version, recorded beside every LUT it measures."""

    @abstractmethod
    def time_module(self, module: nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        """Latency of `module` (an fp32 eval-mode CPU module) on a random input of `in_shape`, by the protocol
        (or by `protocol`, for a network's sweep: `network_timer`).

        With `copies` > 1, that many copies of the module (with their own weights) run in turn, one per call:
        how ops are timed with their weights out of the cache (`measure.weight_copies`). With `replicas` > 1, one
        timed call runs that many copies and the latency is one copy's share (`Protocol.op_replicas`).
        """

    def network_timer(self, module: nn.Module, in_shape: tuple[int, ...]) -> Callable[[], Timing]:
        """A timer of one end-to-end network, called once per sweep, by the protocol of a network's sweep
        (`Protocol.for_networks`). The network is built once for all its sweeps: building a fused network took
        0.5-3 s here, longer than a sweep of it, and a torch network's time does not depend on its instance."""
        protocol = self.protocol.for_networks()
        return lambda: self.time_module(module, in_shape, protocol=protocol)

    def time_op(self, op: Op) -> Timing:
        """One op's latency as a LUT records it: its module through the protocol's weight copies and replicas.
        A build times each op in several sweeps, so a backend that exports modules may keep an op's export."""
        module = op_module(op)
        return self.time_module(module, op.in_shape, weight_copies(module, self.protocol), self.protocol.op_replicas)

    def settled(self, timing: Timing) -> bool:
        """Whether `timing` was taken at the host's calm speed; a plain backend has no other speed to know of."""
        return True

    def await_calm(self) -> bool:
        """Wait, within the protocol's limit, for the host to be calm; whether it is (`speed.py` knows how)."""
        return True

    def as_calm(self, timing: Timing) -> Timing:
        """`timing` on the scale of the host's calm speed; a plain backend's timings are all on it."""
        return timing

    def chain_timer(self, before: nn.Module, after: nn.Module, in_shape: tuple[int, ...],
                    mid_shape: tuple[int, ...]) -> Callable[[Op | None, int], Timing]:
        """A timer of one network: `before` (on `in_shape`), then `copies` copies of a block op, each with its own
        weights, on `mid_shape`, then `after`: how blocks are timed inside a network (`in_context.py`). The
        timer is called for many blocks, so a backend that exports modules exports `before` and `after` once."""

        def time_chain(block: Op | None, copies: int) -> Timing:
            module = op_module(block) if copies else None
            middle = [weight_copy(module) for _ in range(copies)]
            return self.time_module(nn.Sequential(before, *middle, after), in_shape)

        return time_chain

    def prepare(self, module: nn.Module, in_shape: tuple[int, ...], replicas: int = 1) -> Callable[[], Timing]:
        """A timer of `module` to call again and again: for a workload re-timed through a build (`speed.py`),
        where a backend that compiles or exports modules should do so once. `replicas` as in `time_module`."""
        return lambda: self.time_module(module, in_shape, replicas=replicas)
