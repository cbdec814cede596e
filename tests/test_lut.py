"""latency_lut: keys, dedupe, incremental builds, the external round trip, refusals, monotonicity, speed.

Most tests use a deterministic `FakeBackend` (latency from the module's parameter count and input size) so
they test the bookkeeping, not the machine's noise; the round trip and the real-measurement tests use
onnxruntime and torch with the quick protocol on 64x64 inputs from the tiny space.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from fastvit_nas.cli import main
from fastvit_nas.errors import FastVitNasError
from fastvit_nas.fastvit.model import FastVitNas, build_model
from fastvit_nas.fastvit.presets import PRESETS
from fastvit_nas.fastvit.spec import ArchSpec
from fastvit_nas.latency_lut import (
    OP_TYPES,
    Backend,
    Calibration,
    LatencyTable,
    LutError,
    Predictor,
    Protocol,
    Timing,
    build_lut,
    export_ops,
    fit_calibration,
    get_backend,
    import_results,
    op_counts,
    ops,
    resolve_space,
    unique_ops,
    validate,
)
from fastvit_nas.latency_lut import build as build_module
from fastvit_nas.latency_lut import speed as speed_module
from fastvit_nas.latency_lut.backends import onnxruntime as ort_backend
from fastvit_nas.latency_lut.backends.onnxruntime import chained, export_onnx, replicated, session, time_session
from fastvit_nas.latency_lut.build import CALIBRATION_LOO_WARN, _interleave, measure_networks, new_meta
from fastvit_nas.latency_lut.design import calibration_specs
from fastvit_nas.latency_lut.in_context import BLOCK_TYPES, block_contexts, block_timing, context_for
from fastvit_nas.latency_lut.measure import MAX_WEIGHT_COPIES, best_of_passes, weight_copies
from fastvit_nas.latency_lut.modules import op_module, weight_copy
from fastvit_nas.latency_lut.ops import probe_spec, stage_ops
from fastvit_nas.latency_lut.speed import BASELINE_READINGS, CALM_HOLD_S, CalmLevel, SpeedNormalised
from fastvit_nas.latency_lut.validate import REPEAT_WARN, ValidationReport, backend_for

IMG = 64


class FakeBackend(Backend):
    """Deterministic 'latency' (params × input pixels) that counts every module it is asked to time.

    No speed reference, so the calls are exactly the ops and networks a build asked for.
    """

    name = "fake"

    def __init__(self, slowdown: float = 1.0, **kwargs) -> None:
        super().__init__(**{"protocol": Protocol(passes=1, network_passes=1, reference_s=0.0, calm_wait_s=0.0),
                            **kwargs})
        self.slowdown = slowdown
        self.calls: list[tuple[int, ...]] = []
        self.copies: list[tuple[torch.nn.Module, int, int]] = []

    def version(self) -> str:
        return "0"

    def time_module(self, module: torch.nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        self.calls.append(tuple(in_shape))
        self.copies.append((module, copies, replicas))
        params = sum(p.numel() for p in module.parameters())
        ms = (1e-6 * params * math.prod(in_shape[1:]) ** 0.5 + 0.01) * self.slowdown
        return Timing(ms, ms, ms, 0.0, 1)


@pytest.fixture(scope="module")
def tiny_specs() -> list[ArchSpec]:
    return resolve_space("tiny").sample(12, seed=0)


def _twins(spec: ArchSpec) -> tuple[ArchSpec, ArchSpec]:
    """A deeper twin (one more block in the last stage) and a wider twin (every stage four times as wide).

    Four times, not two: at 64 px a tiny spec's time is mostly per-op overhead, so doubled widths predicted only a
    few per cent above their base on a busy host and a slow timing of one base op could invert the pair.
    """
    last = len(spec.stages) - 1
    wider = spec.replace(stages=tuple(dataclasses.replace(s, width=4 * s.width) for s in spec.stages))
    return spec.with_stage(last, depth=spec.stages[last].depth + 1), wider


def _recorder(seen: dict, key: str):
    def hook(module, inputs) -> None:
        seen[key] = tuple(inputs[0].shape)

    return hook


# ---- keys --------------------------------------------------------------------------------------------------
def test_keys_are_readable_and_deterministic_across_processes(tiny_specs):
    keys = [[op.key for op in ops(s, IMG)] for s in tiny_specs]
    code = ("import json; from fastvit_nas.latency_lut import ops, resolve_space; "
            f"print(json.dumps([[o.key for o in ops(s, {IMG})] for s in resolve_space('tiny').sample(12, seed=0)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == keys
    t8 = [op.key for op in ops(PRESETS["t8"], 256)]
    assert t8[0] == "stem-in:1x3x256x256-out:48"
    assert "repmixer_block-in:1x48x64x64-k:3-ffn:7-hidden:144" in t8
    assert t8[-1] == "head-in:1x768x8x8-classes:1000"
    assert any(k.startswith("attention_block-in:1x512x8x8-heads:16") for k in (o.key for o in ops(PRESETS["sa12"])))


def test_op_modules_and_shapes_match_the_network(tiny_specs):
    for spec in [*tiny_specs[:4], PRESETS["sa12"]]:
        probe = build_model(probe_spec(spec), inference=True).eval()
        seen: dict[str, tuple[int, ...]] = {}
        for op, _ in op_counts(spec, IMG, 2):
            real = probe.get_submodule(op.module_path)
            mine = op_module(op)
            assert repr(mine) == repr(real), op.key
            assert [(n, p.shape) for n, p in mine.state_dict().items()] == \
                   [(n, p.shape) for n, p in real.state_dict().items()], op.key
            real.register_forward_pre_hook(_recorder(seen, op.key))
        with torch.no_grad():
            probe(torch.randn(2, 3, IMG, IMG))
        assert all(seen[op.key] == op.in_shape for op, _ in op_counts(spec, IMG, 2))


def test_a_weight_copy_computes_alike_from_memory_of_its_own(tiny_specs):
    """What a torch op is timed through to keep its weights out of the cache: the same module and outputs, but no
    tensor shared with the original, and no tensor held outside parameters and buffers, where it would stay shared."""
    every = unique_ops([*tiny_specs[:4], PRESETS["sa12"]], IMG).values()
    assert {op.op_type for op in every} == set(BLOCK_TYPES) | {"stem", "patch_embed", "cpe", "final_conv", "head"}
    for op in every:
        module = op_module(op)
        twin = weight_copy(module)
        assert repr(twin) == repr(module), op.key
        assert not {t.data_ptr() for t in twin.state_dict().values()} & \
            {t.data_ptr() for t in module.state_dict().values()}, op.key
        assert not [name for sub in module.modules() for name, value in vars(sub).items()
                    if isinstance(value, torch.Tensor)], op.key
        x = torch.randn(op.in_shape)
        with torch.inference_mode():
            assert torch.equal(twin(x), module(x)), op.key


# ---- building ----------------------------------------------------------------------------------------------
def test_identical_ops_are_deduplicated(tmp_path):
    spec = PRESETS["t8"]
    all_ops = ops(spec, IMG)
    assert len(all_ops) == 1 + 3 + 10 + 1 + 1  # stem, 3 patch embeds, 2+2+4+2 blocks, final conv, head
    assert len(unique_ops([spec, spec], IMG)) == 1 + 3 + 4 + 1 + 1  # one block op per stage
    backend = FakeBackend()
    build_lut(tmp_path / "l.parquet", backend, specs=[spec, PRESETS["t12"]], img_size=IMG, calibration_n=0)
    assert len(backend.calls) == len(unique_ops([spec, PRESETS["t12"]], IMG))


def test_incremental_build_measures_nothing_twice(tmp_path, tiny_specs):
    path, a, b = tmp_path / "l.parquet", tiny_specs[:6], tiny_specs[6:]
    first = FakeBackend()
    build_lut(path, first, specs=a, img_size=IMG, calibration_n=4)
    assert len(first.calls) == len(unique_ops(a, IMG)) + 4
    second = FakeBackend()
    report = build_lut(path, second, specs=a + b, img_size=IMG, calibration_n=4)
    new_ops = set(unique_ops(a + b, IMG)) - set(unique_ops(a, IMG))
    assert report.measured == len(new_ops) and report.reused == len(unique_ops(a, IMG))
    assert len(second.calls) == len(new_ops) == report.timings == report.planned_timings  # calibration: measured
    third = FakeBackend()
    build_lut(path, third, specs=a + b, img_size=IMG, calibration_n=4)
    assert third.calls == []
    assert len(LatencyTable.load(path)) == len(unique_ops(a + b, IMG))


def test_space_build_covers_held_out_specs(tmp_path):
    path = tmp_path / "l.parquet"
    report = build_lut(path, FakeBackend(), space=resolve_space("tiny"), img_size=IMG, calibration_n=4)
    enumerated = list(resolve_space("tiny").space.enumerate())
    assert report.unique_ops == len(unique_ops(enumerated, IMG))
    Predictor(LatencyTable.load(path)).predict_many(enumerated)


def test_a_space_build_calibrates_on_the_designed_networks(tmp_path):
    space = resolve_space("tiny")
    path = tmp_path / "l.parquet"
    build_lut(path, FakeBackend(), space=space, img_size=IMG, calibration_n=4)
    points = LatencyTable.load(path).meta.calibration["points"]
    assert [p["arch_id"] for p in points] == [s.arch_id for s in calibration_specs(space, 4, IMG)]


# ---- the external round trip -------------------------------------------------------------------------------
def test_export_ops_onnxruntime_stand_in_import_matches_direct_lut(tmp_path, tiny_specs):
    """Export → time the ONNX files with onnxruntime as if on a device → import → predict ≈ a direct ORT LUT.

    Both sides use one thread, the minimum of three sweeps and 128 px inputs, so that the comparison is about
    the round trip rather than about the other jobs on this machine.
    """
    img, specs = 128, tiny_specs[:8]
    calib = specs[:4]
    replicas = get_backend("onnxruntime").protocol.op_replicas
    manifest = export_ops(tmp_path / "export", specs, img, 1, calibration=calib, op_replicas=replicas)
    entries = json.loads(manifest.read_text())["entries"]
    assert {e["key"] for e in entries if e["kind"] == "op"} == set(unique_ops(specs, img))
    assert {e["replicas"] for e in entries if e["kind"] == "op"} == {replicas}
    protocol = Protocol(warmup_calls=2, min_reps=10, max_reps=40, max_s=0.5, estimator="min", passes=3)
    timings = best_of_passes(entries, lambda e: time_session(session(str(tmp_path / "export" / e["file"]), "cpu", 1),
                                                             protocol), protocol.passes)
    pd.DataFrame({"key": [e["key"] for e in entries], "latency_ms": [t.latency_ms for t in timings]}).to_csv(
        tmp_path / "results.csv", index=False)
    imported = tmp_path / "phone.parquet"
    assert main(["lut", "import", str(tmp_path / "results.csv"), "--manifest", str(manifest),
                 "--device-name", "stand-in phone", "--out", str(imported)]) == 0
    direct = tmp_path / "ort.parquet"
    build_lut(direct, get_backend("onnxruntime", threads=1, protocol=protocol), specs=specs, img_size=img,
              calibration_n=0)
    table = LatencyTable.load(imported)
    assert table.meta.device == {"kind": "external", "name": "stand-in phone"}
    assert table.meta.protocol["op_replicas"] == replicas
    assert table.latencies()[entries[0]["key"]] == pytest.approx(timings[0].latency_ms / replicas)
    assert table.meta.calibration["fit"]["points"] == 4
    via_device = Predictor(table).predict_many(specs, calibrated=False)
    here = Predictor(LatencyTable.load(direct)).predict_many(specs, calibrated=False)
    assert np.median(np.abs(via_device - here) / here) < 0.3, (via_device, here)
    assert spearmanr(via_device, here).statistic >= 0.8
    assert Predictor(table).predict_many(specs).min() > 0


def test_export_ops_in_context_round_trip(tmp_path, tiny_specs, capsys):
    """Small blocks go out as their context with `copies` blocks chained inside, each context also alone; the
    import takes a block's share of the difference, and its table never mixes with one of blocks timed alone."""
    specs, copies = tiny_specs[:3], 6
    manifest = export_ops(tmp_path / "e", specs, IMG, 1, calibration=specs[:1], op_replicas=2, context_max_side=4,
                          context_copies=copies)
    entries = {e["key"]: e for e in json.loads(manifest.read_text())["entries"]}
    contexts = block_contexts(specs, IMG, 1, 4)
    inside = [e for e in entries.values() if "context" in e]
    assert inside and {e["key"] for e in inside} == set(contexts)
    assert {e["key"] for e in entries.values() if e["kind"] == "context"} == {c.key for c in contexts.values()}
    block = inside[0]
    chain = onnx.load(tmp_path / "e" / block["file"])
    alone = onnx.load(tmp_path / "e" / entries[block["context"]]["file"])
    assert [d.dim_value for d in chain.graph.input[0].type.tensor_type.shape.dim] == [1, 3, IMG, IMG]
    one = onnx.load_from_string(export_onnx(op_module(unique_ops(specs, IMG)[block["key"]]),
                                            contexts[block["key"]].mid_shape))

    def weighted(model: onnx.ModelProto) -> int:
        return sum(node.op_type in ("Conv", "Gemm", "MatMul") for node in model.graph.node)

    assert weighted(one) and weighted(chain) == weighted(alone) + copies * weighted(one)
    sess = {k: session(str(tmp_path / "e" / e["file"]), "cpu", 1) for k, e in entries.items()}
    rounds = [{k: time_session(s, Protocol.quick()).latency_ms for k, s in sess.items()} for _ in range(5)]
    times = {k: min(r[k] for r in rounds) for k in sess}
    assert times[block["key"]] > times[block["context"]]
    pd.DataFrame({"key": list(times), "latency_ms": list(times.values())}).to_csv(tmp_path / "r.csv", index=False)
    out = tmp_path / "phone.parquet"
    table = import_results(tmp_path / "r.csv", manifest, "stand-in phone", out)
    assert table.latencies()[block["key"]] == pytest.approx(
        (times[block["key"]] - times[block["context"]]) / copies)
    plain = next(e for e in entries.values() if e["kind"] == "op" and "context" not in e)
    assert table.latencies()[plain["key"]] == pytest.approx(times[plain["key"]] / 2)
    assert table.meta.measuring_protocol()["context_max_side"] == 4
    without_context = {k: t for k, t in times.items() if k != block["context"]}
    pd.DataFrame({"key": list(without_context), "latency_ms": list(without_context.values())}).to_csv(
        tmp_path / "r.csv", index=False)
    args = ["lut", "import", str(tmp_path / "r.csv"), "--manifest", str(manifest), "--device-name", "stand-in phone",
            "--out", str(tmp_path / "other.parquet")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and block["context"] in err[0]
    alone_manifest = export_ops(tmp_path / "e0", specs[:1], IMG, 1, op_replicas=2)
    pd.DataFrame({"key": [e["key"] for e in json.loads(alone_manifest.read_text())["entries"]], "latency_ms": 1.0}
                 ).to_csv(tmp_path / "r0.csv", index=False)
    with pytest.raises(LutError, match="context_max_side"):
        import_results(tmp_path / "r0.csv", alone_manifest, "stand-in phone", out)


class _Built(Exception):
    """Raised by a stand-in `build_lut` with the protocol the CLI handed it, so nothing is timed."""


@pytest.mark.parametrize("flags, estimator", [([], "min"), (["--estimator", "median"], "median"),
                                              (["--quick", "--estimator", "median"], "median")])
def test_lut_build_times_by_the_estimator_the_fidelity_runs_scored(tmp_path, monkeypatch, flags, estimator):
    """Every figure of `benchmarks/lut_fidelity.py` was measured with the minimum: a plain `lut build` uses it too."""
    import fastvit_nas.latency_lut as latency_lut

    def stand_in(path, backend, **kwargs):
        raise _Built(backend.protocol)

    monkeypatch.setattr(latency_lut, "build_lut", stand_in)
    with pytest.raises(_Built) as built:
        main(["lut", "build", "--space", "tiny", *flags, "--out", str(tmp_path / "l.parquet")])
    assert built.value.args[0].estimator == estimator


def test_bad_op_replicas_get_one_line(tmp_path, capsys):
    assert main(["lut", "export-ops", "--space", "tiny", "--op-replicas", "0", "--out", str(tmp_path / "e")]) == 2
    assert main(["lut", "build", "--space", "tiny", "--op-replicas", "0", "--out", str(tmp_path / "l.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("op_replicas" in line or "op-replicas" in line for line in err)
    assert not (tmp_path / "l.parquet").exists()


def test_killed_export_resumes_without_rewriting_and_other_settings_are_refused(tmp_path, tiny_specs, monkeypatch,
                                                                               capsys):
    """A file is whole under its final name or not there: a rerun writes only what is missing."""
    from fastvit_nas.latency_lut.backends import external

    specs, written = tiny_specs[:3], []
    real_export = external.export_onnx

    def dies_after_five(module, in_shape):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(in_shape)
        return real_export(module, in_shape)

    monkeypatch.setattr(external, "export_onnx", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        export_ops(tmp_path / "e", specs, IMG, 1, calibration=specs[:1], op_replicas=2)
    assert len(list((tmp_path / "e" / "ops").glob("*.onnx"))) == 5
    assert not (tmp_path / "e" / "manifest.json").exists()
    monkeypatch.setattr(external, "export_onnx", real_export)
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "e" / "ops").glob("*.onnx")}
    manifest = export_ops(tmp_path / "e", specs, IMG, 1, calibration=specs[:1], op_replicas=2)
    entries = json.loads(manifest.read_text())["entries"]
    assert len(entries) == len(unique_ops(specs, IMG)) + 1
    assert all((tmp_path / "e" / e["file"]).is_file() for e in entries)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # kept, not rewritten
    assert not list((tmp_path / "e").rglob(".partial-*"))
    assert main(["lut", "export-ops", "--space", "tiny", "--img-size", str(IMG), "--op-replicas", "8",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "op_replicas=2" in err[0] and "op_replicas=8" in err[0]


def test_import_refuses_wrong_columns_and_units(tmp_path, tiny_specs, capsys):
    manifest = export_ops(tmp_path / "export", tiny_specs[:1], IMG, 1)
    pd.DataFrame({"key": ["x"], "latency_us": [3.0]}).to_csv(tmp_path / "r.csv", index=False)
    args = ["lut", "import", str(tmp_path / "r.csv"), "--manifest", str(manifest), "--device-name", "d",
            "--out", str(tmp_path / "l.parquet")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latency_ms" in err[0] and "latency_us" in err[0]
    pd.DataFrame({"key": ["x"], "latency_ms": ["fast"]}).to_csv(tmp_path / "r.csv", index=False)
    assert main(args) == 2
    assert "positive number of milliseconds" in capsys.readouterr().err


# ---- refusals ----------------------------------------------------------------------------------------------
def test_fingerprint_or_settings_mismatch_is_refused(tmp_path, tiny_specs):
    path = tmp_path / "l.parquet"
    build_lut(path, FakeBackend(), specs=tiny_specs[:2], img_size=IMG, calibration_n=0)
    table = LatencyTable.load(path)
    table.meta.device = {**table.meta.device, "name": "Some Other CPU"}
    table.save(tmp_path / "other.parquet")
    with pytest.raises(LutError, match="Some Other CPU"):
        build_lut(tmp_path / "other.parquet", FakeBackend(), specs=tiny_specs[:2], img_size=IMG, calibration_n=0)
    with pytest.raises(LutError, match="fingerprints differ"):
        LatencyTable.load(path).merge(LatencyTable.load(tmp_path / "other.parquet"))
    with pytest.raises(LutError, match="threads"):
        build_lut(path, FakeBackend(threads=1), specs=tiny_specs[:2], img_size=IMG, calibration_n=0)
    with pytest.raises(LutError, match="img_size=64"):
        Predictor(LatencyTable.load(path)).predict(tiny_specs[0], img_size=256)


def test_missing_keys_name_the_key_and_the_fix(tmp_path, tiny_specs, capsys):
    path = tmp_path / "l.parquet"
    build_lut(path, FakeBackend(), specs=tiny_specs[:1], img_size=IMG, calibration_n=0)
    spec_file = tmp_path / "wide.json"
    spec_file.write_text(_twins(tiny_specs[0])[1].to_json())
    assert main(["lut", "predict", str(path), str(spec_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks" in err[0] and "lut build --spec" in err[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "plain_parquet"])
def test_corrupt_lut_is_refused_with_one_line(tmp_path, tiny_specs, capsys, damage):
    path = tmp_path / "l.parquet"
    build_lut(path, FakeBackend(), specs=tiny_specs[:1], img_size=IMG, calibration_n=0)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a parquet file at all\n" * 10)
    else:
        pd.DataFrame({"key": ["a"]}).to_parquet(path)
    for argv in (["lut", "show", str(path)], ["lut", "predict", str(path), "t8"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_one_clear_line(tmp_path, capsys):
    for backend in ("torch", "onnxruntime"):
        assert main(["lut", "build", "--spec", "t8", "--backend", backend, "--device", "cuda", "--dtype", "fp16",
                     "--out", str(tmp_path / "l.parquet")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cuda" in err[0].lower()


# ---- calibration ------------------------------------------------------------------------------------------
def _networks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-type op sums and calls of `n` made-up networks: 1-24 calls of each type at 0.01-0.5 ms each."""
    rng = np.random.default_rng(seed)
    calls = rng.integers(1, 25, size=(n, len(OP_TYPES))).astype(float)
    return calls * rng.uniform(0.01, 0.5, size=calls.shape), calls


def test_calibration_finds_a_per_call_cost():
    """Networks that pay a fixed cost per attention block beyond their op sums (as ONNX Runtime's do) get the
    per-call model and its cost, and predictions for unseen networks follow; old metadata reads as no cost."""
    att = OP_TYPES.index("attention_block")
    rng = np.random.default_rng(3)

    def measure(sums: np.ndarray, calls: np.ndarray) -> np.ndarray:
        truth = 0.2 + 1.15 * sums.sum(axis=1) + 0.3 * calls[:, att]
        return truth * rng.normal(1.0, 0.005, len(truth))

    sums, calls = _networks(12, seed=0)
    fit = fit_calibration(sums, calls, measure(sums, calls))
    assert fit.model == "per_call"
    assert fit.call_ms[att] == pytest.approx(0.3, rel=0.25)
    held_sums, held_calls = _networks(200, seed=1)
    assert np.abs(fit.apply(held_sums, held_calls) / measure(held_sums, held_calls) - 1).mean() < 0.01
    assert Calibration.from_dict({"fit": fit.to_dict()}) == fit
    older = fit.to_dict()
    del older["call_ms"]
    assert Calibration.from_dict({"fit": older}).call_ms == (0.0,) * len(OP_TYPES)


def test_calibration_keeps_one_scale_when_the_points_are_only_noisy():
    """Twelve points with 2 % noise and no per-call cost: a richer model that wins leave-one-out by luck (a
    quarter of these point sets when any gain counts) must not be kept."""
    for seed in range(20):
        sums, calls = _networks(12, seed)
        measured = (0.2 + 1.15 * sums.sum(axis=1)) * np.random.default_rng(100 + seed).normal(1.0, 0.02, 12)
        fit = fit_calibration(sums, calls, measured)
        assert fit.model == "global" and not any(fit.call_ms), seed


def test_calibration_can_be_narrowed_to_one_model():
    """A replay scores each model alone: asked for the single scale, points that carry a per-call cost get the
    single scale and a worse fit; asked for a model the points cannot support, or for no known model, one clear
    error."""
    att = OP_TYPES.index("attention_block")
    sums, calls = _networks(12, seed=0)
    measured = 0.2 + 1.15 * sums.sum(axis=1) + 0.3 * calls[:, att]
    chosen = fit_calibration(sums, calls, measured)
    alone = fit_calibration(sums, calls, measured, models=("global",))
    assert (chosen.model, alone.model) == ("per_call", "global")
    assert not any(alone.call_ms) and alone.loo_mape > chosen.loo_mape
    with pytest.raises(LutError, match="too few to fit the per_call model"):
        fit_calibration(sums[:6], calls[:6], measured[:6], models=("per_call",))
    with pytest.raises(LutError, match="must be among global, per_group, per_call, got affine"):
        fit_calibration(sums, calls, measured, models=("affine",))


# ---- real measurements and prediction ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_lut(tmp_path_factory, tiny_specs) -> Path:
    """A torch CPU LUT of tiny specs and their deeper/wider twins, calibrated on four networks.

    One thread and few repetitions (the quick protocol takes the minimum of two sweeps): other jobs share
    these two cores, and a two-thread op stalls whenever one of its threads is descheduled.
    """
    specs = tiny_specs + [t for s in tiny_specs for t in _twins(s)]
    path = tmp_path_factory.mktemp("lut") / "torch.parquet"
    build_lut(path, get_backend("torch", threads=1, protocol=Protocol.quick()), specs=specs, img_size=IMG,
              calibration_n=4)
    return path


def test_real_measurement_is_positive_and_finite(real_lut):
    rows = LatencyTable.load(real_lut).rows
    assert (rows["latency_ms"] > 0).all() and np.isfinite(rows["latency_ms"]).all()
    assert (rows["count"] >= 3).all()
    op = ops(PRESETS["t8"], IMG)[1]
    timing = get_backend("torch", threads=2, protocol=Protocol.quick()).time_module(op_module(op), op.in_shape)
    assert 0 < timing.latency_ms < 1e4 and timing.iqr_ms >= 0


@pytest.mark.parametrize("backend_name", ["torch", "onnxruntime"])
def test_network_sweeps_time_network_calls_and_build_each_network_once(monkeypatch, tiny_specs, backend_name):
    """With `network_calls`, each sweep of a network is that many timed calls (the ops' protocol would time a
    multiple of its rounds of 3), and a network is built and exported once for all its sweeps; without it, a
    sweep is timed as an op is."""
    built, exported = collections.Counter(), collections.Counter()
    real_build, real_export = build_module.build_model, ort_backend.export_onnx

    def counting_build(spec, **kwargs):
        built[spec.arch_id] += 1
        return real_build(spec, **kwargs)

    def counting_export(module, *args):
        exported[id(module)] += 1
        return real_export(module, *args)

    monkeypatch.setattr(build_module, "build_model", counting_build)
    monkeypatch.setattr(ort_backend, "export_onnx", counting_export)
    specs = tiny_specs[:2]
    short = dataclasses.replace(Protocol.quick(), network_passes=3, network_calls=7)
    timings = measure_networks(get_backend(backend_name, threads=1, protocol=short), specs, IMG, 1)
    assert [t.count for t in timings] == [7, 7] and all(t.latency_ms > 0 for t in timings)
    assert list(built.values()) == [1, 1]
    assert list(exported.values()) == ([1, 1] if backend_name == "onnxruntime" else [])
    as_ops = dataclasses.replace(short, network_calls=0)
    timings = measure_networks(get_backend(backend_name, threads=1, protocol=as_ops), specs, IMG, 1)
    assert all(t.count % as_ops.round_size == 0 for t in timings)


def test_weight_copies_fill_the_cold_footprint_within_bounds():
    cold = Protocol(cold_weights_mb=64.0)
    assert weight_copies(torch.nn.Linear(1000, 1000, bias=False), cold) == 16  # 4 MB of weights
    assert weight_copies(torch.nn.Linear(1000, 1000, bias=False), Protocol(cold_weights_mb=0.0)) == 1
    assert weight_copies(torch.nn.Conv2d(3, 8, 3), cold) == MAX_WEIGHT_COPIES
    assert weight_copies(torch.nn.GELU(), cold) == 1
    with pytest.raises(ValueError, match="cold_weights_mb"):
        Protocol(cold_weights_mb=-1.0)


def test_ops_are_timed_through_weight_copies_and_replicas_and_networks_whole(tmp_path, tiny_specs):
    """Every op gets the copies its weights need to fill the protocol's footprint and the protocol's replicas per
    call; a network's own weights are already what a forward pass streams through the cache, and it pays a
    runtime's fixed cost per call once, so it is timed as one module."""
    protocol = Protocol(passes=1, reference_s=0.0, calm_wait_s=0.0, cold_weights_mb=0.1, op_replicas=3)
    backend = FakeBackend(protocol=protocol)
    build_lut(tmp_path / "l.parquet", backend, specs=tiny_specs[:3], img_size=IMG, calibration_n=3)
    networks = [(copies, replicas) for module, copies, replicas in backend.copies if isinstance(module, FastVitNas)]
    ops_timed = [(module, copies, replicas) for module, copies, replicas in backend.copies
                 if not isinstance(module, FastVitNas)]
    assert networks == [(1, 1)] * 3 * protocol.network_passes  # the calibration networks get their own sweep count
    assert len(ops_timed) == len(unique_ops(tiny_specs[:3], IMG)) * protocol.passes
    assert all(copies == weight_copies(module, protocol) and replicas == 3 for module, copies, replicas in ops_timed)
    assert len({copies for _, copies, _ in ops_timed}) > 2  # each by its own weights


@pytest.mark.parametrize("replicas", [1, 2])
def test_copies_run_in_turn_each_with_its_own_weights(replicas):
    """No call finds the weights of the call before: the copies take turns, warm-up and timed calls alike. With 2
    replicas a timed call runs two copies, the next call the following two: every module call is one replica."""
    seen: list[int] = []
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    conv.register_forward_pre_hook(lambda module, _: seen.append(module.weight.data_ptr()))
    backend = get_backend("torch", threads=1, protocol=Protocol.quick())
    timing = backend.time_module(conv, (1, 8, 16, 16), copies=3, replicas=replicas)
    assert 0 < timing.latency_ms < 1e3
    assert len(seen) == replicas * (Protocol.quick().warmup_calls + timing.count)
    assert len(set(seen)) == 3 and seen == (seen[:3] * len(seen))[:len(seen)]


def test_calibration_networks_are_timed_among_the_ops(tmp_path, tiny_specs):
    """Spread evenly through the sweep, the calibration networks meet the host in the states the ops met: a slow
    spell at the end of a build can no longer hold all of them."""
    backend = FakeBackend()
    report = build_lut(tmp_path / "l.parquet", backend, specs=tiny_specs[:4], calibration=tiny_specs[4:8],
                       img_size=IMG)
    is_network = [isinstance(module, FastVitNas) for module, *_ in backend.copies]
    assert report.calibration_measured == 4 and sum(is_network) == 4
    np.testing.assert_allclose(np.flatnonzero(is_network) / len(is_network), [0.125, 0.375, 0.625, 0.875], atol=0.05)
    assert LatencyTable.load(tmp_path / "l.parquet").meta.calibration["fit"]["points"] == 4


class OpSumNetworks(FakeBackend):
    """Networks timed at 1.2 times the sum of their ops' fake times, as a steady host gives; with `scatter`, at
    0.6-1.4 times in a fixed scattered order, as if the host's speed had changed between the ops and the networks."""

    def __init__(self, scatter: bool) -> None:
        super().__init__()
        self.scatter = scatter

    def time_module(self, module: torch.nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        if not isinstance(module, FastVitNas):
            return super().time_module(module, in_shape, copies, replicas, protocol)
        ops_ms = sum(super(OpSumNetworks, self).time_module(op_module(op), op.in_shape).latency_ms * count
                     for op, count in op_counts(module.spec, in_shape[-1], in_shape[0]))
        ms = ops_ms * (0.6 + 0.8 * (len(self.calls) * 0.618 % 1) if self.scatter else 1.2)
        return Timing(ms, ms, ms, 0.0, 1)


def test_a_build_whose_calibration_fits_badly_warns(tmp_path, tiny_specs):
    """Networks in step with their op sums fit (no warning); networks scattered against them fit badly, and the
    build says so in its report, while still writing the LUT."""
    reports = {scatter: build_lut(tmp_path / f"{scatter}.parquet", OpSumNetworks(scatter), specs=tiny_specs,
                                  calibration=tiny_specs[:8], img_size=IMG) for scatter in (False, True)}
    assert reports[False].warnings == [] and reports[False].calibration["loo_mape"] < 1.0
    assert reports[True].calibration["loo_mape"] > CALIBRATION_LOO_WARN
    assert len(reports[True].warnings) == 1 and "lut validate" in reports[True].warnings[0]
    assert LatencyTable.load(tmp_path / "True.parquet").meta.calibration["fit"]["points"] == 8


def test_op_replicas_default_by_backend_and_are_recorded():
    assert get_backend("torch", threads=1).protocol.op_replicas == 1
    ort_backend = get_backend("onnxruntime", threads=1)
    assert ort_backend.protocol.op_replicas == 8 and new_meta(ort_backend, IMG, 1).protocol["op_replicas"] == 8
    assert get_backend("onnxruntime", threads=1, protocol=Protocol(op_replicas=2)).protocol.op_replicas == 2
    with pytest.raises(FastVitNasError, match="op_replicas"):
        Protocol(op_replicas=0)


def test_blocks_in_context_are_off_by_default_and_recorded():
    assert new_meta(get_backend("onnxruntime", threads=1), IMG, 1).protocol["context_max_side"] == 0
    chosen = get_backend("onnxruntime", threads=1, protocol=Protocol(context_max_side=8))
    assert new_meta(chosen, IMG, 1).protocol["context_max_side"] == 8
    for bad in ({"context_max_side": -1}, {"context_copies": 0}):
        with pytest.raises(FastVitNasError, match=next(iter(bad))):
            Protocol(**bad)


def test_onnxruntime_replicas_run_side_by_side_in_one_session_each_with_its_own_weights(tmp_path):
    """Three copies in one graph give three outputs, each the module's own, and the optimised session still runs
    three convolutions: nothing that carries weights is merged."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.GELU()).eval()
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    sess = onnxruntime.InferenceSession(replicated(export_onnx(conv, (1, 8, 12, 12)), 3), options,
                                        providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype("float32")
    outputs = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        expected = conv(torch.from_numpy(x)).numpy()
    assert len(outputs) == 3 and all(np.allclose(out, expected, atol=1e-5) for out in outputs)
    convs = [n for n in onnx.load(tmp_path / "optimised.onnx").graph.node if "Conv" in n.op_type]
    assert len(convs) == 3 and len({n.input[1] for n in convs}) == 3


def test_onnx_chain_runs_its_parts_in_sequence_each_copy_with_its_own_weights(tmp_path):
    """A block repeated in the chain runs as that many convolutions, each with its own weights, between the parts
    before and after it, and the network's only output is the last part's."""
    torch.manual_seed(0)
    first = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU()).eval()
    block = torch.nn.Conv2d(8, 8, 1).eval()
    last = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    middle = export_onnx(block, (1, 8, 12, 12))
    sess = onnxruntime.InferenceSession(
        chained([export_onnx(first, (1, 3, 12, 12)), middle, middle, middle, export_onnx(last, (1, 8, 12, 12))]),
        options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype("float32")
    outputs = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        expected = last(block(block(block(first(torch.from_numpy(x)))))).numpy()
    assert len(outputs) == 1 and np.allclose(outputs[0], expected, atol=1e-5)
    convs = [n for n in onnx.load(tmp_path / "optimised.onnx").graph.node if "Conv" in n.op_type]
    assert len(convs) == 4 and len({n.input[1] for n in convs}) == 4


def test_a_blocks_context_is_a_light_network_whatever_spec_brought_it(tiny_specs):
    """The context depends on the block's stage and width only, and its two parts run the real network around
    the stage's blocks: the input shape in, the block's shape between, the logits out."""
    spec = tiny_specs[0]
    stage = len(spec.stages) - 2
    block = next(op for op, _ in op_counts(spec, IMG) if op.module_path == f"stages.{stage}.blocks.0")
    other = spec.with_stage(0, depth=spec.stages[0].depth + 2, mlp_ratio=4.0).with_stage(stage + 1, depth=5)
    context = context_for(spec, block, IMG)
    assert context == context_for(other, block, IMG) and context.mid_shape == block.in_shape
    assert all(s.depth == 1 for s in context.spec.stages) and context.spec.stages[stage].width == block.in_ch
    before, after = context.parts()
    with torch.no_grad():
        mid = before(torch.randn(context.in_shape))
        assert tuple(mid.shape) == block.in_shape
        assert tuple(after(op_module(block)(mid)).shape) == (1, spec.num_classes)


def test_small_blocks_are_timed_inside_a_network_and_the_rest_alone(tmp_path, tiny_specs):
    """With the fake backend's latency (parameters × input size), a block chained `copies` times in its context,
    less the context alone, per copy, is exactly the block's parameters at the network's input size: the entry is
    the block's share of a network's time. Each chain and each context alone is timed in `context_passes` sweeps
    (the contexts once each per sweep, not once per block)."""
    specs = tiny_specs[:4]
    protocol = Protocol(passes=1, network_passes=1, reference_s=0.0, calm_wait_s=0.0, context_max_side=4,
                        context_copies=3, context_passes=2)
    backend = FakeBackend(protocol=protocol)
    path = tmp_path / "l.parquet"
    build_lut(path, backend, specs=specs, img_size=IMG, calibration_n=0)
    contexts = block_contexts(specs, IMG, 1, 4)
    needed = unique_ops(specs, IMG)
    inside = {k: op for k, op in needed.items() if op.op_type in BLOCK_TYPES and op.in_h <= 4}
    assert inside and set(contexts) == set(inside)
    assert any(op.op_type in BLOCK_TYPES and op.in_h > 4 for op in needed.values())
    assert len(backend.calls) == len(needed) - len(inside) + 2 * (len(inside) + len(set(contexts.values())))
    latencies = LatencyTable.load(path).latencies()
    for key, op in inside.items():
        params = sum(p.numel() for p in op_module(op).parameters())
        expected = 1e-6 * params * math.prod(contexts[key].in_shape[1:]) ** 0.5
        assert latencies[key] == pytest.approx(expected, rel=1e-6)
    alone = next(op for op in needed.values() if op.op_type in BLOCK_TYPES and op.in_h > 4)
    assert latencies[alone.key] == pytest.approx(
        1e-6 * sum(p.numel() for p in op_module(alone).parameters()) * math.prod(alone.in_shape[1:]) ** 0.5 + 0.01)
    assert block_timing(Timing(1.0, 1.0, 1.0, 0.3, 5), Timing(2.0, 2.0, 2.0, 0.0, 5), 3).latency_ms == 0.0


class SlowAtFirst(FakeBackend):
    """FakeBackend's latency, except that modules of the `first` parameter counts take 1.5 times it on their
    first timing (both sweeps of an op met a busy host) and those of the `later` ones twice it on every later
    timing (the op is as fast as it was timed, and the re-check met a busy host)."""

    def __init__(self, first: set[int], later: set[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.first, self.later, self.timed = first, later, collections.Counter()

    def time_module(self, module: torch.nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        plain = super().time_module(module, in_shape, copies, replicas, protocol)
        params = sum(p.numel() for p in module.parameters())
        again = self.timed[params] > 0
        self.timed[params] += 1
        factor = 2.0 if again and params in self.later else 1.5 if not again and params in self.first else 1.0
        return Timing(*(factor * ms for ms in (plain.latency_ms, plain.median_ms, plain.min_ms)), 0.0, 1)


def test_entries_above_their_familys_trend_are_timed_again_and_keep_the_faster_timing(tmp_path, tiny_specs,
                                                                                      monkeypatch):
    """The suspects (`trend.above_trend`, here chosen by the test) are each timed `recheck_passes` more times
    after the sweeps: an op alone and a block in context whose first timings were slow come down to their true
    latency, an op whose re-check was slower keeps its first timing, and no other op is timed again."""
    specs = tiny_specs[:4]
    protocol = Protocol(passes=1, network_passes=1, reference_s=0.0, calm_wait_s=0.0, context_max_side=4,
                        context_copies=3, context_passes=1, recheck_passes=2)
    contexts = block_contexts(specs, IMG, 1, 4)
    needed = unique_ops(specs, IMG)
    params = {key: sum(p.numel() for p in op_module(op).parameters()) for key, op in needed.items()}
    alone = [k for k, op in needed.items() if k not in contexts and list(params.values()).count(params[k]) == 1]
    inside = next(k for k in contexts if list(params.values()).count(params[k]) == 1)
    slow_op, steady_op = alone[:2]
    context_params = sum(p.numel() for part in contexts[inside].parts() for p in part.parameters())
    chain_params = context_params + protocol.context_copies * params[inside]
    backend = SlowAtFirst({params[slow_op], chain_params}, {params[steady_op]}, protocol=protocol)
    suspects = {slow_op, steady_op, inside}
    monkeypatch.setattr("fastvit_nas.latency_lut.build.above_trend",
                        lambda rows, tol: suspects if tol == protocol.recheck_tol and len(rows) == len(needed) else {})
    path = tmp_path / "l.parquet"
    report = build_lut(path, backend, specs=specs, img_size=IMG, calibration_n=0)
    first_sweeps = len(needed) + len(set(contexts.values()))  # every op alone or chained, and each context
    assert (report.rechecked, report.lowered) == (3, 2)
    assert len(backend.calls) == first_sweeps + protocol.recheck_passes * len(suspects) == report.planned_timings
    assert report.timings == report.planned_timings
    latencies = LatencyTable.load(path).latencies()
    truth = {k: 1e-6 * params[k] * math.prod(needed[k].in_shape[1:]) ** 0.5 + 0.01 for k in (slow_op, steady_op)}
    assert latencies[slow_op] == pytest.approx(truth[slow_op], rel=1e-9)
    assert latencies[steady_op] == pytest.approx(truth[steady_op], rel=1e-9)
    assert latencies[inside] == pytest.approx(1e-6 * params[inside] * math.prod(contexts[inside].in_shape[1:]) ** 0.5,
                                              rel=1e-6)
    with pytest.raises(ValueError, match="not measured yet"):
        LatencyTable.load(path).retime([(dataclasses.replace(needed[slow_op], key="absent"), Timing(1, 1, 1, 0, 1))])


def test_a_real_chain_costs_more_with_more_blocks_on_both_backends(tiny_specs):
    spec = tiny_specs[0]
    block = next(op for op, _ in op_counts(spec, IMG) if op.module_path.endswith("blocks.0") and op.in_h <= 4)
    context = context_for(spec, block, IMG)
    for name in ("torch", "onnxruntime"):
        timer = get_backend(name, threads=1, protocol=Protocol.quick()).chain_timer(*context.parts(),
                                                                                  context.in_shape, context.mid_shape)
        alone, chain = zip(*((timer(None, 0).latency_ms, timer(block, 12).latency_ms) for _ in range(5)), strict=True)
        assert 0 < min(alone) < min(chain), (name, alone, chain)


def test_onnxruntime_keeps_small_op_exports_for_later_sweeps_within_its_budget(tiny_specs, monkeypatch):
    """An op's export is made once and reused by its later timings, alone or chained in context, when it is at
    most `KEPT_EXPORT_BYTES` and the kept exports stay within `KEPT_EXPORTS_BYTES`; a larger one is exported
    again each time."""
    spec = tiny_specs[0]
    ops = {op.key: op for op, _ in op_counts(spec, IMG)}
    block = next(op for op in ops.values() if op.op_type in BLOCK_TYPES and op.in_h <= 4)
    sizes = {key: len(export_onnx(op_module(op), op.in_shape)) for key, op in ops.items()}
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    exports = []

    def counted(module, in_shape, dtype="float32"):
        exports.append(in_shape)
        return export_onnx(module, in_shape, dtype)

    def exports_by(time_once, times=1):
        exports.clear()
        for _ in range(times):
            assert time_once().latency_ms > 0
        return len(exports)

    monkeypatch.setattr(ort_backend, "export_onnx", counted)
    monkeypatch.setattr(ort_backend, "KEPT_EXPORT_BYTES", (sizes[small] + sizes[large]) // 2)
    backend = get_backend("onnxruntime", threads=1, protocol=Protocol.quick())
    assert [exports_by(lambda key=key: backend.time_op(ops[key])) for key in (small, large, small, large)] == \
        [1, 1, 0, 1]
    monkeypatch.setattr(ort_backend, "KEPT_EXPORT_BYTES", sizes[block.key])
    context = context_for(spec, block, IMG)
    timer = get_backend("onnxruntime", threads=1, protocol=Protocol.quick()).chain_timer(
        *context.parts(), context.in_shape, context.mid_shape)
    assert exports_by(lambda: timer(block, 3), times=3) == 1
    monkeypatch.setattr(ort_backend, "KEPT_EXPORTS_BYTES", 0)
    full = get_backend("onnxruntime", threads=1, protocol=Protocol.quick())
    assert exports_by(lambda: full.time_op(ops[small]), times=2) == 2


def test_cold_weights_default_by_backend_and_onnxruntime_refuses_them_in_one_line(tmp_path, capsys):
    assert get_backend("torch", threads=1).protocol.cold_weights_mb == 64.0
    warm = get_backend("onnxruntime", threads=1)
    assert warm.protocol.cold_weights_mb == 0.0 and new_meta(warm, IMG, 1).protocol["cold_weights_mb"] == 0.0
    with pytest.raises(FastVitNasError, match="warm weights only"):
        warm.time_module(torch.nn.Conv2d(8, 8, 3), (1, 8, 16, 16), copies=2)
    assert main(["lut", "build", "--backend", "onnxruntime", "--cold-weights-mb", "64", "--space", "tiny",
                 "--out", str(tmp_path / "cold.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cold-weights-mb" in err[0] and not (tmp_path / "cold.parquet").exists()


@pytest.mark.parametrize("field, before, other", [("cold_weights_mb", 0.0, 64.0), ("op_replicas", 1, 8),
                                                  ("context_max_side", 0, 8), ("distinct_copies", False, True)])
def test_measuring_regimes_are_never_mixed(tmp_path, tiny_specs, field, before, other):
    """A LUT written before a regime field was recorded means its old value (warm weights, one op per call):
    extending it so works, the other regime is refused."""
    path = tmp_path / "l.parquet"
    old = Protocol(passes=1, reference_s=0.0, calm_wait_s=0.0, **{field: before})
    build_lut(path, FakeBackend(protocol=old), specs=tiny_specs[:1], img_size=IMG, calibration_n=0)
    table = LatencyTable.load(path)
    del table.meta.protocol[field]
    table.save(path)
    build_lut(path, FakeBackend(protocol=old), specs=tiny_specs[1:2], img_size=IMG, calibration_n=0)
    with pytest.raises(LutError, match=re.escape(f"{field}={before!r} but this run has {field}={other!r}")):
        build_lut(path, FakeBackend(protocol=dataclasses.replace(old, **{field: other})), specs=tiny_specs[2:3],
                  img_size=IMG, calibration_n=0)


def test_a_lut_from_before_short_network_sweeps_is_validated_as_it_was_built(tmp_path, tiny_specs):
    """LUTs written before `network_calls` timed their calibration networks in sweeps as long as an op's: their
    held-out networks are timed so too, while a new LUT's get the default's short sweeps."""
    path = tmp_path / "l.parquet"
    build_lut(path, get_backend("torch", threads=1, protocol=Protocol.quick()), specs=tiny_specs[:1], img_size=IMG,
              calibration_n=0)
    table = LatencyTable.load(path)
    assert backend_for(table.meta).protocol.network_calls == Protocol.network_calls == 4
    del table.meta.protocol["network_calls"]
    table.save(path)
    assert backend_for(LatencyTable.load(path).meta).protocol.for_networks().max_reps == Protocol.quick().max_reps


def test_a_network_sweep_warms_up_by_its_own_calls_and_older_luts_by_an_ops(tmp_path, tiny_specs):
    """A network is warm from its first sweep on, so each sweep starts with `network_warmup_calls` calls, not an
    op's three; a LUT written before the field timed its networks after an op's warm-up, and is validated so."""
    calls: list[int] = []
    module = build_model(tiny_specs[0], inference=True)
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    protocol = dataclasses.replace(Protocol.quick(), warmup_calls=3, network_calls=2, network_warmup_calls=1)
    shape = (1, 3, IMG, IMG)
    for warmup, expected in ((1, 1 + 2), (0, 2), (None, 3 + 2)):
        calls.clear()
        backend = get_backend("torch", threads=1,
                              protocol=dataclasses.replace(protocol, network_warmup_calls=warmup))
        assert backend.network_timer(module, shape)().count == 2
        assert len(calls) == expected, (warmup, calls)
    path = tmp_path / "l.parquet"
    build_lut(path, get_backend("torch", threads=1, protocol=protocol), specs=tiny_specs[:1], img_size=IMG,
              calibration_n=0)
    table = LatencyTable.load(path)
    assert backend_for(table.meta).protocol.for_networks().warmup_calls == 1
    del table.meta.protocol["network_warmup_calls"]
    table.save(path)
    assert backend_for(LatencyTable.load(path).meta).protocol.for_networks().warmup_calls == 3
    with pytest.raises(FastVitNasError, match="network_warmup_calls"):
        Protocol(network_warmup_calls=-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reuse regime is set through glibc's mallopt")
def test_measurement_reuses_freed_memory_instead_of_faulting_pages_in_every_call():
    """An activation above glibc's largest mmap threshold (32 MB) is otherwise mapped afresh in every call, and
    its page faults (7 of the 8-9 ms a 256 px stem op took on the reference VM) would be timed as its latency.

    Warmed up by the protocol's three calls: the heap reaches its steady size in the first two (the second call
    still faulted all 16,384 pages in 7 of 8 fresh processes, the third and later none).
    """
    backend = get_backend("torch", threads=1, protocol=Protocol.quick())
    assert backend.protocol.allocator == "reuse"
    assert new_meta(backend, img_size=IMG, batch=1).protocol["allocator"] == "reuse"
    conv, x = torch.nn.Conv2d(3, 64, 3, padding=1), torch.randn(1, 3, 512, 512)  # 64 MB out: 16,384 pages
    with torch.inference_mode():
        for _ in range(Protocol().warmup_calls):
            conv(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            conv(x)
        faults_per_call = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
    assert faults_per_call < 1000, faults_per_call
    with pytest.raises(ValueError, match="allocator"):
        Protocol(allocator="jemalloc")


def test_deeper_or_wider_is_never_predicted_faster(real_lut, tiny_specs, tmp_path):
    """Deeper: guaranteed for any LUT by positive calibration scales and non-negative per-call costs. Wider:
    checked on the measured LUT and on a noise-free one (the fake backend). The wider twins have 4-16 times the
    FLOPs; with two cores fully loaded by other processes they still predicted 1.3-7 times their base."""
    fake = tmp_path / "fake.parquet"
    specs = tiny_specs + [t for s in tiny_specs for t in _twins(s)]
    build_lut(fake, FakeBackend(), specs=specs, img_size=IMG, calibration_n=6)
    for path in (real_lut, fake):
        predictor = Predictor(LatencyTable.load(path))
        base = predictor.predict_many(tiny_specs)
        deeper = predictor.predict_many([_twins(s)[0] for s in tiny_specs])
        wider = predictor.predict_many([_twins(s)[1] for s in tiny_specs])
        assert (deeper > base).all() and (wider > base).all()
        assert all(v > 0 for v in predictor.calibration.scales)
        assert all(v >= 0 for v in predictor.calibration.call_ms)


def test_show_and_predict_cli(real_lut, capsys):
    assert main(["lut", "show", str(real_lut)]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "calibration" in out
    spec = resolve_space("tiny").sample(1, seed=0)[0]
    path = real_lut.parent / "spec.json"
    path.write_text(spec.to_json())
    assert main(["lut", "predict", str(real_lut), str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] > 0


@pytest.mark.parametrize("loo_mape, repeat, warned", [(3.0, 98.0, []), (12.0, 64.0, ["calibration", "repeated"])])
def test_show_repeats_the_stored_warnings_of_build_and_validation(tmp_path, capsys, loo_mape, repeat, warned):
    """A LUT handed on carries its caveats: `lut show` warns, one line each, from the figures its metadata keeps."""
    table = LatencyTable(new_meta(FakeBackend(), img_size=IMG, batch=1))
    table.add([(op, Timing(1.0, 1.0, 1.0, 0.0, 1)) for op in unique_ops([PRESETS["t8"]], IMG).values()])
    figures = {"mape": 3.0, "within_5": 70.0, "within_10": 96.0, "spearman": 0.99, "kendall": 0.9}
    table.meta.calibration = {"points": [], "fit": {"model": "global", "points": 24, "offset_ms": 0.1,
                                                    "scales": {"all": 1.0}, "call_ms": {}, "fit_mape": 2.0,
                                                    "loo_mape": loo_mape}}
    table.meta.validation = {**figures, "n": 50, "validated_at": "2026-12-02T00:00:00Z",
                             "repeatability": {**figures, "within_10": repeat}}
    table.save(tmp_path / "l.parquet")
    assert main(["lut", "show", str(tmp_path / "l.parquet")]) == 0
    captured = capsys.readouterr()
    assert "within ±10 % 96.0 %" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(warned) and all(line.startswith("warning: ") and word in line
                                             for line, word in zip(lines, warned, strict=True))


def test_prediction_is_vectorized_and_fast():
    """≥ 10,000 specs per CPU-second with cold decomposition caches (best of three: warm interpreter).

    CPU time of this process, not wall time, so other jobs on the shared cores do not decide the outcome.
    """
    specs = resolve_space("default").sample(3000, seed=3)
    table = LatencyTable(new_meta(FakeBackend(), img_size=256, batch=1))
    table.add([(op, Timing(1.0, 1.0, 1.0, 0.0, 1)) for op in unique_ops(specs, 256).values()])
    rates = []
    for _ in range(3):
        predictor = Predictor(table)
        stage_ops.cache_clear()
        start = time.process_time()
        predicted = predictor.predict_many(specs)
        rates.append(len(specs) / (time.process_time() - start))
    assert max(rates) >= 10_000, f"{max(rates):.0f} specs/s"
    assert predicted[0] == pytest.approx(sum(n for _, n in op_counts(specs[0], 256)))


def test_validate_cli_reports_figures_plot_and_repeatability(real_lut, capsys):
    """`lut validate --remeasure` on held-out tiny specs: figures in range, PNG written, stored for `lut show`."""
    plot = real_lut.parent / "validation.png"
    assert main(["lut", "validate", "--lut", str(real_lut), "-n", "4", "--seed", "5", "--space", "tiny",
                 "--plot", str(plot), "--remeasure"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 4 and report["mape"] >= 0 and 0 <= report["within_10"] <= 100
    assert -1 <= report["spearman"] <= 1 and set(report["repeatability"]) == {"mape", "within_5", "within_10",
                                                                             "spearman", "kendall"}
    assert plot.read_bytes()[:4] == b"\x89PNG"
    meta = LatencyTable.load(real_lut).meta
    assert meta.validation["n"] == 4 and meta.validation["repeatability"] == report["repeatability"]
    assert main(["lut", "show", str(real_lut)]) == 0
    assert "repeatability" in capsys.readouterr().out


def test_validate_warns_in_one_line_when_the_networks_do_not_repeat_themselves(tmp_path, monkeypatch, capsys):
    """Below `REPEAT_WARN` % of networks repeating within ±10 %, the figures are the host's noise: `lut validate`
    says so on stderr; at or above it, and without a second measurement, it says nothing."""
    def report(repeat: float | None) -> ValidationReport:
        figures = {"mape": 3.0, "within_5": 70.0, "within_10": 90.0, "spearman": 0.99, "kendall": 0.9}
        return ValidationReport(n=50, ops_filled=0, seconds=1.0, plot=None, arch_ids=[], predicted_ms=[],
                                measured_ms=[], repeatability=None if repeat is None else {**figures,
                                                                                          "within_10": repeat},
                                **figures)

    assert report(REPEAT_WARN).warnings == [] and report(None).warnings == []
    monkeypatch.setattr("fastvit_nas.latency_lut.held_out_specs", lambda lut, space, n, seed: [])
    monkeypatch.setattr("fastvit_nas.latency_lut.validate", lambda *args, **kwargs: report(64.0))
    assert main(["lut", "validate", "--lut", str(tmp_path / "l.parquet"), "--space", "tiny", "--remeasure"]) == 0
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: ") and "for 64 % of them" in warning and "\n" not in warning


def _as_steady(table: LatencyTable, truth: LatencyTable) -> pd.DataFrame:
    """Assert `table` has every op of `truth` at the same latency (to 1e-9); its rows beside the steady ones."""
    merged = table.rows.merge(truth.rows, on="key", suffixes=("", "_steady"))
    assert len(merged) == len(truth)
    np.testing.assert_allclose(merged["latency_ms"], merged["latency_ms_steady"], rtol=1e-9)
    return merged


class SteppingBackend(FakeBackend):
    """A host whose speed steps: `slowdown` becomes `after` once `at` modules have been timed."""

    def __init__(self, at: int, after: float) -> None:
        super().__init__(protocol=Protocol(passes=1, reference_s=1e-9, calm_wait_s=0.0))  # read before every item
        self.at, self.after = at, after

    def time_module(self, module: torch.nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        if len(self.calls) >= self.at:
            self.slowdown = self.after
        return super().time_module(module, in_shape, copies, replicas, protocol)


def test_speed_reference_puts_timings_at_any_host_speed_on_one_scale(tmp_path, tiny_specs):
    """The host is 1.4x slower for a later incremental build and 2x slower for validation: every op, calibration
    point and validated network still comes out at the first build's speed, as a steady host gives. (Within one
    build, a slow level that outlasts the wait for calm is left as measured instead: the next tests.)"""
    calibration, held_out = tiny_specs[:4], tiny_specs[8:]
    steady, stepped = tmp_path / "steady.parquet", tmp_path / "stepped.parquet"
    build_lut(steady, FakeBackend(), specs=tiny_specs, calibration=calibration, img_size=IMG)
    build_lut(stepped, SteppingBackend(at=0, after=1.0), specs=tiny_specs[:8], calibration=calibration[:2],
              img_size=IMG)
    build_lut(stepped, SteppingBackend(at=0, after=1.4), specs=tiny_specs, calibration=calibration, img_size=IMG)
    truth, table = LatencyTable.load(steady), LatencyTable.load(stepped)
    assert set(_as_steady(table, truth)["slowdown"].round(6)) == {1.0, 1.4}
    points = table.meta.calibration["points"]
    np.testing.assert_allclose([p["measured_ms"] for p in points],
                               [p["measured_ms"] for p in truth.meta.calibration["points"]], rtol=1e-9)
    assert [round(p["slowdown"], 6) for p in points] == [1.0, 1.0, 1.4, 1.4]  # two networks in each build
    report = validate(stepped, held_out, backend=SteppingBackend(at=0, after=2.0))
    assert report.slowdowns == pytest.approx([2.0] * len(held_out))
    assert report.mape == pytest.approx(validate(steady, held_out, backend=FakeBackend()).mape)
    trace = LatencyTable.load(stepped).meta.speed_reference["trace"]
    assert {round(reading, 6) for _, reading, _ in trace} == {round(applied, 6) for *_, applied in trace} \
        == {1.0, 1.4, 2.0}
    fast, slow = tmp_path / "fast.parquet", tmp_path / "slow.parquet"  # each its own baseline, 1.7x apart
    build_lut(fast, SteppingBackend(at=0, after=1.0), specs=tiny_specs[:6], img_size=IMG, calibration_n=0)
    build_lut(slow, SteppingBackend(at=0, after=1.7), specs=tiny_specs, img_size=IMG, calibration_n=0)
    assert LatencyTable.load(slow).rows["latency_ms"].sum() > 1.6 * truth.rows["latency_ms"].sum()
    joined = LatencyTable.load(fast)
    assert joined.merge(LatencyTable.load(slow)) > 0
    _as_steady(joined, truth)


def test_a_stray_reading_is_ignored_and_a_confirmed_step_applied():
    """Readings in order: baseline, a stray 1.3 not confirmed by the next, 1.03 (within the 5 % step), then 1.4
    confirmed by 1.44: only the last moves the divisor, to their geometric mean."""
    speed = SpeedNormalised(FakeBackend(), new_meta(FakeBackend(), img_size=IMG, batch=1))
    readings = iter([1.0, 1.3, 1.0, 1.03, 1.4, 1.44])
    speed._reading = lambda: next(readings)
    assert [speed.read() for _ in range(4)] == pytest.approx([1.0, 1.0, 1.0, math.sqrt(1.4 * 1.44)])
    assert [applied for *_, applied in speed.record["trace"]] == pytest.approx([1.0, 1.0, 1.0, 1.41986], abs=1e-5)


def test_the_speed_reference_is_timed_with_the_ops_replicas_and_old_references_as_they_were_read(tmp_path,
                                                                                                  tiny_specs):
    """A new LUT reads its reference ops as `op_replicas` copies per call, as its ops are timed, and records it; a
    LUT whose reference predates the field (one copy) goes on reading it with one; two LUTs read differently do
    not merge."""
    backend = FakeBackend(protocol=Protocol(passes=1, reference_s=0.0, calm_wait_s=0.0, op_replicas=4))
    meta = new_meta(backend, img_size=IMG, batch=1)
    speed = SpeedNormalised(backend, meta)
    speed.read()
    reference_ops = len(unique_ops([PRESETS["sa12"]], IMG))
    assert meta.speed_reference["replicas"] == 4 and len(backend.copies) == (BASELINE_READINGS + 1) * reference_ops
    assert {(copies, replicas) for _, copies, replicas in backend.copies} == {(1, 4)}
    old = new_meta(backend, img_size=IMG, batch=1)
    old.speed_reference = {"network": "sa12", "baseline_ms": dict(meta.speed_reference["baseline_ms"]), "trace": []}
    backend.copies.clear()
    SpeedNormalised(backend, old).read()
    assert {replicas for *_, replicas in backend.copies} == {1}
    paths = [tmp_path / "new.parquet", tmp_path / "old.parquet"]
    for path in paths:
        build_lut(path, FakeBackend(protocol=Protocol(passes=1, reference_s=1e-9, calm_wait_s=0.0, op_replicas=4)),
                  specs=tiny_specs[:2], img_size=IMG, calibration_n=0)
    older = LatencyTable.load(paths[1])
    del older.meta.speed_reference["replicas"]
    with pytest.raises(LutError, match="speed reference with 4 and 1 op copies per run"):
        LatencyTable.load(paths[0]).merge(older)


def test_a_kept_onnxruntime_reference_leaves_no_thread_spinning_after_its_reading():
    """The reference's sessions live through the build; after a run their pool threads would spin on for tens of
    milliseconds (0.03-0.06 CPU-s here), a core taken from the next timing. Prepared, they stop as the run ends."""
    op = next(iter(unique_ops([PRESETS["sa12"]], IMG).values()))
    timer = get_backend("onnxruntime", threads=2, protocol=Protocol.quick()).prepare(op_module(op), op.in_shape, 8)
    timer()
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(0.1)
    assert time.perf_counter() - wall >= 0.1 and time.process_time() - cpu < 0.01


def test_items_with_more_sweeps_are_timed_alone_after_the_others_are_done():
    """Networks need more sweeps than ops: the later sweeps visit only the items with sweeps left, and each item is
    final (and kept at its fastest) once its own last sweep is done."""
    visits, done = [], []
    script = {"op": iter([3.0, 2.0]), "net": iter([9.0, 8.0, 7.0, 10.0]), "once": iter([5.0])}

    def time_one(item: str) -> Timing:
        visits.append(item)
        ms = next(script[item])
        return Timing(ms, ms, ms, 0.0, 1)

    best = best_of_passes(["op", "net", "once"], time_one, [2, 4, 1], lambda item, _: done.append((item, len(visits))))
    assert [t.latency_ms for t in best] == [2.0, 7.0, 5.0]
    assert sorted(visits[:3]) == ["net", "once", "op"] and sorted(visits[3:5]) == ["net", "op"]
    assert visits[5:] == ["net", "net"]
    assert [item for item, _ in done] == ["once", "op", "net"] and done[0][1] == 3 and done[-1][1] == 7
    with pytest.raises(FastVitNasError, match="network_passes"):
        Protocol(network_passes=0)
    with pytest.raises(FastVitNasError, match="extra_passes"):
        Protocol(extra_passes=-1)


def test_items_whose_fastest_sweeps_disagree_get_extra_sweeps_until_two_agree():
    """Two sweeps within `agree_tol` end an item; one far above the other earns another sweep, up to `extra`;
    sweeps from a slow spell do not count as agreeing."""
    script = {"steady": [1.0, 1.02], "noisy": [1.3, 1.0, 1.02], "hopeless": [2.0, 3.0, 4.0, 5.0],
              "spell": [1.0, 1.0, 1.04, 9.0]}
    visits: list[str] = []

    def time_one(item: str) -> Timing:
        ms = script[item][visits.count(item)]
        visits.append(item)
        timing = Timing(ms, ms, ms, 0.0, 1)
        return timing.divided_by(1.3) if item == "spell" and visits.count(item) == 2 else timing

    host = ScriptedHost(calm_waits=0)
    best = best_of_passes(list(script), time_one, 2, host=host, extra=2, agree_tol=0.05)
    assert {item: visits.count(item) for item in script} == {"steady": 2, "noisy": 3, "hopeless": 4, "spell": 3}
    assert [t.measured_ms for t in best] == [1.0, 1.0, 2.0, 1.0] and best[3].slowdown == 1.0
    once: list[str] = []
    best_of_passes(["op"], lambda item: once.append(item) or Timing(1.0, 1.0, 1.0, 0.0, 1), 1, extra=2)
    assert once == ["op"]  # one sweep asked for, nothing to compare it with


def test_the_sweep_kept_is_the_one_measured_fastest_not_the_lowest_after_normalising():
    """Sweep 1 timed 10 ms on a calm host; sweep 2 timed 13 ms in a spell read as 1.4x slow, 9.3 ms once divided
    (the reading overshot): the calm sweep needed no correction and is the one kept."""
    sweeps = iter([Timing(10.0, 10.0, 10.0, 0.0, 5), Timing(13.0, 13.0, 13.0, 0.0, 5).divided_by(1.4)])
    [kept] = best_of_passes(["op"], lambda _: next(sweeps), passes=2)
    assert kept.latency_ms == 10.0 and kept.slowdown == 1.0


class ScriptedHost:
    """Timings divided by more than `limit` were taken in a slow spell; the host is calm again for `calm_waits`
    waits."""

    def __init__(self, calm_waits: int) -> None:
        self.calm_waits, self.waits, self.limit = calm_waits, 0, 1.0

    def settled(self, timing: Timing) -> bool:
        return timing.slowdown <= self.limit

    def await_calm(self) -> bool:
        self.waits += 1
        return self.waits <= self.calm_waits

    def as_calm(self, timing: Timing) -> Timing:
        return timing.divided_by(self.limit / timing.slowdown)


def test_items_timed_only_in_slow_spells_are_timed_again_once_the_host_is_calm():
    """a was calm in one sweep; b and c fell in a spell in both (divided by 1.3). The host is calm again for one
    wait only: b is re-timed calm and that timing kept, though it measured faster in the spell (13 ms vs 14 ms:
    such a network had not slowed, and dividing its time would be wrong); c keeps its timing as measured, on the
    calm scale (`as_calm`). Each is reported done once, with its final timing."""
    spell, calm = Timing(13.0, 13.0, 13.0, 0.0, 5).divided_by(1.3), Timing(10.0, 10.0, 10.0, 0.0, 5)
    script = {"a": iter([calm, spell]), "b": iter([spell, spell, Timing(14.0, 14.0, 14.0, 0.0, 5)]),
              "c": iter([spell, spell])}
    done: dict[str, Timing] = {}
    host = ScriptedHost(calm_waits=1)
    kept = best_of_passes(list("abc"), lambda item: next(script[item]), 2, done.__setitem__, host=host)
    assert [t.slowdown for t in kept] == [1.0, 1.0, 1.0] and host.waits == 2
    assert kept[1].latency_ms == 14.0 and kept[2].latency_ms == pytest.approx(13.0)
    assert done == dict(zip("abc", kept, strict=True))


def test_an_item_reported_done_stays_done_when_the_calm_level_drops_later():
    """a is timed at 1.05, calm enough then, and reported done; timing b finds a faster calm level, by which a's
    timing is no longer calm: a is neither timed again nor reported twice (a LUT refuses an op added twice)."""
    host = ScriptedHost(calm_waits=1)
    host.limit = 1.1
    timings = {"a": Timing(10.0, 10.0, 10.0, 0.0, 5).divided_by(1.05), "b": Timing(5.0, 5.0, 5.0, 0.0, 5)}

    def time_one(item: str) -> Timing:
        host.limit = 1.1 if item == "a" else 1.0
        return timings[item]

    done: list[str] = []
    best_of_passes(list("ab"), time_one, 1, lambda item, _: done.append(item), host=host)
    assert done == ["a", "b"] and host.waits == 0


class FakeClock:
    """Stands in for the `time` module of speed.py: sleeping moves the clock on at once."""

    strftime, gmtime = staticmethod(time.strftime), staticmethod(time.gmtime)

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(speed_module, "time", fake)
    return fake


def test_awaiting_calm_sleeps_through_a_spell_and_gives_up_after_the_wait(clock):
    backend = FakeBackend(protocol=Protocol(passes=1, reference_s=0.0, calm_wait_s=6.0))  # reads whenever asked
    speed = SpeedNormalised(backend, new_meta(backend, img_size=IMG, batch=1))
    readings = iter([1.0,  # the baseline
                     1.2, 1.21, 1.19, 1.02, 1.01,  # a spell, confirmed; polled: still slow, then calm twice
                     1.2, 1.2, 1.2, 1.2, 1.2,  # a spell, confirmed; slow at all three polls of the 6 s wait
                     1.25,  # a plain reading within 5 % of the applied 1.2: no change
                     1.0, 0.99])  # calm again, confirmed: no wait
    speed._reading = lambda: next(readings)
    assert speed.read() == 1.0
    assert speed.await_calm() and speed.slowdown == pytest.approx(math.sqrt(1.02 * 1.01))
    assert clock.slept == [2.0, 2.0]
    assert not speed.await_calm() and speed.slowdown == pytest.approx(1.2) and clock.now == pytest.approx(10.0)
    assert speed.read() == pytest.approx(1.2)
    assert speed.await_calm() and speed.slowdown == pytest.approx(math.sqrt(0.99)) and clock.now == pytest.approx(10)
    assert speed.record["waits"] == 2 and speed.record["waited_s"] == pytest.approx(10.0)


def test_calm_timings_are_divided_by_the_calm_level_and_each_session_finds_its_own(clock):
    """A confirmed 7 % step stays inside the calm band: timings keep the calm level (the readings' noise is not put
    into them), while a 1.3x spell divides them. A later session on a host steadily 15 % slower than at the baseline
    takes that as its calm: its timings are divided by 1.15 and it never waits for a calm that will not come."""
    backend = FakeBackend(protocol=Protocol(passes=1, reference_s=1e9, calm_wait_s=60.0))  # read when told
    meta = new_meta(backend, img_size=IMG, batch=1)
    module, shape = torch.nn.Conv2d(3, 8, 3), (1, 3, IMG, IMG)
    raw = backend.time_module(module, shape).latency_ms
    speed = SpeedNormalised(backend, meta)
    readings = iter([1.0, 1.07, 1.07, 1.3, 1.3])
    speed._reading = lambda: next(readings)
    divided = []
    for _ in range(3):
        speed.read()
        divided.append((speed.divisor(), speed.time_module(module, shape).latency_ms))
    assert divided == [(1.0, raw), (1.0, raw), (1.3, pytest.approx(raw / 1.3))]
    later = SpeedNormalised(backend, meta)
    readings = iter([1.15, 1.16, 1.14])
    later._reading = lambda: next(readings)
    assert later.read() == pytest.approx(math.sqrt(1.15 * 1.16)) and later.await_calm() and clock.slept == []
    assert later.time_module(module, shape).latency_ms == pytest.approx(raw / math.sqrt(1.15 * 1.16))


def test_the_calm_level_is_the_lowest_level_held_for_a_minute_not_a_brief_dip():
    """Until a minute has been read, the lowest level applied (a dip to 1.0 lowers it); the first minute's highest
    reading then replaces it even though higher, later minutes only lower it, and a dip of 15 s never does. The
    anchor, which divides calm timings, stays the lowest level applied."""
    calm = CalmLevel()
    readings = [1.35, 1.0, 1.0, 1.0] + [1.5] * 10 + [1.2] * 13 + [1.0] * 3 + [1.2] * 9  # one every 5 s
    values = []
    for i, reading in enumerate(readings):
        calm.observe(5.0 * i, reading)
        calm.applied(reading)
        values.append(calm.value)
    minute = int(CALM_HOLD_S / 5)
    assert values[:minute] == [1.35] + [1.0] * (minute - 1)
    held_12 = 14 + minute  # a minute after the first reading of 1.2
    assert values[minute:held_12] == [1.5] * (held_12 - minute) and values[held_12:] == [1.2] * (len(values) - held_12)
    assert calm.anchor == 1.0


def test_a_session_on_a_host_that_stays_slow_after_a_dip_takes_the_slow_level_as_calm(clock):
    """The host runs 1.5 times slower than at the baseline but for a 5 s dip. Once a minute has been read, timings
    at 1.5 are calm: no wait, and divided by the session's lowest level (the dip's), as every calm timing is."""
    backend = FakeBackend(protocol=Protocol(passes=1, reference_s=5.0, calm_wait_s=60.0))
    speed = SpeedNormalised(backend, new_meta(backend, img_size=IMG, batch=1))
    readings = iter([1.5, 1.5, 1.0, 1.0, 1.5, 1.5] + [1.5] * 12 + [1.1, 1.1])
    speed._reading = lambda: next(readings)
    assert speed.read() == 1.5 and speed.divisor() == 1.5
    clock.now += 5.0
    assert speed.read() == 1.0 and speed.await_calm() and speed.divisor() == 1.0
    clock.now += 5.0
    assert speed.read() == 1.5 and speed.divisor() == 1.5 and speed.calm.value == 1.0
    for _ in range(12):
        clock.now += 5.0
        speed.read()
    assert speed.calm.value == 1.5 and speed.await_calm() and clock.slept == [] and speed.divisor() == 1.0
    clock.now += 5.0
    assert speed.read() == pytest.approx(1.1) and speed.divisor() == 1.0 and speed.calm.value == 1.5


def test_a_spell_timing_stays_unsettled_when_its_level_becomes_the_calm_one(clock):
    """Timed in a spell at 1.5 and divided by it, a timing is not on the calm scale (divided by the anchor, 1.0),
    even after a minute at 1.5 has made that level calm: it is put on the calm scale, not kept as it is."""
    backend = FakeBackend(protocol=Protocol(passes=1, reference_s=5.0, calm_wait_s=60.0))
    speed = SpeedNormalised(backend, new_meta(backend, img_size=IMG, batch=1))
    readings = iter([1.0, 1.5, 1.5] + [1.5] * 12)
    speed._reading = lambda: next(readings)
    module, shape = torch.nn.Conv2d(3, 8, 3), (1, 3, IMG, IMG)
    speed.read()
    clock.now += 5.0
    spell = speed.time_module(module, shape)
    assert spell.slowdown == 1.5 and not speed.settled(spell)
    for _ in range(12):
        clock.now += 5.0
        speed.read()
    assert speed.calm.value == 1.5 and speed.await_calm() and not speed.settled(spell)
    assert speed.as_calm(spell).slowdown == 1.0 and speed.settled(speed.time_module(module, shape))


def test_one_stalled_reading_does_not_set_the_baseline(clock):
    """The host stalls through the reference's first reading (each op 100 times slower): the baseline is each op's
    fastest of three readings a second apart, so the next reading is 1, not 0.01, and timings are not divided."""
    reference_ops = len(unique_ops([PRESETS["sa12"]], IMG))
    backend = SteppingBackend(at=reference_ops, after=1.0)
    backend.slowdown = 100.0
    speed = SpeedNormalised(backend, new_meta(backend, img_size=IMG, batch=1))
    assert speed.read() == pytest.approx(1.0) and speed.divisor() == pytest.approx(1.0)
    assert len(backend.calls) == (BASELINE_READINGS + 1) * reference_ops and clock.slept == [1.0, 1.0]
    module, shape = torch.nn.Conv2d(3, 8, 3), (1, 3, IMG, IMG)
    assert speed.time_module(module, shape).latency_ms == pytest.approx(FakeBackend().time_module(module, shape)
                                                                        .latency_ms)


def test_awaiting_calm_reads_the_host_no_more_often_than_the_reference_interval(clock):
    """The catch-up asks before each item; a calm host read 0.6 s ago need not be read again."""
    backend = FakeBackend(protocol=Protocol(passes=1, reference_s=5.0, calm_wait_s=6.0))
    speed = SpeedNormalised(backend, new_meta(backend, img_size=IMG, batch=1))
    readings = iter([1.0, 1.01, 1.0])
    speed._reading = lambda: next(readings)
    assert all(speed.await_calm() for _ in range(10)) and len(speed.record["trace"]) == 1
    clock.now += 5.0
    assert speed.await_calm() and len(speed.record["trace"]) == 2
    assert next(readings) == 1.0 and clock.slept == []


class SpellBackend(FakeBackend):
    """A host 1.5x slower from its `at`-th timed module after the speed reference's baseline until `clock` reaches
    `until` seconds; a call takes 10 ms, and four sweeps of the calibration networks end before the spell does."""

    def __init__(self, clock: FakeClock, at: int, until: float, calm_wait_s: float = 60.0) -> None:
        super().__init__(protocol=Protocol(passes=1, network_passes=4, reference_s=1e-9,  # read every item
                                           calm_wait_s=calm_wait_s))
        self.clock, self.until = clock, until
        self.at = at + BASELINE_READINGS * len(unique_ops([PRESETS["sa12"]], IMG))

    def time_module(self, module: torch.nn.Module, in_shape: tuple[int, ...], copies: int = 1, replicas: int = 1,
                    protocol: Protocol | None = None) -> Timing:
        self.clock.now += 0.01
        self.slowdown = 1.5 if len(self.calls) >= self.at and self.clock.now < self.until else 1.0
        return super().time_module(module, in_shape, copies, replicas, protocol)


def test_ops_timed_in_a_slow_spell_are_timed_again_once_it_ends(tmp_path, tiny_specs, clock):
    """The host slows in the middle of the third op's reading: the sweep goes on, dividing by the slowdown; after it
    the build waits for the spell to end and re-times those ops, so no op or calibration network is left divided
    (slowdown 1 throughout) and all equal the steady host's. The re-timings are reported beyond the plan."""
    steady, spelled = tmp_path / "steady.parquet", tmp_path / "spelled.parquet"
    at = 3 * (len(unique_ops([PRESETS["sa12"]], IMG)) + 1) + 2
    calm = build_lut(steady, FakeBackend(), specs=tiny_specs[:4], calibration=tiny_specs[:4], img_size=IMG)
    report = build_lut(spelled, SpellBackend(clock, at=at, until=10.0), specs=tiny_specs[:4],
                       calibration=tiny_specs[:4], img_size=IMG)
    assert calm.timings == calm.planned_timings and report.planned_timings < report.timings
    truth, table = LatencyTable.load(steady), LatencyTable.load(spelled)
    assert set(_as_steady(table, truth)["slowdown"]) == {1.0}
    np.testing.assert_allclose([p["measured_ms"] for p in table.meta.calibration["points"]],
                               [p["measured_ms"] for p in truth.meta.calibration["points"]], rtol=1e-9)
    record = table.meta.speed_reference
    assert record["waits"] == 1 and 2 < record["waited_s"] < 10
    assert clock.slept == [1.0] * (BASELINE_READINGS - 1) + [2.0] * (len(clock.slept) - BASELINE_READINGS + 1)
    assert 1.4 < max(applied for *_, applied in record["trace"]) < 1.6


def test_a_spell_that_outlasts_the_wait_leaves_its_ops_as_measured_and_costs_one_wait(tmp_path, tiny_specs, clock):
    """The spell starts with the third op and never ends: the ops before it keep the steady host's time, those in
    it their time as measured (1.5 times), on the calm scale (slowdown 1), not divided by the spell's level; one
    wait of `calm_wait_s`, then no more."""
    steady, spelled = tmp_path / "steady.parquet", tmp_path / "spelled.parquet"
    build_lut(steady, FakeBackend(), specs=tiny_specs[:4], img_size=IMG, calibration_n=0)
    at = 3 * (len(unique_ops([PRESETS["sa12"]], IMG)) + 1)
    build_lut(spelled, SpellBackend(clock, at=at, until=1e9, calm_wait_s=10.0), specs=tiny_specs[:4], img_size=IMG,
              calibration_n=0)
    truth, table = LatencyTable.load(steady), LatencyTable.load(spelled)
    merged = table.rows.merge(truth.rows, on="key", suffixes=("", "_steady"))
    assert len(merged) == len(truth) and set(merged["slowdown"]) == {1.0}
    assert sorted(set((merged["latency_ms"] / merged["latency_ms_steady"]).round(9))) == [1.0, 1.5]
    record = table.meta.speed_reference
    assert record["waits"] == 1 and 10 <= record["waited_s"] < 12


@pytest.mark.parametrize("backend_name", ["torch", "onnxruntime"])
def test_speed_reference_is_read_through_a_real_build_and_shown(tmp_path, tiny_specs, backend_name, capsys):
    path = tmp_path / "l.parquet"
    protocol = dataclasses.replace(Protocol.quick(), reference_s=1e-9, passes=1)  # a reading before every op
    build_lut(path, get_backend(backend_name, threads=1, protocol=protocol), specs=tiny_specs[:2], img_size=IMG,
              calibration_n=0)
    table = LatencyTable.load(path)
    record = table.meta.speed_reference
    assert record["network"] == "sa12" and len(record["baseline_ms"]) == len(unique_ops([PRESETS["sa12"]], IMG))
    assert record["replicas"] == {"torch": 1, "onnxruntime": 8}[backend_name]
    assert len(record["trace"]) >= len(table)  # + any re-timed in the catch-up
    assert all(0.2 < reading < 5 for _, reading, _ in record["trace"])
    assert set(table.rows["slowdown"].round(5)) <= {applied for *_, applied in record["trace"]}
    assert main(["lut", "show", str(path)]) == 0
    assert f"readings of the sa12 reference ({record['replicas']} copies per run)" in capsys.readouterr().out


def test_recalibration_absorbs_device_drift(tmp_path, tiny_specs):
    """The device got 30 % slower since the build: the build-time calibration is off by that much, and re-timing
    the calibration networks alone brings the held-out error back to what the table scores on an unchanged device."""
    calibration, held_out = tiny_specs[:6], tiny_specs[6:]
    steady, drifted = tmp_path / "steady.parquet", tmp_path / "drifted.parquet"
    for path in (steady, drifted):
        build_lut(path, FakeBackend(), specs=tiny_specs, calibration=calibration, img_size=IMG)
    baseline = validate(steady, held_out, backend=FakeBackend())
    slower = FakeBackend(slowdown=1.3)
    report = validate(drifted, held_out, backend=slower, recalibrate_first=True)
    assert report.drift == pytest.approx(1.3)
    assert report.as_built["mape"] > baseline.mape + 15
    assert abs(report.mape - baseline.mape) < 2  # not equal: the scale bounds act differently on the 1.3x points
    assert set(slower.calls) <= {(1, s.in_chans, IMG, IMG) for s in tiny_specs}  # networks re-timed, no op
    meta = LatencyTable.load(drifted).meta
    assert meta.validation["drift"] == pytest.approx(1.3) and "recalibrated_at" in meta.calibration


def test_calibrate_cli_retimes_networks_and_refuses_lut_without_them(real_lut, tmp_path, tiny_specs, capsys):
    assert main(["lut", "calibrate", str(real_lut)]) == 0
    out = capsys.readouterr().out
    drift = float(out.split("take ")[1].split("x")[0])
    assert 0.2 < drift < 5 and "recalibrated" in out
    bare = tmp_path / "bare.parquet"
    build_lut(bare, get_backend("torch", threads=1, protocol=Protocol.quick()), specs=tiny_specs[:1], img_size=IMG,
              calibration_n=0)
    assert main(["lut", "calibrate", str(bare)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calib" in err[0]


@pytest.mark.parametrize(("n_calibration", "n_alongside"), [(12, 50), (5, 3), (4, 0)])
def test_recalibration_interleaves_calibration_with_held_out_networks(n_calibration, n_alongside):
    order = _interleave(n_calibration, n_alongside)
    for kind, n in ((True, n_calibration), (False, n_alongside)):
        assert [i for k, i in order if k is kind] == list(range(n))  # each once, in order
    positions = [pos for pos, (kind, _) in enumerate(order) if kind]
    gaps = np.diff([-1, *positions, len(order)])
    assert gaps.max() <= math.ceil(len(order) / n_calibration) + 1  # spread over the sweep, not bunched


def test_best_of_passes_keeps_each_items_fastest_sweep_and_varies_its_predecessor():
    """An op always timed after the same op would inherit the same machine state in every sweep."""
    items, visits, slow_after = list(range(8)), [], {(3, 4)}  # item 4 is slow right after item 3

    def time_one(item: int) -> Timing:
        ms = 10.0 if visits and (visits[-1], item) in slow_after else 1.0 + item / 100
        visits.append(item)
        return Timing(ms, ms, ms, 0.0, 1)

    done = []
    best = best_of_passes(items, time_one, passes=3, on_done=lambda item, t: done.append(item))
    assert sorted(visits) == sorted(items * 3) and sorted(done) == items
    assert visits[:8] == items  # the first sweep keeps the given order
    assert [t.latency_ms for t in best] == [1.0 + i / 100 for i in items]  # 4 ran after another item once
