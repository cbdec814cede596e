"""Building one op's module alone, inference-time, from its LUT columns.

Cutting ops out of a whole network would cost one model build per spec that brings a new op (hundreds of
builds for a space); building each op directly costs one small module. The constructors and arguments
mirror `fastvit.model.FastVitNas` exactly (timm's blocks, GELU, fused ConvFFN conv); a test compares each
module with the one the network holds, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

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
