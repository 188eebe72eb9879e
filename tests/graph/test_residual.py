"""Which modules' outputs go into residual adds (where ``quantize_residuals`` puts output quantizers), one
test per graph pattern, and what the output quantizers do in the model GETA prepares."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import geta
from geta.core.inputs import ExampleInputs
from geta.graph.capture import capture
from geta.graph.residual import residual_sources
from geta.models.cifar import ResNet20
from geta.quant.prepare import OUTPUT_QUANTIZER
from zoo import DepthwiseNet


def _sources(model: nn.Module, x: Tensor, excluded: set[str] = frozenset()) -> list[str]:
    return residual_sources(capture(model, ExampleInputs.from_user(x)).graph, model, set(excluded))


class ConvAdd(nn.Module):
    """Two convs without batch norm added, and a conv whose output is scaled before an add (not its output)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) + self.b(x) + 2 * self.c(x)


class BiasAdd(nn.Module):
    """A conv output plus a broadcast tensor: not a residual of two same-shaped tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.shift = nn.Parameter(torch.zeros(4, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.shift


def test_resnet_block_outputs_and_projection_shortcuts() -> None:
    """ResNet20: each block's second batch norm, and the batch norm of each projection shortcut."""
    sources = _sources(ResNet20(in_channels=1).eval(), torch.randn(2, 1, 16, 16))
    assert set(sources) == {*(f"blocks.{i}.bn2" for i in range(9)), "blocks.3.shortcut.1", "blocks.6.shortcut.1"}
    assert sources == sorted(sources, key=list(dict(ResNet20(in_channels=1).named_modules())).index)


def test_inverted_residual_projection() -> None:
    """MobileNetV2-style blocks: the projection's batch norm (``project.1``) of each block."""
    assert _sources(DepthwiseNet().eval(), torch.randn(2, 3, 8, 8)) == ["blocks.0.project.1", "blocks.1.project.1"]


def test_convs_without_batch_norm_and_a_scaled_operand() -> None:
    assert _sources(ConvAdd().eval(), torch.randn(2, 3, 8, 8)) == ["a", "b"]


def test_broadcast_add_is_not_a_residual() -> None:
    assert _sources(BiasAdd().eval(), torch.randn(2, 3, 8, 8)) == []


def test_full_precision_layers_are_left_out() -> None:
    """A skipped conv gets no output quantizer, nor does the batch norm right after it."""
    model = ResNet20(in_channels=1).eval()
    sources = _sources(model, torch.randn(2, 1, 16, 16), {"blocks.0.conv2", "blocks.3.shortcut.0"})
    assert "blocks.0.bn2" not in sources and "blocks.3.shortcut.1" not in sources and "blocks.1.bn2" in sources


def test_geta_quantizes_residuals_and_qasso_projects_their_bits() -> None:
    """GETA(quantize_residuals=True): signed output quantizers on the sources, calibrated, counted among the
    activation quantizers that QASSO projects into act_bits, and passed through when the probe compares."""
    torch.manual_seed(0)
    model = DepthwiseNet()
    x = torch.randn(4, 3, 8, 8)
    g = geta.GETA(model, x, quantize="weights+activations", exponent="fixed", quantize_residuals=True)
    modules = dict(g.model.named_modules())
    assert set(g.output_quantizers) == set(_sources(model.eval(), x))
    for name, quantizer in g.output_quantizers.items():
        assert getattr(modules[name], OUTPUT_QUANTIZER) is quantizer and quantizer.signed
        assert float(quantizer.q_m.detach()) > 0
    opt = g.qasso(lr=0.01, target_sparsity=0.3, total_steps=20, act_bits=(4, 6))
    assert all(any(q is p for p in opt.act_quantizers) for q in g.output_quantizers.values())
    for _ in range(20):
        opt.zero_grad()
        g.model(x).square().mean().backward()
        opt.step()
    assert all(4 <= float(q.integer_bits()) <= 6 for q in g.output_quantizers.values())
    compact = g.construct_subnet()
    assert any(hasattr(m, OUTPUT_QUANTIZER) for m in compact.modules())


def test_quantize_residuals_needs_quantized_activations() -> None:
    with pytest.raises(geta.GetaError, match="quantize_residuals=True needs quantize='weights\\+activations'"):
        geta.GETA(ResNet20(in_channels=1), torch.randn(2, 1, 16, 16), quantize="weights", quantize_residuals=True)
