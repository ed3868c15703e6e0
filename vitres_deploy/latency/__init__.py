"""Latency tables: profile every distinct choice of a space, predict archs, validate against measured networks.

The API the search and the export steps use::

    from vitres_deploy.latency import LatencyTable, predict, latency_range, measure_onnx

    table = LatencyTable.load("profiles/<device>/fmnist-ort-cpu-fp32-b1.json")
    predict(table, arch).latency_ms          # predicted end-to-end latency (ms)
    latency_range(table)                     # fastest/slowest predicted latency of the space
    measure_onnx(table, "model.onnx")        # TimingStats of a file, measured as the table was
"""

from __future__ import annotations

from .correction import Correction, fit_correction
from .entries import EntrySpec, arch_entries, enumerate_entries
from .predict import LatencyRange, Prediction, check_arch, latency_range, predict, weight_mib
from .profiler import profile_space
from .report import PredictionErrors, ValidationReport, ValidationRow
from .summary import TableSummary
from .table import Entry, LatencyTable, TableMeta, default_table_path
from .timing import TABLE_PROTOCOL, Measurement, ProfileSettings, measure_module, measure_onnx
from .validate import validate_table

__all__ = [
    "TABLE_PROTOCOL",
    "Correction",
    "Entry",
    "EntrySpec",
    "LatencyRange",
    "LatencyTable",
    "Measurement",
    "Prediction",
    "PredictionErrors",
    "ProfileSettings",
    "TableMeta",
    "TableSummary",
    "ValidationReport",
    "ValidationRow",
    "arch_entries",
    "check_arch",
    "default_table_path",
    "enumerate_entries",
    "fit_correction",
    "latency_range",
    "measure_module",
    "measure_onnx",
    "predict",
    "profile_space",
    "validate_table",
    "weight_mib",
]
