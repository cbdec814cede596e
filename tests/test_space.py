"""The search space: exact counting, constraint-aware sampling, optuna suggest, and clear errors."""

from __future__ import annotations

import copy
import json
from itertools import product
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from fastvit_nas.cli import main
from fastvit_nas.errors import SpecError
from fastvit_nas.fastvit.model import build_model
from fastvit_nas.fastvit.presets import PRESETS
from fastvit_nas.fastvit.profile import profile
from fastvit_nas.fastvit.spec import ArchSpec, BranchRecipe, StageSpec
from fastvit_nas.space import DEFAULT_SPACE, TINY_SPACE, SearchSpace, SpaceError, encode, load_space, parse_space
from fastvit_nas.space.schema import STAGE_FIELDS

optuna.logging.set_verbosity(optuna.logging.WARNING)

DEFAULT_RAW = yaml.safe_load(DEFAULT_SPACE.read_text())
TINY_RAW = yaml.safe_load(TINY_SPACE.read_text())


def space_from(raw: dict, **constraints) -> SearchSpace:
    raw = copy.deepcopy(raw)
    raw.setdefault("constraints", {}).update(constraints)
    return SearchSpace(parse_space(raw, "test.yaml"), source="test.yaml")


SMALL_RAW = {
    # attention from stage 1, cpe anywhere, width divisibility pruning (48 → 64 impossible), two ties
    "img_size": 32,
    "num_classes": 5,
    "defaults": {"depth": [1], "mlp_ratio": [2], "repmixer_kernel": [3, 5], "ffn_kernel": [3],
                 "cpe_kernel": [None, 3], "patch_kernel": [3, 5]},
    "stages": [{"width": [32, 48]}, {"width": [32, 64, 96], "depth": [1, 2], "mixer": ["repmixer", "attention"]},
               {"width": [64, 96, 128], "mixer": ["attention", "repmixer"], "mlp_ratio": [2, 3]}],
    "tie": ["repmixer_kernel", "patch_kernel"],
    "branches": {"kind": ["mobileone", "acb"]},
    "constraints": {"attention_from_stage": 1, "cpe_on": "any"},
}


def brute_force(space: SearchSpace) -> set[ArchSpec]:
    """Every spec built from the cartesian product of all listed values, kept if valid and `contains`."""
    rules = space.rules
    per_stage = []
    for rule in rules.stages:
        opts = [rule.options.get(f, (None,)) for f in STAGE_FIELDS]
        opts = [tuple({*o, None}) if f in ("repmixer_kernel", "cpe_kernel", "patch_kernel") else o
                for f, o in zip(STAGE_FIELDS, opts, strict=True)]
        stages = []
        for values in product(*opts):
            try:
                stage = StageSpec(**dict(zip(STAGE_FIELDS, values, strict=True)))
                stage.validate("s", rule.index)
            except SpecError:
                continue
            stages.append(stage)
        per_stage.append(stages)
    prefixes: list[tuple[StageSpec, ...]] = [()]
    for stages in per_stage:  # drop prefixes ArchSpec itself rejects (e.g. widths that cannot follow)
        prefixes = [(*p, s) for p in prefixes for s in stages if _valid_prefix((*p, s))]
    found = set()
    for stages in prefixes:
        for kind, conv in product(rules.branch_options["kind"], rules.branch_options["conv_branches"]):
            spec = ArchSpec(stages=stages, branches=BranchRecipe(kind, conv), in_chans=space.config.in_chans,
                            num_classes=space.config.num_classes)
            if space.contains(spec):
                found.add(spec)
    return found


def _valid_prefix(stages: tuple[StageSpec, ...]) -> bool:
    try:
        ArchSpec(stages=stages)
    except SpecError:
        return False
    return True


