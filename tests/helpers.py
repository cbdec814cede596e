"""Test helpers: models whose folding actually matters, and error measures."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affines and layer scales, so every branch and scale changes the output.

    Fresh BNs (mean 0, var 1) and layer scales of 1e-5 would let a broken fusion pass unnoticed.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    for name, param in model.named_parameters():
        if name.endswith("gamma"):
            param.copy_(torch.rand(param.shape, generator=gen) * 0.3 + 0.05)
    return model.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
