"""Per-op latency lookup tables per device, with a stated protocol and measured fidelity.

Typical use::

    from fastvit_nas.latency_lut import Predictor, LatencyTable
    predictor = Predictor(LatencyTable.load("cpu.lut.parquet"))
    ms = predictor.predict_many(specs)          # calibrated, vectorized
"""

from .backends import BACKENDS, Backend, get_backend
from .backends.external import export_ops, import_results
from .build import BuildReport, build_lut, measure_network, space_specs
from .measure import Protocol, Timing, measure
from .ops import OP_TYPES, Op, op_counts, ops, unique_ops
from .predict import Calibration, Predictor, fit_calibration, predict
from .spaces import SpaceSource, resolve_space
from .table import FORMAT_VERSION, LatencyTable, LutError, LutMeta
from .validate import ValidationReport, held_out_specs, recalibrate_lut, validate

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "OP_TYPES",
    "Backend",
    "BuildReport",
    "Calibration",
    "LatencyTable",
    "LutError",
    "LutMeta",
    "Op",
    "Predictor",
    "Protocol",
    "SpaceSource",
    "Timing",
    "ValidationReport",
    "build_lut",
    "export_ops",
    "fit_calibration",
    "get_backend",
    "held_out_specs",
    "import_results",
    "measure",
    "measure_network",
    "op_counts",
    "ops",
    "predict",
    "recalibrate_lut",
    "resolve_space",
    "space_specs",
    "unique_ops",
    "validate",
]
