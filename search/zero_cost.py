"""Zero-cost proxies: scores of an untrained network from one batch, in seconds.

They are a pre-filter (score many candidates, train the best few) and features for a predictor; how far each
one tracks trained accuracy is measured, not assumed, by `fidelity`. Each proxy is one small function taking
(a freshly initialised train-time model it may modify, its spec, images, labels) and returning a float (larger =
predicted better); `ZERO_COST_PROXIES` registers them, so a new proxy is a new function with `@_register`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import FastVitNasError
from ..fastvit.model import build_model
from ..fastvit.profile import profile
from ..fastvit.spec import ArchSpec
from .data import ProxyData

ZeroCostProxy = Callable[[nn.Module, ArchSpec, torch.Tensor, torch.Tensor], float]
ZERO_COST_PROXIES: dict[str, ZeroCostProxy] = {}


def _register(fn: ZeroCostProxy) -> ZeroCostProxy:
    ZERO_COST_PROXIES[fn.__name__] = fn
    return fn


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Conv and linear weights: the prunable connections that SNIP and synflow score."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@functools.lru_cache(maxsize=256)
def _profile(spec: ArchSpec, img_size: int):
    return profile(spec, img_size)


@_register
def params(model: nn.Module, spec: ArchSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """Parameters of the deployed (re-parameterized) network."""
    return float(_profile(spec, x.shape[-1]).params)


@_register
def flops(model: nn.Module, spec: ArchSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """Multiply-adds (fvcore) of the deployed network at the batch's resolution."""
    return float(_profile(spec, x.shape[-1]).flops)


@_register
def grad_norm(model: nn.Module, spec: ArchSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum of per-tensor gradient L2 norms of the cross-entropy on the batch."""
    model.train()
    F.cross_entropy(model(x), y).backward()
    return float(sum(p.grad.norm() for p in model.parameters() if p.grad is not None).detach())


@_register
def snip(model: nn.Module, spec: ArchSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """SNIP connection sensitivity: Σ |w · ∂L/∂w| over conv and linear weights."""
    model.train()
    F.cross_entropy(model(x), y).backward()
    return float(sum((w * w.grad).abs().sum() for w in _weights(model) if w.grad is not None).detach())


@_register
def synflow(model: nn.Module, spec: ArchSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """SynFlow: Σ |θ · ∂R/∂θ| with all weights made positive and an all-ones input, data-free.

    Computed in float64 on an eval-mode network (fresh BN = identity) so deep presets neither overflow nor
    depend on batch statistics; the score is log-scaled because it spans hundreds of orders of magnitude.
    """
    model.eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model(torch.ones((1, *x.shape[1:]), dtype=torch.float64)).sum().backward()
    total = sum((p * p.grad).abs().sum() for p in model.parameters() if p.grad is not None)
    return float(torch.log(total).detach())


@_register
def naswot(model: nn.Module, spec: ArchSpec, x: torch.Tensor, y: torch.Tensor) -> float:
    """NASWOT (Mellor et al.): log|K| of the Hamming-kernel of the batch's activation patterns.

    FastViT uses GELU, whose output is positive exactly where ReLU's is, so the binary code of a unit is its
    pre-activation sign; distinct codes for distinct images mean a network that separates inputs at init.
    """
    model.eval()
    kernel = torch.zeros(len(x), len(x), dtype=torch.float64)

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        codes = (inputs[0].detach().flatten(1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.GELU | nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return float(torch.linalg.slogdet(kernel).logabsdet)


def zero_cost_scores(spec: ArchSpec, data: ProxyData, names: list[str] | None = None, batch_size: int = 64,
                     seed: int = 0) -> dict[str, float]:
    """Every registered (or each named) proxy of `spec` on one seeded random batch of training images."""
    unknown = sorted(set(names or ()) - set(ZERO_COST_PROXIES))
    if unknown:
        raise FastVitNasError(f"unknown zero-cost proxy {unknown[0]!r} (known: {', '.join(ZERO_COST_PROXIES)})")
    spec = spec.replace(in_chans=data.in_chans, num_classes=data.num_classes)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=gen)[:batch_size]
    x, y = data.normalize(data.train_x[idx]), data.train_y[idx]
    torch.manual_seed(seed)
    template = build_model(spec)
    return {name: ZERO_COST_PROXIES[name](copy.deepcopy(template), spec, x, y)
            for name in names or list(ZERO_COST_PROXIES)}
