"""The deployment files of a compact model, written together (what ``geta compress`` leaves behind)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from geta.export.onnx import export_onnx
from geta.export.packed import save


def write_artifacts(compact_model: nn.Module, example_inputs: object, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``model.safetensors`` (packed integers, :func:`geta.save`) and ``model.onnx`` (Q/DQ,
    :func:`geta.export_onnx`) into ``out_dir``; returns their paths under the keys "safetensors" and "onnx"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "safetensors": save(compact_model, out / "model.safetensors"),
        "onnx": export_onnx(compact_model, example_inputs, out / "model.onnx"),
    }
