"""Blocks timed inside a network, where the small ones cost more than alone, each by a factor of its own.

Inside a network a block costs a multiple of its entry timed alone (`benchmarks/lut_in_network.py`: one more block
in a stage, timed end-to-end). With ONNX Runtime at 128 px on the reference host (2 threads) that multiple was
0.93-1.04 at 16×16 and 32×32 but 1.0-1.6 at 8×8 and 4×4, and it differed from block to block of one kind and
size: measured twice over 234 blocks, the two logs of the factor correlated at 0.88 against a spread of 0.16. It
stayed with the block in a light network, its own and a heavier one (1.27 / 1.35 / 1.39 times its entry). A
calibration scales sums, so no calibration of entries timed alone can follow a factor that varies per block:
the 62 networks of a 128 px fidelity run stayed at 92 % within ±10 % whatever the fit. (Those figures predate the
fix of equal copy weights in `backends/onnxruntime._Graph`, which made attention blocks at 4×4 23 % dearer
relative to the rest: part of their factor was the table's own. RepMixer blocks did not move.)

So blocks whose input is at most `Protocol.context_max_side` on a side can be timed inside a network instead: a
canonical light one around their stage (`Context`), with `Protocol.context_copies` copies of the block chained
where the stage's blocks go, less the same network with none, per copy. Each chain and each context alone is an
item of a build's sweeps, kept at its best sweep (`measure.best_of_passes`), and a block's entry is the difference
of the two bests. Paired instead (the context timed right before each chain, the best of the paired differences
kept), small blocks came out too cheap: the fastest of several noisy differences is the one where the noise
favoured the chain, and the smaller the block, the larger that noise against its share. In the full 128 px build
so paired (below), blocks under 1 MB of weights cost 0.97 times their time alone (median; a tenth of them under
0.83), and on a second sample of held-out networks those with one deep stage of such blocks at 8×8 came out up to
27 % fast (84 % of the 50 within ±10 %). Timed once per sweep rather than once per block, the 26 contexts of the
default space at 128 px also no longer cost every block's sweep a session of its own.

Measured on the 62 networks of a 128 px ONNX Runtime fidelity run (`benchmarks/lut_blocks_in_context.py`):
- The first version (each context timed apart from its blocks, fastest of 3 calm rounds, whole networks exported
  by torch) took the 234 blocks of those networks from 92 % within ±10 %, 56 % within ±5 %, MAPE 4.68 % and
  Spearman 0.990 to 96 / 84 / 2.82 / 0.9955, and to 98 / 86 / 2.87 / 0.9965 with only the blocks up to 8×8
  replaced.
- Built into the protocol (paired, as above, best of the protocol's sweeps until two agree), on a noisier host and after
  the fix of equal weights (`backends/onnxruntime._Graph`), the 114 blocks up to 8×8 moved the spread of
  raw sum / measured from 6.1 to 5.0 % and Spearman from 0.991 to 0.995, but not the share within ±10 % (94 to
  92 %). With three sweeps per block instead of two (`Protocol.context_passes`, now 3): 98 % within ±10 %, 70 %
  within ±5 %, MAPE 3.84 %, Spearman 0.9955, spread 4.5 %. The two measurements of a block repeated within 6.7 %
  (sd of the log ratio).
- Still paired, the full default space at 128 px (1,182 blocks up to 8×8 in 26 contexts;
  `benchmarks/lut_fidelity.py --full-space --context-max-side 8`) scored 98 / 80 / 3.07 / 0.997 on 50 held-out
  networks, with the host's own repeat at 100 %; the same networks with every block timed alone (re-timed after
  the run) 94 / 70 / 3.87 / 0.996. In context the blocks cost 1.06 times their entry alone (median), most the
  mid-sized ones (1-4 MB of weights: 1.09-1.20), least the smallest (under 1 MB: 0.97-1.07) and the largest (16 MB
  and more: 1.04).
- That build took 1687 s. Timed apart, as now, on a second sample of held-out networks (`--seed 2`): 1257 s and
  90 / 66 / 5.15 / 0.998, the host's own repeat 98 %. Fitted on those networks themselves (affine, the table's
  shape without its calibration), 98 % within ±10 % (spread of raw sum / measured 4.2 %), against 90 % (7.3 %) for
  the paired table and 94 % (7.7 %) for blocks timed alone; on the first sample 98 / 98 / 94 %.
- Without contexts a build takes 440 s, within the goal of 10 minutes; the chains of the default space hold 47 GB
  of weights per sweep, and a session's set-up (graph optimisation, weight pre-packing) is most of the time of
  the larger blocks. So it is off by default (0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from torch import nn

from ..fastvit.model import build_model
from ..fastvit.spec import ArchSpec, StageSpec
from .measure import MS_FIELDS, Timing
from .ops import Op, op_counts

BLOCK_TYPES = ("repmixer_block", "attention_block")


@dataclass(frozen=True)
class Context:
    """A light network around stage `stage`: what a block of that stage and width is timed inside.

    Every stage is one default RepMixer block deep; widths halve stage by stage towards the stem while they stay
    even (each must be a multiple of the one before, for the grouped patch embedding) and double after `stage`,
    as FastViT's do. Built from the stage's position and width alone, the network is the same for every spec
    that brings the block, so a block's entry does not depend on which spec of a space brought it first.
    """

    spec: ArchSpec
    stage: int
    in_shape: tuple[int, ...]
    mid_shape: tuple[int, ...]

    def parts(self) -> tuple[nn.Module, nn.Module]:
        """The network before the stage's blocks (stem, earlier stages, the stage's patch embedding and
        positional encoding) and after them (later stages, final conv, head), inference-time."""
        model = build_model(self.spec, inference=True).eval()
        stage = model.stages[self.stage]
        before = nn.Sequential(model.stem, *model.stages[:self.stage], stage.downsample, stage.pos_emb)
        after = nn.Sequential(*model.stages[self.stage + 1:], model.final_conv, model.head)
        return before, after

    def network(self, blocks: Sequence[nn.Module] = ()) -> nn.Sequential:
        """The whole context with `blocks` run in sequence where the stage's blocks go: one model to time on a
        device this machine cannot drive (`backends/external.py`)."""
        before, after = self.parts()
        return nn.Sequential(before, *blocks, after)

    @property
    def key(self) -> str:
        """A name that is the same on every run: the context is its spec and stage."""
        return f"context-s{self.stage}-{self.spec.arch_id}"


def context_for(spec: ArchSpec, block: Op, img_size: int) -> Context:
    """The light network around the stage of `block` in `spec`, with `spec`'s stage count, input channels and
    classes."""
    stage = block.stage
    widths = [spec.stages[stage].width] * len(spec.stages)
    for i in range(stage - 1, -1, -1):
        widths[i] = widths[i + 1] // 2 if widths[i + 1] % 2 == 0 else widths[i + 1]
    for i in range(stage + 1, len(widths)):
        widths[i] = widths[i - 1] * 2
    stages = tuple(StageSpec(depth=1, width=w) if i else StageSpec(depth=1, width=w, patch_kernel=None)
                   for i, w in enumerate(widths))
    return Context(ArchSpec(stages=stages, in_chans=spec.in_chans, num_classes=spec.num_classes), stage,
                   (block.batch, spec.in_chans, img_size, img_size), block.in_shape)


def block_contexts(specs: Iterable[ArchSpec], img_size: int, batch: int, max_side: int) -> dict[str, Context]:
    """The context of each block op of `specs` whose input is at most `max_side` on a side, by op key."""
    found: dict[str, Context] = {}
    if not max_side:
        return found
    for spec in specs:
        for op, _ in op_counts(spec, img_size, batch):
            if op.op_type in BLOCK_TYPES and max(op.in_h, op.in_w) <= max_side and op.key not in found:
                found[op.key] = context_for(spec, op, img_size)
    return found


@dataclass(frozen=True)
class InContext:
    """One item of a build's sweeps: `op` chained inside `context` (`Protocol.context_copies` times)."""

    context: Context
    op: Op


def block_timing(chained: Timing, alone: Timing, copies: int) -> Timing:
    """One block's share of what `copies` chained blocks added to their context; the spread (IQR) is the chain's
    own, shared the same way. A difference lost in noise counts as zero, never as a negative latency."""
    return replace(chained, **{f: max(0.0, (getattr(chained, f) - getattr(alone, f)) / copies)
                               for f in MS_FIELDS if f != "iqr_ms"}, iqr_ms=chained.iqr_ms / copies)
