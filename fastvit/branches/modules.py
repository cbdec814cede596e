"""Train-time branch modules; each knows how to fold itself into a kxk conv `(kernel, bias)`.

Branch names say what they are (as in ml-fastvit's `rbr_*`): an ACB branch is `conv_hor`/`conv_ver`, a DBB
branch is `seq_1x1_kxk`, `seq_1x1_avg` or `scale_SxS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import KernelBias, avgpool_kernel, bn_scale_shift, compose_1x1_kxk, fuse_conv_bn, pad_to


class ConvBNBranch(nn.Module):
    """A (kh, kw) conv + BN with 'same' padding, e.g. ACB's 1xk / kx1 or DBB's smaller-scale kernels."""

    def __init__(self, in_chs: int, out_chs: int, kernel: tuple[int, int], stride: int, groups: int) -> None:
        super().__init__()
        kh, kw = kernel
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, (kh // 2, kw // 2), groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fuse(self, size: int, groups: int) -> KernelBias:
        kernel, bias = fuse_conv_bn(self.conv.weight, self.bn)
        return pad_to(kernel, size), bias


class BNAndPad(nn.Module):
    """BN followed by padding with the BN's own output for a zero input.

    Padding with zeros *after* a biased layer would make a 1x1→kxk chain differ from its merged kernel at
    the borders; padding with the bias keeps the merge exact (DBB's BNAndPadLayer).
    """

    def __init__(self, channels: int, pad: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.pad == 0:
            return y
        fill = bn_scale_shift(self.bn)[1].reshape(1, -1, 1, 1)
        return F.pad(y - fill, [self.pad] * 4) + fill


class Seq1x1KxKBranch(nn.Module):
    """DBB's 1x1 → kxk sequential branch; merges into one kxk conv (transform III)."""

    def __init__(self, in_chs: int, out_chs: int, size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, in_chs, 1, groups=groups, bias=False)
        self.bn1 = BNAndPad(in_chs, size // 2)
        self.conv2 = nn.Conv2d(in_chs, out_chs, size, stride, 0, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))

    def fuse(self, size: int, groups: int) -> KernelBias:
        k1, b1 = fuse_conv_bn(self.conv1.weight, self.bn1.bn)
        k2, b2 = fuse_conv_bn(self.conv2.weight, self.bn2)
        return compose_1x1_kxk(k1, b1, k2, b2, groups)


class Seq1x1AvgBranch(nn.Module):
    """DBB's 1x1 → average-pooling branch; the pooling is a fixed kxk conv (transform V), then merged."""

    def __init__(self, in_chs: int, out_chs: int, size: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False)
        self.bn1 = BNAndPad(out_chs, size // 2)
        self.pool = nn.AvgPool2d(size, stride, 0)
        self.bn2 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.pool(self.bn1(self.conv1(x))))

    def fuse(self, size: int, groups: int) -> KernelBias:
        k1, b1 = fuse_conv_bn(self.conv1.weight, self.bn1.bn)
        pool = avgpool_kernel(self.bn2.num_features, groups, size, like=k1)
        k2, b2 = fuse_conv_bn(pool, self.bn2)
        return compose_1x1_kxk(k1, b1, k2, b2, groups)


def make_branches(kind: str, in_chs: int, out_chs: int, size: int, stride: int, groups: int) -> nn.ModuleDict:
    """The extra branches a recipe kind adds beside MobileOne's kxk, 1x1-scale and identity branches."""
    branches: dict[str, nn.Module] = {}
    if kind == "acb":
        branches["conv_hor"] = ConvBNBranch(in_chs, out_chs, (1, size), stride, groups)
        branches["conv_ver"] = ConvBNBranch(in_chs, out_chs, (size, 1), stride, groups)
    elif kind == "dbb":
        branches["seq_1x1_kxk"] = Seq1x1KxKBranch(in_chs, out_chs, size, stride, groups)
        branches["seq_1x1_avg"] = Seq1x1AvgBranch(in_chs, out_chs, size, stride, groups)
        for scale in range(3, size, 2):
            branches[f"scale_{scale}x{scale}"] = ConvBNBranch(in_chs, out_chs, (scale, scale), stride, groups)
    return nn.ModuleDict(branches)
