"""The LUT: one parquet file per device and backend, with its provenance in the file's metadata.

Rows are ops (key, structured columns, latency, median, minimum, spread, count, when measured); the
parquet schema metadata holds a JSON document with the format version, the device fingerprint, the settings
(backend, dtype, batch, input size, threads, layout), library versions, the measurement protocol, the
calibration points and fit, and the latest validation figures. Parquet and JSON are open formats that
outlive library upgrades; there are no pickles. Mixing measurements of different devices, settings or
library versions in one table is refused, because the sum would then describe no real device.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FastVitNasError
from .measure import MS_FIELDS, Timing, geomean_ratio
from .ops import Op

FORMAT_VERSION = 1
META_KEY = b"fastvit_nas.lut"
OP_COLUMNS = ("key", "op_type", "batch", "in_ch", "in_h", "in_w", "out_ch", "kernel", "stride", "ffn_kernel",
              "hidden", "heads", "num_classes")
TIMING_COLUMNS = ("latency_ms", "median_ms", "min_ms", "iqr_ms", "count", "measured_at", "slowdown")
OPTIONAL_COLUMNS = {"slowdown": 1.0}
"""Columns added after format version 1 was fixed, with the value that LUTs written before them mean."""
SETTING_FIELDS = ("backend", "dtype", "batch", "img_size", "threads", "layout")
REGIME_FIELDS = {"cold_weights_mb": 0.0, "op_replicas": 1, "context_max_side": 0, "distinct_copies": False}
"""Protocol fields that change what an op's latency means (not just how precisely it is known), with the value
LUTs written before them mean: ops timed with warm and with cold weights (`measure.weight_copies`) differ by up
to a fifth, ONNX Runtime ops timed one or eight to a session run by its fixed cost per run, and small blocks
timed inside a network by up to 1.6 times (`in_context.py`), and ONNX Runtime attention blocks whose copies shared
their weights' values by a fifth (`backends/onnxruntime._Graph`), so they are never mixed in one table."""
EARLIER_DEFAULTS = {"network_calls": 0, "network_warmup_calls": None}
"""Protocol fields whose default changed, with the value LUTs written before them were measured by: validating an
older LUT times its held-out networks as its calibration networks were timed (long sweeps before `network_calls`,
an op's warm-up calls before `network_warmup_calls`)."""
VERSION_FIELDS = ("backend_version", "torch_version")


