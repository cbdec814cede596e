"""Every preset against timm: same parameters and keys, same outputs, exact and idempotent fusion."""

import pytest
import timm
import torch

from fastvit_nas.fastvit import PRESETS, build_model
from fastvit_nas.fastvit.reparameterize import reparameterize
from helpers import randomize_statistics, relative_error


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_matches_timm_and_fuses_exactly(name):
    spec = PRESETS[name]
    reference = randomize_statistics(timm.create_model(f"fastvit_{name}"))
    model = build_model(spec).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    model.load_state_dict(reference.state_dict(), strict=True)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        unfused = model(x)
        fused = reparameterize(model)
        fused_out = fused(x)
        twice = reparameterize(fused)
        twice_out = twice(x)
    assert torch.equal(unfused, expected)
    assert relative_error(fused_out, unfused) < 1e-5
    assert torch.equal(twice_out, fused_out), "a second fusion must change nothing"
    assert fused.state_dict().keys() == twice.state_dict().keys()

    inference = build_model(spec, inference=True)
    inference.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(inference.eval()(x), fused_out)
    assert not any(".bn." in key or "conv_kxk" in key for key in fused.state_dict()), "unfused BN left over"


def test_timm_reparameterize_leaves_ffn_unfused_and_ours_does_not():
    model = build_model(PRESETS["t8"]).eval()
    timm_fused = timm.utils.reparameterize_model(model)
    ours = reparameterize(model)
    assert any(k.endswith("mlp.conv.bn.running_var") for k in timm_fused.state_dict())
    assert not any(k.endswith("running_var") for k in ours.state_dict())
    with pytest.raises(AttributeError):
        timm.utils.reparameterize_model(timm_fused)
