"""Shared test set-up.

torchvision 0.28's C extension cannot load with the CPU build of torch 2.13, and importing it (which
transformers does) fails while registering fake kernels for two ops it cannot find. Declaring the
two op schemas first makes its pure-Python models importable. This shim lives in the tests only.
"""

import importlib.util

import pytest
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


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
