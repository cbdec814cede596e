"""`FastVitNas`: timm's FastViT, assembled per stage from an `ArchSpec`.

timm's `FastVit` shares one RepMixer kernel and one patch kernel across stages and fixes the ConvFFN
kernel at 7; this class assembles the same timm blocks with per-stage values, so a preset has exactly
timm's module tree and state_dict keys while any other spec gets its own knobs.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import ClassifierHead, ConvNormAct, calculate_drop_path_rates
from timm.models.fastvit import (
    FastVit,
    FastVitStage,
    MobileOneBlock,
    RepConditionalPosEnc,
    convolutional_stem,
)
from torch import nn

from .branches import apply_recipe
from .spec import ArchSpec, StageSpec

CLS_RATIO = 2.0
"""Width multiplier of the final conv before the classifier, as in every timm FastViT variant."""


def _ffn_conv(stage: StageSpec, inference_mode: bool) -> nn.Module:
    """The ConvFFN depthwise conv: conv+BN to train, one biased conv once fused."""
    if inference_mode:
        return nn.Conv2d(stage.width, stage.width, stage.ffn_kernel, padding=stage.ffn_kernel // 2,
                         groups=stage.width, bias=True)
    return ConvNormAct(stage.width, stage.width, kernel_size=stage.ffn_kernel, groups=stage.width,
                       apply_act=False)


class FastVitNas(FastVit):
    """A FastViT network described by an `ArchSpec`; inherits timm's forward, heads and helpers."""

    def __init__(
        self,
        spec: ArchSpec | dict,
        inference_mode: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        num_classes: int | None = None,
        in_chans: int | None = None,
        global_pool: str = "avg",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        spec = ArchSpec.coerce(spec)
        overrides = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
        self.spec = spec.replace(**overrides) if overrides else spec
        spec = self.spec
        self.in_chans = spec.in_chans
        self.num_classes = spec.num_classes
        self.fork_feat = False
        self.global_pool = global_pool
        self.feature_info = []

        self.stem = convolutional_stem(spec.in_chans, spec.stages[0].width, nn.GELU, inference_mode)
        rates = calculate_drop_path_rates(drop_path_rate, [s.depth for s in spec.stages], stagewise=True)
        stages, prev_dim, reduction = [], spec.stages[0].width, 4
        for i, st in enumerate(spec.stages):
            stage = FastVitStage(
                dim=prev_dim,
                dim_out=st.width,
                depth=st.depth,
                token_mixer_type=st.mixer,
                downsample=st.patch_kernel is not None,
                down_patch_size=st.patch_kernel or 7,
                pos_emb_layer=partial(RepConditionalPosEnc, spatial_shape=(st.cpe_kernel,) * 2)
                if st.cpe_kernel
                else None,
                kernel_size=st.repmixer_kernel or 3,
                mlp_ratio=st.mlp_ratio,
                drop_path_rate=rates[i],
                inference_mode=inference_mode,
            )
            for block in stage.blocks:
                if inference_mode or st.ffn_kernel != 7:
                    block.mlp.conv = _ffn_conv(st, inference_mode)
            stages.append(stage)
            reduction *= 2 if st.patch_kernel is not None else 1
            prev_dim = st.width
            self.feature_info.append(dict(num_chs=prev_dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_stages = len(self.stages)

        self.num_features = final = int(prev_dim * CLS_RATIO)
        self.final_conv = MobileOneBlock(
            in_chs=prev_dim, out_chs=final, kernel_size=3, stride=1, group_size=1,
            inference_mode=inference_mode, use_se=True, act_layer=nn.GELU, num_conv_branches=1,
        )
        self.head = ClassifierHead(final, spec.num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.head_hidden_size = self.head.num_features
        self.apply(self._init_weights)
        if not inference_mode:
            apply_recipe(self, spec.branches)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)


def build_model(spec: ArchSpec, inference: bool = False, **kwargs) -> FastVitNas:
    """The train-time (multi-branch) network, or with `inference=True` the single-branch one."""
    return FastVitNas(spec, inference_mode=inference, **kwargs)
