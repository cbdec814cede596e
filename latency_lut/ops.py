"""Decomposition of an inference-time FastViT into LUT ops, each with a readable, deterministic key.

An op is the unit that is measured alone and summed: the stem, each patch embedding, each conditional
positional encoding, each block (a RepMixer block with its ConvFFN, or an attention block with its ConvFFN),
the final conv and the classifier head. Its key spells out everything its latency depends on (input shape,
widths, kernels, stride, hidden width), so identical ops of different networks share one key and are
measured once. Blocks of a stage are identical, so a stage contributes its block key `depth` times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from ..fastvit.model import CLS_RATIO
from ..fastvit.spec import ATTENTION_HEAD_DIM, ArchSpec, StageSpec

OP_TYPES = ("stem", "patch_embed", "cpe", "repmixer_block", "attention_block", "final_conv", "head")
"""Every op type, in network order; prediction and calibration index per-type sums by this tuple."""


@dataclass(frozen=True)
class Op:
    """One measurable op: its key, structured columns and where it lives in the network.

    `module_path` names the module in the *probe* network of the spec (every stage at depth 1, see
    `probe_spec`): where the op sits, so tests can check `modules.op_module` against the real network.
    """

    key: str
    op_type: str
    batch: int
    in_ch: int
    in_h: int
    in_w: int
    out_ch: int
    kernel: int = 0
    stride: int = 1
    ffn_kernel: int = 0
    hidden: int = 0
    heads: int = 0
    num_classes: int = 0
    module_path: str = dataclasses.field(default="", compare=False)

    @property
    def in_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_ch, self.in_h, self.in_w)

    @property
    def stage(self) -> int:
        """The stage a patch embedding, positional encoding or block sits in, from its module path."""
        return int(self.module_path.split(".")[1])

    def columns(self) -> dict[str, int | str]:
        """The structured LUT columns (everything but the module path)."""
        out = dataclasses.asdict(self)
        del out["module_path"]
        return out


Signature = tuple[str, int, int, int, int, int, int, int, int, int, int, int]
"""An op as a plain tuple in `SIGNATURE_FIELDS` order: cheap to build and hash, for fast prediction."""

SIGNATURE_FIELDS = ("op_type", "batch", "in_ch", "in_h", "in_w", "out_ch", "kernel", "stride", "ffn_kernel",
                    "hidden", "heads", "num_classes")


def _down(size: int) -> int:
    """Output size of a stride-2 conv padded by k // 2 (odd k): what the stem convs and patch embeds do."""
    return (size - 1) // 2 + 1


def stage_input_size(img_size: int) -> int:
    """The stem has two stride-2 convs."""
    return _down(_down(img_size))


def stem_signature(in_chans: int, width: int, img_size: int, batch: int) -> Signature:
    return ("stem", batch, in_chans, img_size, img_size, width, 3, 4, 0, 0, 0, 0)


def stage_signatures(stage: StageSpec, in_ch: int, size: int, batch: int) -> tuple[list[Signature], Signature, int]:
    """One stage: (signatures that occur once, the block signature repeated `depth` times, output size)."""
    once = []
    if stage.patch_kernel is not None:
        once.append(("patch_embed", batch, in_ch, size, size, stage.width, stage.patch_kernel, 2, 0, 0, 0, 0))
        size = _down(size)
    w = stage.width
    if stage.cpe_kernel is not None:
        once.append(("cpe", batch, w, size, size, w, stage.cpe_kernel, 1, 0, 0, 0, 0))
    if stage.mixer == "attention":
        block = ("attention_block", batch, w, size, size, w, 0, 1, stage.ffn_kernel, stage.hidden,
                 w // ATTENTION_HEAD_DIM, 0)
    else:
        block = ("repmixer_block", batch, w, size, size, w, stage.repmixer_kernel, 1, stage.ffn_kernel, stage.hidden,
                 0, 0)
    return once, block, size


def tail_signatures(width: int, size: int, num_classes: int, batch: int) -> tuple[Signature, Signature]:
    final = int(width * CLS_RATIO)
    return (("final_conv", batch, width, size, size, final, 3, 1, 0, 0, 0, 0),
            ("head", batch, final, size, size, num_classes, 0, 1, 0, 0, 0, num_classes))


def op_key(sig: Signature) -> str:
    """The readable key of a signature, e.g. `repmixer_block-in:1x64x64x64-k:3-ffn:7-hidden:192`."""
    kind, batch, in_ch, h, w, out, k, stride, ffn, hidden, heads, classes = sig
    shape = f"in:{batch}x{in_ch}x{h}x{w}"
    tail = {
        "stem": f"out:{out}",
        "patch_embed": f"out:{out}-k:{k}-s:{stride}",
        "cpe": f"k:{k}",
        "repmixer_block": f"k:{k}-ffn:{ffn}-hidden:{hidden}",
        "attention_block": f"heads:{heads}-ffn:{ffn}-hidden:{hidden}",
        "final_conv": f"out:{out}",
        "head": f"classes:{classes}",
    }[kind]
    return f"{kind}-{shape}-{tail}"


def _op(sig: Signature, module_path: str) -> Op:
    return Op(op_key(sig), *sig, module_path=module_path)


@lru_cache(maxsize=1 << 16)
def stage_ops(stage: StageSpec, index: int, in_ch: int, size: int, batch: int) -> tuple[tuple[Op, ...], Op, int]:
    """Ops of one stage: (ops that occur once, the block op repeated `depth` times, output size)."""
    once, block, size = stage_signatures(stage, in_ch, size, batch)
    paths = {"patch_embed": "downsample", "cpe": "pos_emb"}
    return (tuple(_op(sig, f"stages.{index}.{paths[sig[0]]}") for sig in once),
            _op(block, f"stages.{index}.blocks.0"), size)


def op_counts(spec: ArchSpec, img_size: int = 256, batch: int = 1) -> list[tuple[Op, int]]:
    """The network as (op, how many times it runs), in network order; one entry per distinct position."""
    out = [(_op(stem_signature(spec.in_chans, spec.stages[0].width, img_size, batch), "stem"), 1)]
    in_ch, size = spec.stages[0].width, stage_input_size(img_size)
    for i, stage in enumerate(spec.stages):
        once, block, size = stage_ops(stage, i, in_ch, size, batch)
        out.extend((op, 1) for op in once)
        out.append((block, stage.depth))
        in_ch = stage.width
    final_conv, head = tail_signatures(in_ch, size, spec.num_classes, batch)
    out += [(_op(final_conv, "final_conv"), 1), (_op(head, "head"), 1)]
    return out


def ops(spec: ArchSpec, img_size: int = 256, batch: int = 1) -> list[Op]:
    """Every op the inference-time network runs, in order (a stage's block op appears `depth` times)."""
    return [op for op, count in op_counts(spec, img_size, batch) for _ in range(count)]


def unique_ops(specs: Iterable[ArchSpec], img_size: int = 256, batch: int = 1) -> dict[str, Op]:
    """Distinct ops of many specs, by key, in first-seen order."""
    found: dict[str, Op] = {}
    for spec in specs:
        for op, _ in op_counts(spec, img_size, batch):
            found.setdefault(op.key, op)
    return found


def probe_spec(spec: ArchSpec) -> ArchSpec:
    """The spec with every stage at depth 1: it holds one copy of each op and builds fast."""
    return spec.replace(stages=tuple(dataclasses.replace(s, depth=1) for s in spec.stages))
