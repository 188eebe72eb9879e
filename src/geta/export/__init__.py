"""Deployment: packed-integer save/load, ONNX export with Q/DQ, and the text of ``geta inspect``."""

from geta.export.artifacts import write_artifacts
from geta.export.onnx import export_onnx
from geta.export.packed import load, save

__all__ = ["export_onnx", "load", "save", "write_artifacts"]
