"""Folding a train-time FastViT into its inference-time, single-branch form.

Unlike `timm.utils.reparameterize_model`, this also folds the ConvFFN's conv+BN and is idempotent
(timm's RepMixer, RepCPE and large-kernel convs delete their branches and crash on a second call).
"""

from __future__ import annotations

import copy

import torch
from timm.layers import ConvNormAct
from timm.models.fastvit import ConvMlp
from torch import nn

from .branches import fuse_conv_bn


def _fuse_conv_norm(block: ConvNormAct) -> nn.Conv2d:
    conv = block.conv
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight)
    kernel, bias = fuse_conv_bn(conv.weight, block.bn, conv.bias)
    fused.weight.data.copy_(kernel)
    fused.bias.data.copy_(bias)
    return fused


@torch.no_grad()
def reparameterize(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy with every foldable branch folded; the input model is left untouched."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        if getattr(module, "reparam_conv", True) is None:
            module.reparameterize()
            if hasattr(module, "inference_mode"):
                module.inference_mode = True
        if isinstance(module, ConvMlp) and isinstance(module.conv, ConvNormAct):
            module.conv = _fuse_conv_norm(module.conv)
    for param in fused.parameters():
        param.requires_grad_(False)
    return fused
