"""Exports load where users load them: stock timm (without fastvit_nas), timm + fastvit_nas, onnxruntime."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import timm
import torch

from fastvit_nas.cli import main
from fastvit_nas.fastvit import PRESETS, BranchRecipe, build_model
from fastvit_nas.fastvit.export import export, stock_model_args
from helpers import randomize_statistics, relative_error

STOCK_LOADER = """
import sys, timm, torch
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
assert not any(name.startswith("fastvit_nas") for name in sys.modules), "fastvit_nas was imported"
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(x), sys.argv[3])
print(type(model).__name__)
"""


def _small(name: str, **stage_changes):
    spec = PRESETS[name].replace(num_classes=10)
    for i, width in enumerate((32, 64, 128, 256)):
        spec = spec.with_stage(i, depth=1, width=width, **stage_changes)
    return spec


def test_stock_expressible_export_loads_in_plain_timm(tmp_path):
    spec = _small("sa12", mlp_ratio=2.0).replace(branches=BranchRecipe("acb", 2))
    assert stock_model_args(spec)[0] == "fastvit_sa12"
    model = randomize_statistics(build_model(spec))
    result = export(spec, model, tmp_path / "out", img_size=64, onnx=True)
    assert result.stock and set(result.files) == {"config.json", "model.safetensors", "spec.json", "model.onnx"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "fastvit_sa12" and config["pretrained_cfg"]["input_size"] == [3, 64, 64]

    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x)
    run = subprocess.run([sys.executable, "-c", STOCK_LOADER, str(tmp_path / "out"), str(tmp_path / "x.pt"),
                          str(tmp_path / "y.pt")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "FastVit"
    assert relative_error(torch.load(tmp_path / "y.pt"), expected) < 1e-5

    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(onnx_out - expected.numpy()).max() / np.abs(expected.numpy()).max() < 1e-5


def test_non_stock_export_loads_after_import(tmp_path):
    spec = _small("t8", mlp_ratio=3.0).with_stage(1, ffn_kernel=3).with_stage(2, repmixer_kernel=5)
    spec = spec.replace(in_chans=1, branches=BranchRecipe("dbb", 1))
    assert stock_model_args(spec) is None
    model = randomize_statistics(build_model(spec))
    result = export(spec, model, tmp_path / "out", img_size=64, mean=(0.5,), std=(0.25,))
    assert result.architecture == "fastvit_nas" and not result.stock
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    assert tuple(loaded.pretrained_cfg["mean"]) == (0.5,)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) < 1e-5
    assert timm.create_model("fastvit_nas", spec=spec.to_dict()).spec == spec


def test_cli_export_and_show(tmp_path, capsys):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(_small("t8").to_json())
    assert main(["model", "export", str(spec_file), str(tmp_path / "out"), "--img-size", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "fastvit_t8"
    assert main(["model", "show", "t8"]) == 0
    shown = capsys.readouterr().out
    assert PRESETS["t8"].arch_id in shown and "params    3.99 M" in shown


def test_cli_bad_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stages": [{"depth": 2, "width": 48, "ffn_kernel": 4, "patch_kernel": None}]}))
    for args in (["model", "show", str(bad)], ["model", "show", "t99"],
                 ["model", "export", str(bad), str(tmp_path / "o")]):
        run = subprocess.run([sys.executable, "-m", "fastvit_nas.cli", *args], capture_output=True, text=True)
        assert run.returncode == 2
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
        assert "Traceback" not in run.stderr
    assert "stages[0].ffn_kernel" in subprocess.run(
        [sys.executable, "-m", "fastvit_nas.cli", "model", "show", str(bad)], capture_output=True, text=True
    ).stderr
