"""One record per module class: a new layer is supported by one ``geta.register_module`` call."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import geta
from geta import registry
from geta.quant.prepare import original_parameter


class Dense(nn.Module):
    """A custom layer: weight ``kernel`` (in x out), its width in ``units``, read in forward."""

    def __init__(self, fan_in: int, units: int) -> None:
        super().__init__()
        self.units = units
        self.kernel = nn.Parameter(torch.randn(fan_in, units) / fan_in**0.5)

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.kernel).reshape(x.shape[0], self.units)


class SubDense(Dense):
    """Inherits its base's record field by field."""


def _units(module: Dense) -> None:
    module.units = original_parameter(module, "kernel").shape[1]


@pytest.fixture(autouse=True)
def _registered():
    geta.register_module(Dense, quantize=geta.LayerSpec(weights=("kernel",), out_axis=1), widths=_units)
    yield
    registry._RECORDS.pop(Dense, None)
    registry._RECORDS.pop(SubDense, None)


def test_one_call_quantizes_prunes_and_updates_widths() -> None:
    model = nn.Sequential(Dense(6, 8), nn.ReLU(), SubDense(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 6)
    g = geta.GETA(model, x, quantize="weights+activations")
    assert {layer.name for layer in g.layers} == {"0", "2", "4"}
    assert len(g.groups) == 16, [u.reasons for u in g.unprunable()]
    g.zero_random_groups(0.5)
    compact = g.construct_subnet()
    assert compact[0].units + compact[2].units == 8
    with torch.no_grad():
        assert torch.allclose(compact(x), g.model(x), atol=1e-5)


def test_fields_merge_and_follow_the_mro() -> None:
    assert registry.lookup(SubDense, "widths") is _units
    geta.register_module(SubDense, fixed_reshapes=True)
    assert registry.lookup(SubDense, "fixed_reshapes") is True
    assert registry.lookup(SubDense, "quantize") == geta.LayerSpec(weights=("kernel",), out_axis=1)
    assert registry.lookup(Dense, "fixed_reshapes") is None
    assert registry.lookup(SubDense, "saves") is None  # saving is declared per exact class
    geta.register_module(SubDense)
    assert registry.saved_classes()[f"{SubDense.__module__}.{SubDense.__qualname__}"] is SubDense


def test_without_the_record_the_layer_is_neither_quantized_nor_pruned_wrongly() -> None:
    registry._RECORDS.pop(Dense)
    model = nn.Sequential(Dense(6, 8), nn.ReLU(), nn.Linear(8, 3))
    g = geta.GETA(model, torch.randn(5, 6), quantize="weights")
    assert {layer.name for layer in g.layers} == {"2"}
    reasons = [r for u in g.unprunable() for r in u.reasons if r.startswith("probed:")]
    assert reasons, "the kernel's columns were offered although units cannot follow"


@pytest.mark.parametrize("bad", [dict(quantize=geta.LayerSpec(weights=())), dict(widths=3), dict(saves="yes")])
def test_bad_records_are_refused(bad: dict) -> None:
    with pytest.raises(geta.ConfigError, match="register_module"):
        geta.register_module(Dense, **bad)
    with pytest.raises(geta.ConfigError, match=r"nn\.Module subclass"):
        geta.register_module(int)
