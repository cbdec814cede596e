"""Train-time branch types and their exact fusion into one kxk conv."""

from .block import RepBranchBlock, apply_recipe
from .fusion import compose_1x1_kxk, fuse_conv_bn, identity_kernel, pad_to

__all__ = ["RepBranchBlock", "apply_recipe", "compose_1x1_kxk", "fuse_conv_bn", "identity_kernel", "pad_to"]
