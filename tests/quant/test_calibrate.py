"""Calibration under bad data: a non-finite batch is named before any range is set; non-finite values
made inside the model are left out of the ranges with a warning; ranges are never NaN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.errors import ConfigError, ModelError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_a_nan_pixel_in_a_calibration_batch_is_an_error_naming_the_batch() -> None:
    batches = [torch.randn(8, 4) for _ in range(3)]
    batches[2][5, 1] = float("nan")
    with pytest.raises(ConfigError, match=r"calibration batch 2: positional input 0 holds 1 non-finite value"):
        geta.GETA(_net(), torch.randn(8, 4), quantize="weights+activations", calibration_data=batches)
    with pytest.raises(ConfigError, match=r"calibration batch 0: input 'x' holds 2 non-finite values"):
        geta.GETA(_net(), torch.randn(8, 4), quantize="weights+activations",
                  calibration_data=[{"x": torch.tensor([[float("inf"), 0, 0, 0], [float("nan"), 0, 0, 0]])}])


def test_non_finite_example_inputs_and_weights_are_errors() -> None:
    x = torch.randn(8, 4)
    x[0, 0] = float("inf")
    with pytest.raises(ConfigError, match="example_inputs: positional input 0 holds 1 non-finite value"):
        geta.GETA(_net(), x)
    net = _net()
    with torch.no_grad():
        net[2].weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"parameter 2\.weight holds 1 non-finite values"):
        geta.GETA(net, torch.randn(8, 4))


def test_non_finite_activations_made_inside_the_model_are_left_out_of_the_range() -> None:
    class Producer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(torch.log(torch.relu(self.first(x))))  # log(0) = -inf from finite inputs

    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="non-finite activation values .* left out of the activation ranges"):
        g = geta.GETA(Producer(), torch.randn(16, 4), quantize="weights+activations")
    ranges = [layer.input_quantizer.q_m for layer in g.layers if layer.input_quantizer is not None]
    assert ranges and all(bool(torch.isfinite(q).all()) and bool((q > 0).all()) for q in ranges)
