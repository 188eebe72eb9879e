"""Deployment: packed-integer save/load, ONNX export with Q/DQ, and the text of ``geta inspect``."""

from geta.export.architecture import register_module
from geta.export.packed import load, save

__all__ = ["load", "register_module", "save"]
