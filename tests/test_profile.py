"""FLOP counting covers the ops FastViT spends its time in, attention matmuls included."""

from fastvit_nas.fastvit import PRESETS
from fastvit_nas.fastvit.profile import profile


def test_counted_operators_include_attention():
    prof = profile(PRESETS["sa12"], img_size=256)
    # Counted: conv, linear (attention qkv/proj and the classifier), SDPA (QKᵀ and AV), the attention stage's
    # BatchNorm, and the global average pool. Elementwise ops (add, mul, GELU, softmax) are not multiply-adds.
    assert set(prof.by_operator) == {"conv", "linear", "scaled_dot_product_attention", "batch_norm",
                                     "adaptive_avg_pool2d"}
    # Stage 4 of sa12 at 256 px: 8x8 tokens, 16 heads of 32, 2 blocks, two matmuls each.
    assert prof.by_operator["scaled_dot_product_attention"] == 2 * (2 * 16 * 64 * 64 * 32)
    assert prof.flops == sum(prof.by_operator.values())


def test_params_and_flops_track_the_reference_table():
    t8 = profile(PRESETS["t8"], img_size=256)
    assert 3.9e6 < t8.params < 4.1e6  # apple/ml-fastvit reports 4.0M (3.99M once fused)
    assert profile(PRESETS["t12"], 256).flops > t8.flops