def ranged(raw: dict, flops: bool = False) -> SearchSpace:
    """`raw` with a params range (and a FLOP cap) cutting through the middle of its networks."""
    space = space_from(raw)
    sizes = [space.size(s) for s in space.enumerate()]
    params = sorted(s.params for s in sizes)
    extra = {"flops": {"max": sorted(s.flops for s in sizes)[len(sizes) * 7 // 10]}} if flops else {}
    return space_from(raw, params={"min": params[len(params) // 5], "max": params[len(params) * 3 // 4]}, **extra)


def ranged_tiny() -> SearchSpace:
    return ranged(TINY_RAW)


# ---- sizes -------------------------------------------------------------------------------------------------
def test_analytic_size_equals_built_model_and_fvcore():
    space = load_space("default")
    specs = [PRESETS["sa12"], PRESETS["t8"].with_stage(3, mixer="attention", repmixer_kernel=None, cpe_kernel=3,
                                                       width=768, mlp_ratio=2.5)]
    specs += [s.replace(num_classes=7, in_chans=1) for s in (space.sample(seed) for seed in range(3))]
    for spec in specs:
        model = build_model(spec, inference=True)
        assert space.size(spec).params == sum(p.numel() for p in model.parameters())
    for spec, img in ((specs[0], 64), (specs[1], 96), (specs[2], 33)):
        measured = profile(spec, img)
        analytic = SearchSpace(parse_space({**DEFAULT_RAW, "img_size": img, "in_chans": spec.in_chans,
                                            "num_classes": spec.num_classes}, "x"), "x").size(spec)
        assert (analytic.params, analytic.flops) == (measured.params, measured.flops)


# ---- counting and enumeration ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: load_space("tiny"),
    lambda: space_from(SMALL_RAW),
    lambda: space_from({**TINY_RAW, "tie": []}, cpe_on="any"),
    ranged_tiny,
    lambda: ranged(SMALL_RAW, flops=True),
], ids=["tiny", "small-ties-cpe-any", "tiny-untied", "tiny-params-range", "small-params-flops-range"])
def test_cardinality_equals_brute_force_and_enumeration(make):
    space = make()
    brute = brute_force(space)
    listed = list(space.enumerate())
    assert len(listed) == len(set(listed)) == len(brute) == space.cardinality()
    assert set(listed) == brute
    assert len(brute) > 0


def test_default_space_is_large_and_holds_every_preset():
    space = load_space("default")
    assert space.cardinality() > 10**12
    for name, spec in PRESETS.items():
        assert space.check(spec) == [], name


def test_default_space_reaches_beyond_the_presets():
    space = load_space("default")
    sa12, t8 = PRESETS["sa12"], PRESETS["t8"]
    beyond = [
        t8.with_stage(0, depth=1, width=32).with_stage(1, depth=1, width=64).with_stage(2, width=128)
        .with_stage(3, width=256),  # shallower and narrower
        PRESETS["ma36"].with_stage(2, depth=24).with_stage(3, depth=8),  # deeper
        sa12.with_stage(2, mixer="attention", repmixer_kernel=None, cpe_kernel=3).with_stage(3, width=768),
        sa12.with_stage(0, repmixer_kernel=7, ffn_kernel=9, mlp_ratio=2.0).with_stage(1, patch_kernel=3),
        sa12.with_stage(3, cpe_kernel=None).replace(branches=BranchRecipe("dbb", 3)),
    ]
    for spec in beyond:
        assert space.check(spec) == [], spec.readable


def test_encode_is_injective_on_an_enumerated_space():
    for space in (load_space("tiny"), space_from(SMALL_RAW)):
        vectors = {encode(s).tobytes() for s in space.enumerate()}
        assert all(np.array_equal(space.encode(s), encode(s)) for s in space.enumerate())
        assert len(vectors) == space.cardinality()


# ---- sampling -----------------------------------------------------------------------------------------------
def test_samples_are_valid_contained_and_reproducible():
    space = load_space("default")
    specs = [space.sample(seed) for seed in range(300)]
    assert all(space.contains(s) for s in specs)
    assert len(set(specs)) == len(specs)
    assert [space.sample(seed) for seed in range(5)] == specs[:5]
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [space.sample(rng_a) for _ in range(20)] == [space.sample(rng_b) for _ in range(20)]
    assert {s.stages[2].mixer for s in specs} == {"repmixer", "attention"}


def test_ranged_samples_stay_inside_the_ranges():
    space = space_from(DEFAULT_RAW, params={"min": 3_000_000, "max": 8_000_000})
    for seed in range(40):
        spec = space.sample(seed)
        assert space.check(spec) == []
        assert 3_000_000 <= space.size(spec).params <= 8_000_000


# ---- optuna -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("space_ref", "sampler", "n_trials"), [
    ("default", optuna.samplers.RandomSampler, 300),
    ("tiny", optuna.samplers.RandomSampler, 100),
    ("ranged", optuna.samplers.RandomSampler, 100),
    ("default", optuna.samplers.TPESampler, 40),
])
def test_suggested_specs_are_contained_and_determined_by_params(space_ref, sampler, n_trials):
    space = ranged_tiny() if space_ref == "ranged" else load_space(space_ref)
    seeds = 6 if sampler is optuna.samplers.RandomSampler else 2
    for seed in range(seeds):
        study = optuna.create_study(sampler=sampler(seed=seed))
        for _ in range(n_trials // seeds):
            trial = study.ask()
            spec = space.suggest(trial)
            assert space.check(spec) == []
            assert space.suggest(optuna.trial.FixedTrial(dict(trial.params))) == spec
            study.tell(trial, float(space.size(spec).params))


def test_suggest_asks_one_parameter_per_real_choice():
    space = load_space("tiny")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    spec = space.suggest(trial)
    real = [d.name for d, _ in space.decisions(spec)]
    assert sorted(trial.params) == sorted(real)
    assert "mlp_ratio" in trial.params  # tied: one parameter for all stages
    assert not any(name.endswith(".depth") and name != "s2.depth" for name in trial.params)  # single choices


# ---- mutate and crossover -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: load_space("default"), ranged_tiny, lambda: space_from(SMALL_RAW)])
def test_mutate_and_crossover_stay_inside(make):
    space = make()
    rng = np.random.default_rng(0)
    a, b = space.sample(rng), space.sample(rng)
    for _ in range(60):
        child = space.mutate(a, rng)
        assert child != a and space.check(child) == []
        mixed = space.crossover(a, b, rng)
        assert space.check(mixed) == []
        a, b = child, mixed


def test_crossover_of_identical_parents_returns_the_parent():
    space = load_space("default")
    parent = PRESETS["sa24"]
    assert space.crossover(parent, parent, 3) == parent


def test_mutate_rejects_a_spec_outside_the_space():
    with pytest.raises(SpaceError, match="not in space"):
        load_space("tiny").mutate(PRESETS["t8"], 0)


# ---- membership -------------------------------------------------------------------------------------------
def test_check_names_each_broken_rule():
    space = load_space("default")
    sa12 = PRESETS["sa12"]
    too_wide = sa12.with_stage(3, width=1024)
    assert "stages[3].width: 1024 is not one of" in space.check(too_wide)[0]
    early_attention = sa12.with_stage(1, mixer="attention", repmixer_kernel=None)
    assert any("stages[1].mixer" in r for r in space.check(early_attention))
    cpe_on_repmixer = sa12.with_stage(0, cpe_kernel=3)
    assert any("stages[0].cpe_kernel: must be null" in r for r in space.check(cpe_on_repmixer))
    assert any("stages:" in r for r in space.check(ArchSpec(stages=sa12.stages[:3])))
    ranged = space_from(DEFAULT_RAW, params={"max": 5_000_000})
    assert any(r.startswith("params: 11542376 is outside") for r in ranged.check(sa12))


# ---- malformed files through the CLI -----------------------------------------------------------------------
BAD_FILES = {
    "unknown-field": ({**TINY_RAW, "stages": [{**TINY_RAW["stages"][0], "widht": [8]}, *TINY_RAW["stages"][1:]]},
                      "stages.0.widht: Extra inputs"),
    "wrong-type": ({**TINY_RAW, "img_size": "big"}, "img_size: Input should be a valid integer"),
    "string-number": ({**TINY_RAW, "defaults": {**TINY_RAW["defaults"], "depth": ["1"]}}, "defaults.depth.0"),
    "empty-choices": ({**TINY_RAW, "stages": [*TINY_RAW["stages"][:2], {"width": []}, TINY_RAW["stages"][3]]},
                      "stages.2.width: List should have at least 1 item"),
    "even-kernel": ({**TINY_RAW, "defaults": {**TINY_RAW["defaults"], "ffn_kernel": [4]}}, "defaults.ffn_kernel.0"),
    "missing": ({"stages": [{"width": [32]}]}, "stages.0.depth: missing"),
    "no-divisible-width": ({**TINY_RAW, "stages": [{"width": [48]}, {"width": [64]}]},
                           "stages.1.width: constraints leave no valid network"),
    "attention-too-early": ({**TINY_RAW, "stages": [{"width": [32], "mixer": ["attention"]}]},
                            "stages.0: constraints leave no width/mixer pair"),
    "attention-width": ({**TINY_RAW, "constraints": {"attention_from_stage": 0},
                         "stages": [{"width": [48], "mixer": ["attention"]}]}, "stages.0: constraints leave"),
    "tie-mismatch": ({**TINY_RAW, "tie": ["depth"]}, "tie.0: depth is tied but stages.0 and stages.2"),
    "params-range": ({**TINY_RAW, "constraints": {"params": {"max": 1000}}}, "constraints.params: [None, 1000]"),
    "range-order": ({**TINY_RAW, "constraints": {"flops": {"min": 5, "max": 1}}}, "constraints.flops"),
    "first-patch": ({**TINY_RAW, "stages": [{"width": [32], "patch_kernel": [3]}]}, "stages.0.patch_kernel"),
    "not-a-mapping": ([1, 2], "expected a mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_space_file_gives_one_clear_line(name, tmp_path, capsys):
    data, expected = BAD_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["space", "show", "--space", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: space file {path}: ")
    assert expected in err


def test_unparsable_yaml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("stages: [\n")
    assert main(["space", "show", "--space", str(path)]) == 2
    assert main(["space", "show", "--space", str(tmp_path / "nope.yaml")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "not valid YAML at line" in lines[0] and "not found" in lines[1]


# ---- CLI ----------------------------------------------------------------------------------------------------
def test_cli_show_sample_check(tmp_path, capsys):
    assert main(["space", "show", "--space", "tiny"]) == 0
    assert "cardinality: 96" in capsys.readouterr().out
    assert main(["space", "sample", "-n", "3", "--seed", "5", "--space", "tiny"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    space = load_space("tiny")
    assert len(rows) == 3
    for row in rows:
        spec = ArchSpec.from_dict(row["spec"])
        assert space.contains(spec) and row["id"] == spec.arch_id and row["params"] == space.size(spec).params
    inside = tmp_path / "in.json"
    inside.write_text(json.dumps(rows[0]["spec"]))
    assert main(["space", "check", str(inside), "--space", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == "inside the space"
    outside = Path(tmp_path / "out.json")
    outside.write_text(PRESETS["t8"].to_json())
    assert main(["space", "check", str(outside), "--space", "tiny"]) == 1
    assert "stages[0].width: 48 is not one of [16, 32]" in capsys.readouterr().out
