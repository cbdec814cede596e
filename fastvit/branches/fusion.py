"""Kernel algebra of structural re-parameterization (RepVGG / ACB / DBB), on plain tensors.

Every train-time branch reduces to a `(kernel, bias)` pair of one fixed kxk conv; summing the pairs of
parallel branches gives the inference conv. Kernels follow PyTorch's layout `(out, in // groups, kh, kw)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KernelBias = tuple[torch.Tensor, torch.Tensor]


def bn_scale_shift(bn: nn.BatchNorm2d) -> KernelBias:
    """Eval-mode BN as `y = x * scale + shift`, per channel."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


def fuse_conv_bn(weight: torch.Tensor, bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None = None) -> KernelBias:
    """Fold BN into the preceding conv: W' = W·γ/σ, b' = β − (μ − b)·γ/σ."""
    scale, shift = bn_scale_shift(bn)
    bias = shift if conv_bias is None else shift + conv_bias * scale
    return weight * scale.reshape(-1, 1, 1, 1), bias


def pad_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (kh, kw) kernel to (size, size), centred: exact for odd sizes with 'same' padding."""
    kh, kw = kernel.shape[-2:]
    ph, pw = (size - kh) // 2, (size - kw) // 2
    return F.pad(kernel, [pw, size - kw - pw, ph, size - kh - ph])


def identity_kernel(channels: int, groups: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """The kxk kernel of `y = x`: a 1 at the centre of channel i's own input slice."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, size, size, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels, device=like.device)
    kernel[idx, idx % per_group, size // 2, size // 2] = 1.0
    return kernel


def avgpool_kernel(channels: int, groups: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """Average pooling over a size x size window, written as a grouped conv kernel (DBB transform V)."""
    return identity_kernel(channels, groups, 1, like).expand(-1, -1, size, size) / float(size * size)


def compose_1x1_kxk(k1: torch.Tensor, b1: torch.Tensor, k2: torch.Tensor, b2: torch.Tensor, groups: int) -> KernelBias:
    """A 1x1 conv followed by a kxk conv, both grouped alike, as one kxk conv (DBB transform III).

    Exact only when the kxk conv pads with the 1x1 branch's bias rather than zeros (see `BNAndPad`).
    """
    out2, mid_g = k2.shape[:2]
    mid, in_g = k1.shape[:2]
    k1g = k1.reshape(groups, mid // groups, in_g)
    k2g = k2.reshape(groups, out2 // groups, mid_g, *k2.shape[2:])
    kernel = torch.einsum("gomhw,gmi->goihw", k2g, k1g).reshape(out2, in_g, *k2.shape[2:])
    b1g = b1.reshape(groups, mid // groups)
    bias = b2 + torch.einsum("gomhw,gm->go", k2g, b1g).reshape(out2)
    return kernel, bias
