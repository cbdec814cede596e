import json
import subprocess
import sys

import pytest

from fastvit_nas.errors import SpecError
from fastvit_nas.fastvit import PRESETS, ArchSpec, BranchRecipe

T8_ID = "3ca521c2c0b8"
"""Pinned: a change here means every stored LUT row, cache entry and export changes identity."""


def test_round_trip_and_canonical_json():
    for spec in PRESETS.values():
        again = ArchSpec.from_json(spec.to_json())
        assert again == spec and again.arch_id == spec.arch_id
    data = PRESETS["t8"].to_dict()
    data["stages"][0]["mlp_ratio"] = 3  # int spelling of the same network
    assert ArchSpec.from_dict(data).arch_id == PRESETS["t8"].arch_id


def test_arch_id_is_pinned_and_process_independent():
    assert PRESETS["t8"].arch_id == T8_ID
    code = "from fastvit_nas.fastvit import PRESETS; print(PRESETS['t8'].arch_id)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == T8_ID
    assert len({s.arch_id for s in PRESETS.values()}) == len(PRESETS)


def test_readable_form_names_the_structure():
    assert PRESETS["sa12"].readable.startswith("d2.2.6.2_w64.128.256.512_RRRA_m4.4.4.4")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["stages"][1].update(repmixer_kernel=4), "stages[1].repmixer_kernel"),
        (lambda d: d["stages"][2].update(ffn_kernel=6), "stages[2].ffn_kernel"),
        (lambda d: d["stages"][3].update(mixer="attention", repmixer_kernel=None, width=400), "stages[3].width"),
        (lambda d: d["stages"][3].update(mixer="attention"), "stages[3].repmixer_kernel"),
        (lambda d: d["stages"][0].update(depth=0), "stages[0].depth"),
        (lambda d: d["stages"][1].update(width=72), "stages[1].width"),
        (lambda d: d["stages"][1].update(width=-8), "stages[1].width"),
        (lambda d: d["stages"][0].update(patch_kernel=7), "stages[0].patch_kernel"),
        (lambda d: d["stages"][2].update(patch_kernel=None), "stages[2].patch_kernel"),
        (lambda d: d["stages"][2].update(mlp_ratio="4"), "stages[2].mlp_ratio"),
        (lambda d: d["stages"][2].update(colour="red"), "stages[2].colour"),
        (lambda d: d.update(depthz=3), "spec.depthz"),
        (lambda d: d.update(num_classes=0), "num_classes"),
        (lambda d: d.update(branches={"kind": "resnet"}), "branches.kind"),
        (lambda d: d.update(stages=[]), "stages"),
    ],
)
def test_invalid_specs_name_the_field(mutate, field):
    data = json.loads(PRESETS["t8"].to_json())
    mutate(data)
    with pytest.raises(SpecError) as err:
        ArchSpec.from_dict(data)
    assert str(err.value).startswith(field), str(err.value)
    assert "\n" not in str(err.value)


def test_branch_recipe_is_part_of_identity():
    spec = PRESETS["t8"]
    other = spec.replace(branches=BranchRecipe(kind="acb"))
    assert other.arch_id != spec.arch_id
