"""Each train-time branch type folds exactly into the single kxk conv, alone and inside a network."""

import pytest
import torch
import torch.nn.functional as F

from fastvit_nas.fastvit import PRESETS, BranchRecipe, build_model
from fastvit_nas.fastvit.branches import RepBranchBlock
from fastvit_nas.fastvit.branches.modules import ConvBNBranch, Seq1x1AvgBranch, Seq1x1KxKBranch
from fastvit_nas.fastvit.reparameterize import reparameterize
from helpers import randomize_statistics, relative_error

BRANCH_CASES = [
    ("acb_hor", lambda i, o, k, s, g: ConvBNBranch(i, o, (1, k), s, g)),
    ("acb_ver", lambda i, o, k, s, g: ConvBNBranch(i, o, (k, 1), s, g)),
    ("dbb_scale3", lambda i, o, k, s, g: ConvBNBranch(i, o, (3, 3), s, g)),
    ("dbb_1x1_kxk", Seq1x1KxKBranch),
    ("dbb_1x1_avg", Seq1x1AvgBranch),
]


@pytest.mark.parametrize(("name", "factory"), BRANCH_CASES)
@pytest.mark.parametrize(("in_chs", "out_chs", "groups"), [(4, 8, 1), (6, 6, 6), (8, 8, 2)])
@pytest.mark.parametrize("stride", [1, 2])
def test_branch_folds_into_one_conv(name, factory, in_chs, out_chs, groups, stride):
    size = 5
    branch = randomize_statistics(factory(in_chs, out_chs, size, stride, groups), seed=hash(name) % 1000)
    x = torch.randn(2, in_chs, 11, 11)
    with torch.no_grad():
        kernel, bias = branch.fuse(size, groups)
        folded = F.conv2d(x, kernel, bias, stride=stride, padding=size // 2, groups=groups)
        assert relative_error(folded, branch(x)) < 1e-5


def _small_spec(recipe: BranchRecipe):
    spec = PRESETS["sa12"].replace(branches=recipe, num_classes=10)
    for i, (depth, width) in enumerate([(1, 16), (1, 32), (2, 64), (1, 64)]):
        spec = spec.with_stage(i, depth=depth, width=width, mlp_ratio=2.0)
    return spec.with_stage(1, repmixer_kernel=5, ffn_kernel=3, patch_kernel=5).with_stage(2, repmixer_kernel=7)


@pytest.mark.parametrize(
    "recipe",
    [BranchRecipe("mobileone", 3), BranchRecipe("acb", 1), BranchRecipe("acb", 2), BranchRecipe("dbb", 1),
     BranchRecipe("dbb", 2)],
)
def test_recipes_fold_to_the_same_inference_network(recipe):
    spec = _small_spec(recipe)
    model = build_model(spec)
    adopted = [m for m in model.modules() if isinstance(m, RepBranchBlock)]
    if recipe.kind != "mobileone":
        assert adopted and all(len(m.extra) >= 2 for m in adopted)
    assert all(m.num_conv_branches == recipe.conv_branches for m in adopted)
    randomize_statistics(model, seed=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = reparameterize(model)
        assert relative_error(fused(x), model(x)) < 1e-5
    inference = build_model(spec, inference=True)
    inference.load_state_dict(fused.state_dict(), strict=True)
    plain = build_model(spec.replace(branches=BranchRecipe()), inference=True)
    assert plain.state_dict().keys() == inference.state_dict().keys(), "recipes must not change the fused net"


def test_extra_branches_train():
    model = build_model(_small_spec(BranchRecipe("dbb", 1))).train()
    out = model(torch.randn(4, 3, 64, 64))
    out.square().mean().backward()
    block = next(m for m in model.modules() if isinstance(m, RepBranchBlock))
    assert block.extra["seq_1x1_avg"].conv1.weight.grad.abs().sum() > 0
