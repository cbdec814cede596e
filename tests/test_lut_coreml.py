"""`lut export-ops --format coreml`: ML programs for Apple devices, their import, and the refusals.

Core ML models cannot run on Linux, so the conversion is checked through what the files declare (input shape,
outputs, stored weights); the conversion tests need coremltools (`pip install 'fastvit-nas[coreml]'`), the
import and refusal tests do not.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import pytest

from fastvit_nas.cli import main
from fastvit_nas.latency_lut import LatencyTable, export_ops, op_counts, resolve_space
from fastvit_nas.latency_lut.modules import op_module

IMG = 64


@pytest.fixture(scope="module")
def spec():
    """A tiny-space spec with an attention stage, so both block kinds are converted."""
    return next(s for s in resolve_space("tiny").sample(40, seed=0) if any(st.mixer == "attention" for st in s.stages))


def _weight_bytes(package: Path) -> int:
    return sum(f.stat().st_size for f in (package / "Data").rglob("weight.bin"))


def test_coreml_export_declares_shapes_and_keeps_each_copy_s_weights(tmp_path, spec):
    ct = pytest.importorskip("coremltools")
    from fastvit_nas.latency_lut.backends.coreml import export_coreml

    manifest = export_ops(tmp_path / "e", [spec], IMG, 1, calibration=[spec], op_replicas=2,
                          formats=["onnx", "coreml"])
    data = json.loads(manifest.read_text())
    assert data["formats"] == ["onnx", "coreml"] and data["coreml"]["precision"] == "fp16"
    kinds = {e["op_type"] for e in data["entries"] if e["kind"] == "op"}
    assert {"repmixer_block", "attention_block"} <= kinds
    for entry in data["entries"]:
        assert (tmp_path / "e" / entry["files"]["onnx"]).is_file()
        declared = ct.models.MLModel(str(tmp_path / "e" / entry["files"]["coreml"]), skip_model_load=True).get_spec()
        (model_input,) = declared.description.input
        assert model_input.name == "input"
        assert list(model_input.type.multiArrayType.shape) == entry["input_shape"]
        assert len(declared.description.output) == (2 if entry["kind"] == "op" else 1)
    block = next(op for op, _ in op_counts(spec, IMG, 1) if op.op_type == "attention_block")
    sizes = {}
    for replicas, precision in ((1, "fp16"), (2, "fp16"), (1, "fp32")):
        path = tmp_path / f"{replicas}_{precision}.mlpackage"
        export_coreml(partial(op_module, block), block.in_shape, path, precision, replicas)
        sizes[replicas, precision] = _weight_bytes(path)
    assert 1.8 < sizes[2, "fp16"] / sizes[1, "fp16"] < 2.2, sizes  # two copies, two sets of weights
    assert 1.8 < sizes[1, "fp32"] / sizes[1, "fp16"] < 2.2, sizes  # half-precision weights in fp16


def _two_format_manifest(tmp_path: Path, spec) -> Path:
    """An ONNX export whose manifest also lists Core ML files in fp16, as a two-format export writes it; the
    import reads only the manifest, so this needs no coremltools."""
    path = export_ops(tmp_path / "e", [spec], IMG, 1)
    data = json.loads(path.read_text())
    data["formats"] = ["onnx", "coreml"]
    data["coreml"] = {"precision": "fp16", "deployment_target": "iOS16", "coremltools_version": "9.0"}
    path.write_text(json.dumps(data))
    return path


def test_import_asks_which_format_and_coreml_fp16_makes_a_float16_table(tmp_path, spec, capsys):
    manifest = _two_format_manifest(tmp_path, spec)
    entries = json.loads(manifest.read_text())["entries"]
    results = tmp_path / "r.csv"
    results.write_text("key,latency_ms\n" + "".join(f"{e['key']},{0.1 + i / 100}\n" for i, e in enumerate(entries)))
    args = ["lut", "import", str(results), "--manifest", str(manifest), "--device-name", "iPhone 15",
            "--out", str(tmp_path / "l.parquet")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--format" in err[0] and "onnx, coreml" in err[0]
    assert not (tmp_path / "l.parquet").exists()
    assert main([*args, "--format", "tflite"]) == 2
    assert "not tflite" in capsys.readouterr().err
    assert main([*args, "--format", "coreml"]) == 0
    table = LatencyTable.load(tmp_path / "l.parquet")
    assert table.meta.dtype == "float16" and table.meta.protocol["format"] == "coreml"
    assert main([*args[:-1], str(tmp_path / "onnx.parquet"), "--format", "onnx"]) == 0
    assert LatencyTable.load(tmp_path / "onnx.parquet").meta.dtype == "float32"


def test_export_without_coremltools_or_with_a_bad_format_or_precision_gets_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "coremltools", None)  # as if not installed
    assert main(["lut", "export-ops", "--space", "tiny", "--img-size", str(IMG), "--format", "coreml",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "coremltools" in err[0] and "fastvit-nas[coreml]" in err[0]
    assert not (tmp_path / "e").exists()
    assert main(["lut", "export-ops", "--space", "tiny", "--format", "tflite", "--out", str(tmp_path / "e")]) == 2
    assert "tflite" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "coremltools")
    assert main(["lut", "export-ops", "--space", "tiny", "--format", "onnx", "coreml", "--coreml-precision", "int8",
                 "--out", str(tmp_path / "e")]) == 2
    assert "--coreml-precision" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
