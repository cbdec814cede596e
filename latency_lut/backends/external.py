"""The external backend: for devices this machine cannot drive (phones, NPUs, other servers).

`export_ops` writes every unique op (and a few whole networks, for calibration) as a standalone model with a
static input shape, in ONNX and/or Core ML (`coreml.py`), plus a manifest; the user times them on the device
with any tool and returns a CSV with columns `key,latency_ms`; `import_results` turns that into a LUT whose
fingerprint is the device name given, calibrated when the networks were timed too. With `op_replicas` > 1 each
op file holds that many copies side by side (`onnxruntime.replicated`), as ONNX Runtime times ops here, so a
runtime's fixed cost per run is not charged to every op; the user times each file as it is, and the import
divides. With `context_max_side` > 0, blocks whose input is at most that on a side are written as a light network
(`in_context.Context`) with `context_copies` copies of the block chained inside, and each such network is also
written alone: the import takes a block's share of the difference, as a build here does (`in_context.py`), so a
phone's table follows the same protocol as this machine's.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ...errors import FastVitNasError
from ...fastvit.model import build_model
from ...fastvit.spec import ArchSpec
from ..build import refit
from ..in_context import Context, block_contexts, block_timing
from ..measure import Protocol, Timing
from ..modules import op_module
from ..ops import Op, unique_ops
from ..table import LatencyTable, LutMeta
from .coreml import DEPLOYMENT_TARGET, coremltools_module, export_coreml
from .onnxruntime import OPSET, export_onnx, replicated

MANIFEST_VERSION = 1
NETWORK_PREFIX = "network-"
RESULT_COLUMNS = ("key", "latency_ms")
EXPORT_SETTINGS = "export.json"
FORMATS = {"onnx": ".onnx", "coreml": ".mlpackage"}
"""File formats `export_ops` writes, with their suffixes: ONNX for Android and most runtimes, Core ML for Apple."""


def _write(fmt: str, make_module: Callable[[], nn.Module], in_shape: tuple[int, ...], path: Path, replicas: int,
           coreml_precision: str) -> None:
    """Write one file under a temporary name and rename it when complete, so that a file under its final name is
    always whole: an export killed midway resumes by skipping those."""
    partial_path = path.with_name(f".partial-{path.name}")  # the suffix stays: coremltools saves by it
    if partial_path.is_dir():  # an ML program is a folder
        shutil.rmtree(partial_path)
    else:
        partial_path.unlink(missing_ok=True)
    if fmt == "onnx":
        partial_path.write_bytes(replicated(export_onnx(make_module(), in_shape), replicas))
    else:
        export_coreml(make_module, in_shape, partial_path, coreml_precision, replicas)
    partial_path.rename(path)


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Record the export's settings in `out`, or refuse a folder holding an export made with other settings: its
    files would be skipped as done, though they are not what was asked for."""
    path = out / EXPORT_SETTINGS
    if path.exists():
        earlier = json.loads(path.read_text())
        for name, value in settings.items():
            if earlier.get(name) != value:
                raise FastVitNasError(f"{out}: holds an export with {name}={earlier.get(name)!r}, this one has "
                                      f"{name}={value!r}; use another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings) + "\n")


def file_stem(key: str) -> str:
    """A file name from an op key, readable and the same on every run (so a resumed export finds its files) and
    free of `:`, which macOS and Windows refuse."""
    return key.replace(":", "_")


def _in_context(context: Context, op: Op, copies: int) -> nn.Module:
    """`copies` of the block `op` inside `context`, each built afresh: with weights of their own values."""
    return context.network([op_module(op) for _ in range(copies)])


def export_ops(out: Path, specs: list[ArchSpec], img_size: int, batch: int, calibration: list[ArchSpec] = (),
               op_replicas: int = 1, formats: Sequence[str] = ("onnx",), coreml_precision: str = "fp16",
               progress: bool = False, context_max_side: int = 0,
               context_copies: int = Protocol.context_copies) -> Path:
    """Write each op to `out/ops/`, each block context to `out/contexts/` and each calibration network to
    `out/networks/`, once per format, with `manifest.json` and `manifest.csv`; returns the JSON path. Files
    already in `out` from an earlier run with the same settings are kept, so an export that was killed (the full
    space in Core ML takes half an hour) resumes."""
    for name, value in (("--op-replicas", op_replicas), ("--context-copies", context_copies)):
        if value < 1:
            raise FastVitNasError(f"{name}: must be >= 1, got {value}")
    if context_max_side < 0:
        raise FastVitNasError(f"--context-max-side: must be >= 0 (0: every block alone), got {context_max_side}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise FastVitNasError(f"--format: must be among {', '.join(FORMATS)}, got {', '.join(unknown) or 'none'}")
    coreml = {"precision": coreml_precision, "deployment_target": DEPLOYMENT_TARGET,
              "coremltools_version": coremltools_module(coreml_precision).__version__} if "coreml" in formats else None
    out = Path(out)
    regime = {"op_replicas": op_replicas,
              **({"context_max_side": context_max_side, "context_copies": context_copies} if context_max_side else {})}
    _claim(out, {"img_size": img_size, "batch": batch, **regime, "formats": list(formats), "opset": OPSET,
                 "coreml_precision": coreml_precision if "coreml" in formats else None})
    everything = list(specs) + list(calibration)
    contexts = block_contexts(everything, img_size, batch, context_max_side)
    items = [*unique_ops(everything, img_size, batch).values(), *dict.fromkeys(contexts.values()), *calibration]
    entries: list[dict[str, Any]] = []
    for item in tqdm(items, desc="export", unit="model", disable=not progress):
        if isinstance(item, Op) and item.key in contexts:
            context = contexts[item.key]
            stem, shape, replicas = f"ops/{file_stem(item.key)}", context.in_shape, 1
            entry = {"key": item.key, "kind": "op", "context": context.key, "copies": context_copies,
                     **item.columns()}
            make_module = partial(_in_context, context, item, context_copies)
        elif isinstance(item, Op):
            stem, shape, replicas = f"ops/{file_stem(item.key)}", item.in_shape, op_replicas
            entry = {"key": item.key, "kind": "op", **item.columns()}
            make_module = partial(op_module, item)
        elif isinstance(item, Context):
            stem, shape, replicas = f"contexts/{item.key}", item.in_shape, 1
            entry = {"key": item.key, "kind": "context", "spec": item.spec.to_dict()}
            make_module = item.network
        else:
            stem, shape, replicas = f"networks/{item.arch_id}", (batch, item.in_chans, img_size, img_size), 1
            entry = {"key": NETWORK_PREFIX + item.arch_id, "kind": "network", "spec": item.to_dict()}
            make_module = partial(build_model, item, inference=True)
        (out / stem).parent.mkdir(exist_ok=True)
        entry = {**entry, "input_shape": list(shape), "replicas": replicas}
        files = {fmt: stem + FORMATS[fmt] for fmt in formats}
        for fmt, name in files.items():
            if not (out / name).exists():
                _write(fmt, make_module, shape, out / name, replicas, coreml_precision)
        entries.append({**entry, "file": files[formats[0]], "files": files})
    manifest = {"manifest_version": MANIFEST_VERSION, "img_size": img_size, "batch": batch, "dtype": "float32",
                "layout": "NCHW", "formats": list(formats), "opset": OPSET, "torch_version": torch.__version__,
                **regime,
                "results": "CSV with columns key,latency_ms (milliseconds per run of the file, one row per entry; "
                           "an op file holds `replicas` copies, and the import divides by them; one with a "
                           "`context` holds `copies` copies of a block inside that context, and the import takes "
                           "the context's own row off before dividing)", "entries": entries}
    if coreml:
        manifest["coreml"] = coreml
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "kind", "input_shape", *(f"{fmt}_file" for fmt in formats)])
        for e in entries:
            writer.writerow([e["key"], e["kind"], "x".join(map(str, e["input_shape"])), *e["files"].values()])
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