class LutError(FastVitNasError):
    """A LUT that cannot be read, or that does not fit the device, settings or specs it is used for."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class LutMeta:
    """Provenance of a LUT; everything needed to decide whether two measurements may be combined."""

    backend: str
    backend_version: str
    torch_version: str
    device: dict[str, Any]
    dtype: str
    batch: int
    img_size: int
    threads: int | None
    protocol: dict[str, Any]
    layout: str = "NCHW"
    space: str | None = None
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    speed_reference: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=_now)

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTING_FIELDS}

    def describe_device(self) -> str:
        d = self.device
        threads = f", {self.threads} threads" if self.threads else ""
        return f"{d.get('name', '?')} ({d.get('kind', '?')}{threads})"

    def measuring_protocol(self) -> dict[str, Any]:
        """The protocol the LUT's ops were measured by, with what older LUTs mean where they lack a field."""
        return {**REGIME_FIELDS, **EARLIER_DEFAULTS, **self.protocol}

    def _identity(self, fields: tuple[str, ...]) -> dict[str, Any]:
        """The `fields` and the regime fields: what must agree for two measurements to be combined."""
        regime = self.measuring_protocol()
        return {**{name: getattr(self, name) for name in fields}, **{name: regime[name] for name in REGIME_FIELDS}}

    def check_compatible(self, other: LutMeta, what: str, versions: bool = True) -> None:
        """Refuse to combine measurements of another device, other settings, another measuring regime or
        (optionally) other library versions."""
        if self.device != other.device:
            raise LutError(f"{what}: the LUT was measured on {self.describe_device()}, not on "
                           f"{other.describe_device()}; device fingerprints differ ({self.device} vs {other.device})")
        fields = SETTING_FIELDS + (VERSION_FIELDS if versions else ())
        mine, theirs = self._identity(fields), other._identity(fields)
        for name in mine:
            if mine[name] != theirs[name]:
                raise LutError(f"{what}: the LUT has {name}={mine[name]!r} but this run has {name}={theirs[name]!r}; "
                               "measurements with different settings are never mixed (use another --out file)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> LutMeta:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise LutError(f"{where}: LUT format version {version!r} is not supported (this fastvit-nas reads "
                           f"version {FORMAT_VERSION})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise LutError(f"{where}: LUT metadata does not match format version {FORMAT_VERSION} ({exc})") from None


def reference_replicas(record: dict[str, Any]) -> int:
    """Copies of each speed-reference op per timed call (`speed.py`): the ops' own (`Protocol.op_replicas`) in a
    new LUT, one in LUTs whose reference predates the field, which go on reading it as their baseline was read."""
    return int(record.get("replicas", 1))


def speed_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The host's slowdown over a LUT's reference readings (`speed.py`), or None without any: how many, when, their
    median and range, how many levels were confirmed (`speed.SpeedNormalised.divisor` says which one a timing is
    divided by), the seconds the readings took, and how many slow spells were waited for and for how long."""
    trace = (record or {}).get("trace")
    if not trace:
        return None
    values = np.array([entry[1] for entry in trace])
    return {"network": record["network"], "replicas": reference_replicas(record), "readings": len(values),
            "first": trace[0][0], "last": trace[-1][0],
            "min": float(values.min()), "median": float(np.median(values)), "max": float(values.max()),
            "levels": len({entry[-1] for entry in trace}), "reading_s": record.get("reading_s"),
            "waits": record.get("waits", 0), "waited_s": record.get("waited_s", 0.0)}


class LatencyTable:
    """Op latencies of one device, backend and setting; incremental, mergeable, saved as parquet."""

    def __init__(self, meta: LutMeta, rows: pd.DataFrame | None = None) -> None:
        self.meta = meta
        columns = list(OP_COLUMNS + TIMING_COLUMNS)
        self.rows = (rows if rows is not None else pd.DataFrame(columns=columns)).reset_index(drop=True)

    # ---- content -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: str) -> bool:
        return key in self.latencies()

    def latencies(self) -> dict[str, float]:
        return dict(zip(self.rows["key"], self.rows["latency_ms"].astype(float), strict=True))

    def missing(self, keys) -> list[str]:
        """Keys (deduplicated, order kept) that this table has not measured yet."""
        have = set(self.rows["key"])
        return [k for k in dict.fromkeys(keys) if k not in have]

    def add(self, entries: list[tuple[Op, Timing]]) -> None:
        """Append measured ops; a key already present is a bug in the caller (it would be measured twice)."""
        if not entries:
            return
        duplicate = [op.key for op, _ in entries if op.key in set(self.rows["key"])]
        if duplicate:
            raise ValueError(f"already measured: {duplicate[0]}")
        new = pd.DataFrame([{**op.columns(), **_timing_columns(t)} for op, t in entries])
        self.rows = new if self.rows.empty else pd.concat([self.rows, new], ignore_index=True)

    def retime(self, entries: list[tuple[Op, Timing]]) -> None:
        """Replace the timings of ops already measured (a build's re-check of suspect entries, `trend.py`)."""
        rows = self.rows.set_index("key")
        absent = [op.key for op, _ in entries if op.key not in rows.index]
        if absent:
            raise ValueError(f"not measured yet: {absent[0]}")
        for op, t in entries:
            for name, value in _timing_columns(t).items():
                rows.at[op.key, name] = value
        self.rows = rows.reset_index()

    def merge(self, other: LatencyTable, what: str = "merge") -> int:
        """Add the other table's ops that this one lacks (same device, settings, versions); returns how many.

        When both tables have a speed reference, the other's latencies are rescaled from its baseline to this
        one's (`speed.py`), so the merged table is at one host speed.
        """
        self.meta.check_compatible(other.meta, what)
        mine, theirs = self.meta.speed_reference or {}, other.meta.speed_reference or {}
        if mine and theirs and reference_replicas(mine) != reference_replicas(theirs):
            raise LutError(f"{what}: the two LUTs read their speed reference with {reference_replicas(mine)} and "
                           f"{reference_replicas(theirs)} op copies per run, so their baselines are not on one "
                           "scale; rebuild the older one with this version")
        new = other.rows[~other.rows["key"].isin(set(self.rows["key"]))].copy()
        scale = geomean_ratio(mine.get("baseline_ms", {}), theirs.get("baseline_ms", {}))
        new[list(MS_FIELDS)] = new[list(MS_FIELDS)].astype(float) * scale
        new["slowdown"] = new["slowdown"].astype(float) / scale
        if not new.empty:
            self.rows = pd.concat([self.rows, new], ignore_index=True) if not self.rows.empty else new.copy()
        return len(new)

    def coverage(self) -> dict[str, int]:
        """Number of measured ops per op type."""
        return {str(k): int(v) for k, v in self.rows["op_type"].value_counts().sort_index().items()}

    def describe(self) -> str:
        """Human-readable settings, device, coverage, calibration and validation figures (for `lut show`)."""
        m = self.meta
        lines = [
            f"device     {m.describe_device()}",
            f"backend    {m.backend} {m.backend_version} (torch {m.torch_version}), {m.dtype}, batch {m.batch}, "
            f"input {m.img_size}x{m.img_size} {m.layout}",
            f"protocol   {json.dumps(m.protocol, sort_keys=True)}",
            f"space      {m.space or '-'}",
            f"coverage   {len(self)} ops: " + ", ".join(f"{t} {n}" for t, n in self.coverage().items()),
        ]
        fit = (m.calibration or {}).get("fit")
        if fit:
            scales = ", ".join(f"{t} {v:.3f}" for t, v in fit["scales"].items())
            per_call = "".join(f", {t} {v:.4f} ms per call" for t, v in fit.get("call_ms", {}).items() if v)
            lines.append(f"calibration {fit['model']} on {fit['points']} networks: offset {fit['offset_ms']:.3f} ms, "
                         f"scales {scales}{per_call}; fit MAPE {fit['fit_mape']:.2f} %, leave-one-out MAPE "
                         f"{fit['loo_mape']:.2f} %"
                         + (f"; recalibrated {m.calibration['recalibrated_at']}"
                            if m.calibration.get("recalibrated_at") else ""))
        else:
            lines.append("calibration none (predictions are raw op sums)")
        speed = speed_summary(m.speed_reference)
        if speed:
            lines.append(f"host speed {speed['readings']} readings of the {speed['network']} reference "
                         f"({speed['replicas']} copies per run), "
                         f"{speed['first']} to {speed['last']}: slowdown median {speed['median']:.3f}, range "
                         f"{speed['min']:.3f}-{speed['max']:.3f}; {speed['levels']} confirmed level(s), timings "
                         f"divided by the calm one or, in a slow spell, by the spell's; {speed['waits']} slow spell(s) "
                         f"waited for, {speed['waited_s']:.0f} s")
        v = m.validation
        if v:
            lines.append(f"validation {v['n']} held-out networks ({v['validated_at']}): MAPE {v['mape']:.2f} %, "
                         f"within ±5 % {v['within_5']:.1f} %, within ±10 % {v['within_10']:.1f} %, "
                         f"Spearman {v['spearman']:.4f}, Kendall {v['kendall']:.4f}")
            for key, label in (("repeatability", "the same networks re-measured (the ceiling)"),
                               ("as_built", f"before recalibration (drift {v.get('drift') or 1:.3f}x)")):
                if v.get(key):
                    f = v[key]
                    lines.append(f"{key.replace('_', ' '):<10} {label}: MAPE {f['mape']:.2f} %, within ±10 % "
                                 f"{f['within_10']:.1f} %, Spearman {f['spearman']:.4f}")
        else:
            lines.append("validation none yet (run `fastvit-nas lut validate`)")
        return "\n".join(lines)

    # ---- storage -----------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename), so an interrupted build never leaves a truncated LUT."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.rows, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(asdict(self.meta), sort_keys=True).encode()
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        """Read a LUT; a missing, corrupt, truncated or foreign file is one clear `LutError` line."""
        path = Path(path)
        if not path.is_file():
            raise LutError(f"{path}: no such LUT file (build one with `fastvit-nas lut build --out {path}`)")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LutError(f"{path}: not a readable LUT (corrupt or truncated parquet: {reason})") from None
        raw = (table.schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise LutError(f"{path}: a parquet file but not a fastvit-nas LUT (no {META_KEY.decode()} metadata)")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LutError(f"{path}: LUT metadata is not valid JSON ({exc.msg})") from None
        meta = LutMeta.from_dict(data, str(path))
        rows = table.to_pandas()
        for column, value in OPTIONAL_COLUMNS.items():
            if column not in rows.columns:
                rows[column] = value
        absent = [c for c in OP_COLUMNS + TIMING_COLUMNS if c not in rows.columns]
        if absent:
            raise LutError(f"{path}: LUT lacks column(s) {', '.join(absent)}")
        if rows["key"].duplicated().any():
            raise LutError(f"{path}: LUT has duplicate key {rows.loc[rows['key'].duplicated(), 'key'].iloc[0]}")
        return cls(meta, rows)


def _timing_columns(t: Timing) -> dict[str, Any]:
    """A timing as the LUT's timing columns, stamped with the time it was stored."""
    return {"latency_ms": t.latency_ms, "median_ms": t.median_ms, "min_ms": t.min_ms, "iqr_ms": t.iqr_ms,
            "count": t.count, "measured_at": _now(), "slowdown": t.slowdown}
