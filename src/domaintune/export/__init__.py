"""Deployment artefacts of a run: ONNX fp32/int8 with an accuracy gate (`export_run`), and pruning."""

from domaintune.export.onnx_export import ExportError, export_run
from domaintune.export.onnx_model import OnnxModel, choose_backend

__all__ = ["ExportError", "OnnxModel", "choose_backend", "export_run"]
