"""A short human-readable description of one variant (what `fastvit-nas model show` prints)."""

from __future__ import annotations

from .profile import profile
from .spec import ArchSpec


def describe(spec: ArchSpec, img_size: int = 256) -> str:
    prof = profile(spec, img_size)
    lines = [
        f"id        {spec.arch_id}",
        f"readable  {spec.readable}",
        f"params    {prof.params / 1e6:.2f} M (inference-time)",
        f"FLOPs     {prof.flops / 1e9:.3f} G multiply-adds at {img_size}x{img_size}",
        f"branches  {spec.branches.kind} (k={spec.branches.conv_branches}); folded away at inference",
        "stage  depth  width  mixer      mlp  rm_k  ffn_k  cpe_k  patch_k",
    ]
    for i, st in enumerate(spec.stages):
        lines.append(
            f"{i:<5}  {st.depth:<5}  {st.width:<5}  {st.mixer:<9}  {st.mlp_ratio:<3g}  "
            f"{st.repmixer_kernel or '-'!s:<4}  {st.ffn_kernel:<5}  {st.cpe_kernel or '-'!s:<5}  "
            f"{st.patch_kernel or '-'!s}"
        )
    return "\n".join(lines)