def measured_format(manifest: dict[str, Any], fmt: str | None, where: Path) -> tuple[str, str]:
    """The format the results timed (`fmt`, or the manifest's only one) and the dtype it computes in."""
    formats = manifest.get("formats") or [manifest.get("format", "onnx")]
    if fmt is None and len(formats) > 1:
        raise FastVitNasError(f"--format: {where} holds {', '.join(formats)}; say which one the results timed")
    fmt = fmt or formats[0]
    if fmt not in formats:
        raise FastVitNasError(f"--format: {where} holds {', '.join(formats)}, not {fmt}")
    half = fmt == "coreml" and manifest.get("coreml", {}).get("precision") == "fp16"
    return fmt, "float16" if half else manifest["dtype"]


def _share(entry: dict[str, Any], latencies: dict[str, float]) -> Timing:
    """One op's latency from the time of its file: a copy's share, or a block's share of what its copies added to
    their context (`in_context.block_timing`)."""

    def timing(ms: float) -> Timing:
        return Timing(ms, ms, ms, 0.0, 1)

    if "context" in entry:
        return block_timing(timing(latencies[entry["key"]]), timing(latencies[entry["context"]]), entry["copies"])
    return timing(latencies[entry["key"]] / entry.get("replicas", 1))


def import_results(results: Path, manifest_path: Path, device_name: str, out: Path,
                   runtime: str = "unknown", fmt: str | None = None) -> LatencyTable:
    """Build (or extend) the LUT at `out` for `device_name` from device-measured latencies of the manifest's
    `fmt` files (Core ML in fp16 makes a float16 table, which never merges with a float32 one)."""
    manifest = read_manifest(manifest_path)
    fmt, dtype = measured_format(manifest, fmt, Path(manifest_path))
    latencies = read_results(results)
    entries = {e["key"]: e for e in manifest["entries"]}
    unknown = [k for k in latencies if k not in entries]
    if unknown:
        raise FastVitNasError(f"{results}: key {unknown[0]!r} is not in {manifest_path}")
    missing = [k for k, e in entries.items() if e["kind"] in ("op", "context") and k not in latencies]
    if missing:
        raise FastVitNasError(f"{results}: lacks {len(missing)} op(s) or context(s) of the manifest (first: "
                              f"{missing[0]})")
    meta = LutMeta(backend="external", backend_version=runtime, torch_version=manifest["torch_version"],
                   device={"kind": "external", "name": device_name}, dtype=dtype,
                   batch=manifest["batch"], img_size=manifest["img_size"], threads=None, layout=manifest["layout"],
                   protocol={"source": "external", "results": Path(results).name, "format": fmt,
                             **{name: manifest.get(name, default) for name, default in
                                (("op_replicas", 1), ("context_max_side", 0), ("context_copies", None))}})
    table = LatencyTable(meta)
    if Path(out).exists():
        table = LatencyTable.load(out)
        table.meta.check_compatible(meta, str(out))
    op_columns = set(Op.__dataclass_fields__) - {"module_path"}
    new = [(Op(**{name: v for name, v in entries[k].items() if name in op_columns}), _share(entries[k], latencies))
           for k in latencies if entries[k]["kind"] == "op" and k not in table]
    table.add(new)
    points = [{"arch_id": entries[k]["key"][len(NETWORK_PREFIX):], "spec": entries[k]["spec"], "measured_ms": ms}
              for k, ms in latencies.items() if entries[k]["kind"] == "network"]
    if points:
        known = {p["arch_id"] for p in (table.meta.calibration or {}).get("points", [])}
        refit(table, [*(table.meta.calibration or {}).get("points", []),
                      *(p for p in points if p["arch_id"] not in known)])
    table.save(out)
    return table
