"""`RepBranchBlock`: timm's MobileOneBlock plus the recipe's extra train-time branches."""

from __future__ import annotations

import torch
from timm.layers import ConvNormAct
from timm.models.fastvit import MobileOneBlock
from torch import nn

from ..spec import BranchRecipe
from .modules import make_branches


class RepBranchBlock(MobileOneBlock):
    """A MobileOneBlock whose kxk conv is trained with extra ACB/DBB branches in `extra`.

    timm builds MobileOneBlocks deep inside its stem, RepMixer and head, so instead of re-implementing
    those constructors we adopt each built block (`adopt`): its parameters and key names are untouched,
    which keeps timm checkpoints loadable into the default recipe, and the fusion math stays timm's for
    the MobileOne branches and ours for the extras.
    """

    extra: nn.ModuleDict

    @classmethod
    def adopt(cls, block: MobileOneBlock, recipe: BranchRecipe) -> None:
        """Turn a built train-time MobileOneBlock into a RepBranchBlock carrying `recipe`'s branches."""
        dd = {"device": block.conv_kxk[0].conv.weight.device, "dtype": block.conv_kxk[0].conv.weight.dtype}
        for _ in range(recipe.conv_branches - block.num_conv_branches):
            block.conv_kxk.append(
                ConvNormAct(block.in_chs, block.out_chs, kernel_size=block.kernel_size, stride=block.stride,
                            groups=block.groups, apply_act=False, **dd)
            )
        block.num_conv_branches = len(block.conv_kxk)
        block.__class__ = cls
        block.extra = make_branches(recipe.kind, block.in_chs, block.out_chs, block.kernel_size,
                                    block.stride, block.groups).to(**dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return super().forward(x)
        out = sum(branch(x) for branch in self.extra.values())
        if self.identity is not None:
            out = out + self.identity(x)
        if self.conv_scale is not None:
            out = out + self.conv_scale(x)
        for conv in self.conv_kxk:
            out = out + conv(x)
        return self.act(self.se(out))

    def _get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, bias = super()._get_kernel_bias()
        for branch in self.extra.values():
            k, b = branch.fuse(self.kernel_size, self.groups)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        super().reparameterize()
        del self.extra


def apply_recipe(model: nn.Module, recipe: BranchRecipe) -> None:
    """Attach the recipe to every train-time kxk MobileOneBlock (stem, RepMixer mixers, final conv)."""
    if recipe == BranchRecipe():
        return
    for module in list(model.modules()):
        if (
            type(module) is MobileOneBlock
            and module.reparam_conv is None
            and module.kernel_size > 1
            and module.conv_kxk is not None
        ):
            RepBranchBlock.adopt(module, recipe)
