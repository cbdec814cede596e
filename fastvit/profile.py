"""Params and FLOPs (multiply-adds, fvcore's convention) of the inference-time network.

fvcore has no handle for `aten::scaled_dot_product_attention`, which timm's attention uses, and would skip
it silently; `_sdpa_flop_jit` counts its two matmuls (QKᵀ and AV) so attention stages are not free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from math import prod

import torch
from fvcore.nn import FlopCountAnalysis

from .model import build_model
from .spec import ArchSpec

IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::gelu", "aten::sigmoid", "aten::softmax",
    "aten::mean", "aten::relu", "aten::relu_", "aten::div", "aten::sub", "aten::flatten",
    "aten::reshape", "aten::permute", "aten::transpose", "aten::unbind",
)
"""Elementwise and shape ops: not multiply-adds by fvcore's convention, listed so nothing is skipped unseen."""


def _sdpa_flop_jit(inputs, outputs) -> int:
    q_shape = inputs[0].type().sizes()
    k_shape = inputs[1].type().sizes()
    batch_heads, n_q, head_dim = prod(q_shape[:-2]), q_shape[-2], q_shape[-1]
    n_kv = k_shape[-2]
    return 2 * batch_heads * n_q * n_kv * head_dim


@dataclass(frozen=True)
class Profile:
    """Size of one network at one input size."""

    params: int
    flops: int
    img_size: int
    by_operator: dict[str, int]


@torch.no_grad()
def profile(spec: ArchSpec, img_size: int = 256) -> Profile:
    """Count params and multiply-adds of the fused network on one image of `img_size` squared."""
    model = build_model(spec, inference=True).eval()
    x = torch.zeros(1, spec.in_chans, img_size, img_size)
    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
    analysis.set_op_handle(**dict.fromkeys(IGNORED_OPS))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return Profile(
        params=sum(p.numel() for p in model.parameters()),
        flops=int(analysis.total()),
        img_size=img_size,
        by_operator=dict(analysis.by_operator()),
    )
