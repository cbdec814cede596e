"""Closed-form params and FLOPs of the inference-time (fused) network, without building it.

`fastvit.profile` traces a model with fvcore (~0.3–2 s per spec); the space needs sizes millions of times
(bounds for param/FLOP ranges, `space sample` output), so this mirrors `fastvit.model` layer by layer with
fvcore's conventions: multiply-adds of convs and linears (bias not counted), 2·numel for eval-mode
BatchNorm with affine, numel for adaptive average pooling, 2·B·H·N²·d for SDPA (QKᵀ and AV);
elementwise ops are free. `tests/test_space.py` checks it against `profile()` and `build_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fastvit.model import CLS_RATIO
from ..fastvit.spec import ArchSpec, StageSpec


@dataclass(frozen=True)
class Size:
    """Params and multiply-adds; addable so that stage costs sum into network costs."""

    params: int
    flops: int

    def __add__(self, other: Size) -> Size:
        return Size(self.params + other.params, self.flops + other.flops)

    def __mul__(self, k: int) -> Size:
        return Size(self.params * k, self.flops * k)


def _conv(cin: int, cout: int, k: int, groups: int, res: int, bias: bool = True) -> Size:
    """A square conv producing a `res`×`res` map: weight (cout, cin/groups, k, k) plus bias."""
    weights = cout * (cin // groups) * k * k
    return Size(weights + (cout if bias else 0), weights * res * res)


def downsampled(res: int) -> int:
    """Output side of a stride-2 conv with odd kernel k and timm's symmetric padding k//2."""
    return (res + 1) // 2


def stage_resolutions(img_size: int, n_stages: int) -> tuple[int, ...]:
    """Feature-map side per stage: the stem divides by 4, every later stage's patch embedding by 2."""
    res = downsampled(downsampled(img_size))
    out = [res]
    for _ in range(1, n_stages):
        res = downsampled(res)
        out.append(res)
    return tuple(out)


def stem_size(in_chans: int, width: int, img_size: int) -> Size:
    """timm's convolutional stem: 3x3/2 full conv, 3x3/2 depthwise conv, 1x1 conv (all fused)."""
    r1 = downsampled(img_size)
    r2 = downsampled(r1)
    return _conv(in_chans, width, 3, 1, r1) + _conv(width, width, 3, width, r2) + _conv(width, width, 1, 1, r2)


def patch_embed_size(prev_width: int, width: int, kernel: int, res: int) -> Size:
    """kxk/2 conv grouped by the input width (so width % prev_width == 0), then a 1x1 conv."""
    return _conv(prev_width, width, kernel, prev_width, res) + _conv(width, width, 1, 1, res)


def cpe_size(width: int, kernel: int | None, res: int) -> Size:
    """Fused RepCPE: one depthwise conv; absent when the kernel is None."""
    return Size(0, 0) if kernel is None else _conv(width, width, kernel, width, res)


def block_size(width: int, mixer: str, hidden: int, repmixer_kernel: int | None, ffn_kernel: int, res: int) -> Size:
    """One block: token mixer, ConvFFN (dw conv, fc1, fc2) and its layer scale(s)."""
    n = res * res
    ffn = (_conv(width, width, ffn_kernel, width, res) + _conv(width, hidden, 1, 1, res)
           + _conv(hidden, width, 1, 1, res))
    if mixer == "attention":
        norm = Size(2 * width, 2 * width * n)
        qkv = Size(3 * width * width, 3 * width * width * n)
        sdpa = Size(0, 2 * n * n * width)
        proj = Size(width * width + width, width * width * n)
        return norm + qkv + sdpa + proj + ffn + Size(2 * width, 0)
    assert repmixer_kernel is not None, "repmixer blocks have a kernel (ArchSpec guarantees it)"
    return _conv(width, width, repmixer_kernel, width, res) + ffn + Size(width, 0)


def head_size(width: int, num_classes: int, res: int) -> Size:
    """Final 3x3 depthwise-expanding MobileOne conv with SE, global pooling and the classifier."""
    final = int(width * CLS_RATIO)
    reduced = max(1, int(final / 16 + 0.5))
    se = Size(final * reduced + reduced + reduced * final + final, 2 * final * reduced)
    pool = Size(0, final * res * res)
    return _conv(width, final, 3, width, res) + se + pool + _conv(final, num_classes, 1, 1, 1)


def stage_size(stage: StageSpec, prev_width: int | None, res: int) -> Size:
    """Patch embedding (if any), CPE (if any) and `depth` identical blocks."""
    size = cpe_size(stage.width, stage.cpe_kernel, res)
    if stage.patch_kernel is not None:
        assert prev_width is not None, "only the first stage lacks a patch embedding"
        size = size + patch_embed_size(prev_width, stage.width, stage.patch_kernel, res)
    block = block_size(stage.width, stage.mixer, stage.hidden, stage.repmixer_kernel, stage.ffn_kernel, res)
    return size + block * stage.depth


def network_size(spec: ArchSpec, img_size: int) -> Size:
    """Params and FLOPs of `build_model(spec, inference=True)` on one `img_size`² image."""
    resolutions = stage_resolutions(img_size, len(spec.stages))
    total = stem_size(spec.in_chans, spec.stages[0].width, img_size)
    prev = None
    for stage, res in zip(spec.stages, resolutions, strict=True):
        total = total + stage_size(stage, prev, res)
        prev = stage.width
    return total + head_size(prev, spec.num_classes, resolutions[-1])
