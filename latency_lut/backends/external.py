"""The external backend: for devices this machine cannot drive (phones, NPUs, other servers).

`export_ops` writes every unique op (and a few whole networks, for calibration) as a standalone ONNX model
with a static input shape, plus a manifest; the user times them on the device with any tool and returns a
CSV with columns `key,latency_ms`; `import_results` turns that into a LUT whose fingerprint is the device
name given, calibrated when the networks were timed too. With `op_replicas` > 1 each op file holds that many
copies side by side (`onnxruntime.replicated`), as ONNX Runtime times ops here, so a runtime's fixed cost per
run is not charged to every op; the user times each file as it is, and the import divides.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ...errors import FastVitNasError
from ...fastvit.model import build_model
from ...fastvit.spec import ArchSpec
from ..build import refit
from ..measure import Timing
from ..modules import op_module
from ..ops import Op, unique_ops
from ..table import LatencyTable, LutMeta
from .onnxruntime import OPSET, export_onnx, replicated

MANIFEST_VERSION = 1
NETWORK_PREFIX = "network-"
RESULT_COLUMNS = ("key", "latency_ms")


def export_ops(out: Path, specs: list[ArchSpec], img_size: int, batch: int,
               calibration: list[ArchSpec] = (), op_replicas: int = 1) -> Path:
    """Write `out/ops/*.onnx`, `out/networks/*.onnx`, `manifest.json`, `manifest.csv`; returns the JSON path."""
    if op_replicas < 1:
        raise FastVitNasError(f"--op-replicas: must be >= 1, got {op_replicas}")
    out = Path(out)
    (out / "ops").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for op in unique_ops(list(specs) + list(calibration), img_size, batch).values():
        name = f"ops/op_{len(entries):05d}.onnx"
        (out / name).write_bytes(replicated(export_onnx(op_module(op), op.in_shape), op_replicas))
        entries.append({"key": op.key, "kind": "op", "file": name, "input_shape": list(op.in_shape),
                        "replicas": op_replicas, **op.columns()})
    if calibration:
        (out / "networks").mkdir(exist_ok=True)
    for spec in calibration:
        name = f"networks/{spec.arch_id}.onnx"
        shape = (batch, spec.in_chans, img_size, img_size)
        (out / name).write_bytes(export_onnx(build_model(spec, inference=True), shape))
        entries.append({"key": NETWORK_PREFIX + spec.arch_id, "kind": "network", "file": name,
                        "input_shape": list(shape), "spec": spec.to_dict()})
    manifest = {"manifest_version": MANIFEST_VERSION, "img_size": img_size, "batch": batch, "dtype": "float32",
                "layout": "NCHW", "format": "onnx", "opset": OPSET, "torch_version": torch.__version__,
                "op_replicas": op_replicas,
                "results": "CSV with columns key,latency_ms (milliseconds per run of the file, one row per entry; "
                           "an op file holds `replicas` copies, and the import divides by them)", "entries": entries}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "kind", "file", "input_shape"])
        for e in entries:
            writer.writerow([e["key"], e["kind"], e["file"], "x".join(map(str, e["input_shape"]))])
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FastVitNasError(f"{path}: not a readable manifest.json ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise FastVitNasError(f"{path}: not a fastvit-nas ops manifest (version {MANIFEST_VERSION})")
    return manifest


def read_results(path: Path) -> dict[str, float]:
    """`key,latency_ms` rows; wrong columns, units or values get one clear line."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FastVitNasError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = columns
    if "latency_ms" not in columns:
        other = [c for c in columns if c.startswith("latency") or c in ("ms", "us", "s", "time")]
        hint = f" (found {other[0]!r}; convert it to milliseconds)" if other else ""
        raise FastVitNasError(f"{path}: needs columns {','.join(RESULT_COLUMNS)} with latency in milliseconds{hint}")
    if "key" not in columns:
        raise FastVitNasError(f"{path}: needs columns {','.join(RESULT_COLUMNS)} (no 'key' column)")
    values = pd.to_numeric(frame["latency_ms"], errors="coerce")
    bad = frame.loc[~values.map(lambda v: math.isfinite(v) and v > 0), "key"]
    if len(bad):
        raise FastVitNasError(f"{path}: latency_ms must be a positive number of milliseconds; row with key "
                              f"{bad.iloc[0]!r} is {frame.loc[bad.index[0], 'latency_ms']!r}")
    if frame["key"].duplicated().any():
        raise FastVitNasError(f"{path}: key {frame.loc[frame['key'].duplicated(), 'key'].iloc[0]!r} appears twice")
    return dict(zip(frame["key"].astype(str), values.astype(float), strict=True))


def import_results(results: Path, manifest_path: Path, device_name: str, out: Path,
                   runtime: str = "unknown") -> LatencyTable:
    """Build (or extend) the LUT at `out` for `device_name` from device-measured latencies."""
    manifest = read_manifest(manifest_path)
    latencies = read_results(results)
    entries = {e["key"]: e for e in manifest["entries"]}
    unknown = [k for k in latencies if k not in entries]
    if unknown:
        raise FastVitNasError(f"{results}: key {unknown[0]!r} is not in {manifest_path}")
    missing = [k for k, e in entries.items() if e["kind"] == "op" and k not in latencies]
    if missing:
        raise FastVitNasError(f"{results}: lacks {len(missing)} op(s) of the manifest (first: {missing[0]})")
    meta = LutMeta(backend="external", backend_version=runtime, torch_version=manifest["torch_version"],
                   device={"kind": "external", "name": device_name}, dtype=manifest["dtype"],
                   batch=manifest["batch"], img_size=manifest["img_size"], threads=None, layout=manifest["layout"],
                   protocol={"source": "external", "results": Path(results).name,
                             "op_replicas": manifest.get("op_replicas", 1)})
    table = LatencyTable(meta)
    if Path(out).exists():
        table = LatencyTable.load(out)
        table.meta.check_compatible(meta, str(out))
    op_columns = set(Op.__dataclass_fields__) - {"module_path"}
    shares = {k: ms / entries[k].get("replicas", 1) for k, ms in latencies.items() if entries[k]["kind"] == "op"}
    new = [(Op(**{name: v for name, v in entries[k].items() if name in op_columns}), Timing(ms, ms, ms, 0.0, 1))
           for k, ms in shares.items() if k not in table]
    table.add(new)
    points = [{"arch_id": entries[k]["key"][len(NETWORK_PREFIX):], "spec": entries[k]["spec"], "measured_ms": ms}
              for k, ms in latencies.items() if entries[k]["kind"] == "network"]
    if points:
        known = {p["arch_id"] for p in (table.meta.calibration or {}).get("points", [])}
        refit(table, [*(table.meta.calibration or {}).get("points", []),
                      *(p for p in points if p["arch_id"] not in known)])
    table.save(out)
    return table
