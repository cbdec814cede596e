"""Building one op's module alone, inference-time, from its LUT columns.

Cutting ops out of a whole network would cost one model build per spec that brings a new op (hundreds of
builds for a space); building each op directly costs one small module. The constructors and arguments
mirror `fastvit.model.FastVitNas` exactly (timm's blocks, GELU, fused ConvFFN conv); a test compares each
module with the one the network holds, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy

from timm.layers import ClassifierHead
from timm.models.fastvit import (
    AttentionBlock,
    MobileOneBlock,
    PatchEmbed,
    RepConditionalPosEnc,
    RepMixerBlock,
    convolutional_stem,
)
from torch import nn

from .ops import Op


def _ffn_conv(width: int, kernel: int) -> nn.Conv2d:
    """The fused ConvFFN depthwise conv, as `fastvit.model` builds it in inference mode."""
    return nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=width, bias=True)


def _mlp_ratio(op: Op) -> float:
    """A ratio that timm's `int(dim * ratio)` turns back into exactly `op.hidden`, free of float rounding."""
    return (op.hidden + 0.5) / op.in_ch


def op_module(op: Op) -> nn.Module:
    """The eval-mode inference-time module of `op` (random weights: latency does not depend on them)."""
    kind = op.op_type
    if kind == "stem":
        module = convolutional_stem(op.in_ch, op.out_ch, nn.GELU, inference_mode=True)
    elif kind == "patch_embed":
        module = PatchEmbed(patch_size=op.kernel, stride=op.stride, in_chs=op.in_ch, embed_dim=op.out_ch,
                            use_se=False, act_layer=nn.GELU, lkc_use_act=False, inference_mode=True)
    elif kind == "cpe":
        module = RepConditionalPosEnc(op.in_ch, spatial_shape=(op.kernel, op.kernel), inference_mode=True)
    elif kind == "repmixer_block":
        module = RepMixerBlock(op.in_ch, kernel_size=op.kernel, mlp_ratio=_mlp_ratio(op), act_layer=nn.GELU,
                               layer_scale_init_value=1e-5, inference_mode=True)
        module.mlp.conv = _ffn_conv(op.in_ch, op.ffn_kernel)
    elif kind == "attention_block":
        module = AttentionBlock(op.in_ch, mlp_ratio=_mlp_ratio(op), act_layer=nn.GELU, norm_layer=nn.BatchNorm2d,
                                layer_scale_init_value=1e-5)
        module.mlp.conv = _ffn_conv(op.in_ch, op.ffn_kernel)
    elif kind == "final_conv":
        module = MobileOneBlock(in_chs=op.in_ch, out_chs=op.out_ch, kernel_size=3, stride=1, group_size=1,
                                inference_mode=True, use_se=True, act_layer=nn.GELU, num_conv_branches=1)
    elif kind == "head":
        module = ClassifierHead(op.in_ch, op.num_classes, pool_type="avg", drop_rate=0.0)
    else:
        raise ValueError(f"unknown op type {kind!r}")
    return module.eval()


def weight_copy(module: nn.Module) -> nn.Module:
    """`module` with weights and buffers of its own, equal in value: one of the copies an op is timed through to
    keep its weights out of the cache (`measure.weight_copies`).

    `copy.deepcopy` copies every attribute of every submodule through Python's generic machinery: on 60 random ops of
    the default space at 128 px that took 94 ms of a torch op timing's 143 ms (medians on a slow hour; most ops need
    the 64 copies of `MAX_WEIGHT_COPIES`). Only the tensors need memory of their own; the rest of a module (its
    settings, hooks) is only read while it runs, so this shares it and copies the tensors: 17 ms, and a whole op
    timing 0.40 of its former time, measuring latencies 0.976 of the former (median; `benchmarks/lut_build_cost.py
    --backend torch`). Tensors held outside parameters and buffers would stay shared; no op module has any (a
    test checks).
    """
    new = copy.copy(module)
    new.__dict__.update(
        _parameters={name: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
                     for name, p in module._parameters.items()},
        _buffers={name: None if b is None else b.clone() for name, b in module._buffers.items()},
        _modules={name: None if m is None else weight_copy(m) for name, m in module._modules.items()})
    return new
