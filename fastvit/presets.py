"""The seven published FastViT variants as `ArchSpec`s, mirroring timm's `fastvit_*` registry entries."""

from __future__ import annotations

from .spec import ArchSpec, StageSpec


def _preset(
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    mlp_ratio: float,
    mixers: str,
) -> ArchSpec:
    """Build a preset from the compact (depths, widths, mlp ratio, mixer letters) table row.

    Attention stages carry timm's 7x7 RepCPE; every later stage is entered by a 7x7 patch embedding.
    """
    stages = []
    for i, (depth, width, letter) in enumerate(zip(depths, widths, mixers, strict=True)):
        attention = letter == "A"
        stages.append(
            StageSpec(
                depth=depth,
                width=width,
                mixer="attention" if attention else "repmixer",
                mlp_ratio=float(mlp_ratio),
                repmixer_kernel=None if attention else 3,
                ffn_kernel=7,
                cpe_kernel=7 if attention else None,
                patch_kernel=None if i == 0 else 7,
            )
        )
    return ArchSpec(stages=tuple(stages))


PRESETS: dict[str, ArchSpec] = {
    "t8": _preset((2, 2, 4, 2), (48, 96, 192, 384), 3, "RRRR"),
    "t12": _preset((2, 2, 6, 2), (64, 128, 256, 512), 3, "RRRR"),
    "s12": _preset((2, 2, 6, 2), (64, 128, 256, 512), 4, "RRRR"),
    "sa12": _preset((2, 2, 6, 2), (64, 128, 256, 512), 4, "RRRA"),
    "sa24": _preset((4, 4, 12, 4), (64, 128, 256, 512), 4, "RRRA"),
    "sa36": _preset((6, 6, 18, 6), (64, 128, 256, 512), 4, "RRRA"),
    "ma36": _preset((6, 6, 18, 6), (76, 152, 304, 608), 4, "RRRA"),
}
