"""The text `fastvit-nas space show` prints: dimensions, choices, constraints and cardinality."""

from __future__ import annotations

from .constraints import INNER_FIELDS
from .space import SearchSpace

COUNT_STEPS = 20_000
"""Work allowed for an exact count under param/FLOP ranges before `show` reports it as not counted."""


def _fmt(options: tuple) -> str:
    return " ".join("-" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in options)


def describe(space: SearchSpace) -> str:
    """A human-readable summary of a space."""
    cfg, rules = space.config, space.rules
    lines = [f"space {space.source}: {rules.n_stages} stages, img_size {cfg.img_size}, in_chans {cfg.in_chans}, "
             f"num_classes {cfg.num_classes}"]
    for rule in rules.stages:
        lines.append(f"  stage {rule.index}: width {_fmt(rules.feasible_widths[rule.index])} | "
                     f"mixer {_fmt(rule.options['mixer'])}")
        fields = [f for f in INNER_FIELDS if rules.field_may_apply(rule.index, f)]
        lines.append("    " + " | ".join(f"{f}{' (tied)' if f in rules.ties else ''} {_fmt(rule.options[f])}"
                                         for f in fields))
    lines.append(f"  branches: kind {_fmt(rules.branch_options['kind'])} | "
                 f"conv_branches {_fmt(rules.branch_options['conv_branches'])}")
    c = cfg.constraints
    lines.append(f"  constraints: widths non-decreasing, each a multiple of the previous; attention from stage "
                 f"{c.attention_from_stage} at widths multiple of 32; cpe on {c.cpe_on} stages")
    for name, rng in space.ranges.items():
        lines.append(f"  constraints.{name}: [{rng.min}, {rng.max}] at img_size {cfg.img_size}")
    count = space.cardinality(max_steps=COUNT_STEPS)
    lines.append(f"  cardinality: {count:,}" if count is not None
                 else f"  cardinality: not counted (exact count under the ranges needs > {COUNT_STEPS:,} steps)")
    return "\n".join(lines)
