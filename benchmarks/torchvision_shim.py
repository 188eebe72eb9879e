"""Benchmark-only import shim for this project's CPU machines (the tests carry their own copy in
``tests/conftest.py``; the library carries none).

torchvision 0.28's C extension cannot load with the CPU build of torch 2.13, and importing it (which
transformers does whenever torchvision is installed) fails while registering fake kernels for two
ops it cannot find. Declaring the two op schemas first makes its pure-Python models importable.
Import this module before transformers or torchvision.
"""

from __future__ import annotations

import importlib.util

import torch


def _torchvision_ops_missing() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018
    except (AttributeError, RuntimeError):
        return True
    return False


if importlib.util.find_spec("torchvision") is not None and _torchvision_ops_missing():
    _TORCHVISION_SHIM = torch.library.Library("torchvision", "DEF")
    _TORCHVISION_SHIM.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, int zero_point) -> Tensor"
    )
