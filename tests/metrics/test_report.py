"""Golden MACs / BOPs / size on hand-computed models, and the report's shape."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geta


class TinyAttentionNet(nn.Module):
    """conv(1->2, 3x3) on 4x4 -> flatten(8) -> linear(8->6) -> one-head attention over 2 tokens of 3."""

    def __init__(self, fused_attention: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.linear = nn.Linear(8, 6)
        self.fused_attention = fused_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(self.conv(x).flatten(1)).view(-1, 1, 2, 3)
        if self.fused_attention:
            return F.scaled_dot_product_attention(h, h, h)
        return torch.softmax(h @ h.transpose(-1, -2), dim=-1) @ h


# Per example: conv 2x2 outputs x 2 channels x 9 taps = 72; linear 8 x 6 = 48;
# attention QK^T 2 x 2 x 3 = 12 and AV 2 x 3 x 2 = 12.
CONV, LINEAR, ATTENTION = 72, 48, 24


def _set_bits(g: geta.GETA, weight_bits: int, act_bits: int) -> None:
    for layer in g.layers:
        layer.weight_quantizer.set_bits_(weight_bits)
        if layer.input_quantizer is not None:
            layer.input_quantizer.set_bits_(act_bits)


@pytest.mark.parametrize("fused_attention", [False, True])
def test_golden_macs_and_bops_weights_only(fused_attention: bool) -> None:
    g = geta.GETA(TinyAttentionNet(fused_attention), torch.randn(5, 1, 4, 4))
    _set_bits(g, 8, 8)
    report = g.report()
    assert report.macs == CONV + LINEAR + ATTENTION
    assert {row.name: row.macs for row in report.layers} == {"conv": CONV, "linear": LINEAR}
    assert report.bops == (CONV + LINEAR) * 8 * 32 + ATTENTION * 32 * 32
    assert report.rel_bops == report.bops / (report.macs * 32 * 32)
    assert report.params == 18 + 2 + 48 + 6
    assert report.size_bits == (18 + 48) * 8 + (2 + 6) * 32
    assert report.avg_weight_bits == 8


def test_golden_bops_with_activations() -> None:
    g = geta.GETA(TinyAttentionNet(False), torch.randn(5, 1, 4, 4), quantize="weights+activations")
    _set_bits(g, 5, 6)
    report = g.report()
    assert [(row.weight_bits, row.act_bits) for row in report.layers] == [(5, 6), (5, 6)]
    assert report.bops == (CONV + LINEAR) * 5 * 6 + ATTENTION * 32 * 32


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_only_model_rel_bops_is_bits_over_32(bits: int) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    g = geta.GETA(model, torch.randn(2, 3, 8, 8))
    _set_bits(g, bits, bits)
    assert g.report().rel_bops == bits / 32


def test_multihead_attention_macs_are_split_between_projections_and_attention() -> None:
    model = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 7, 16)
    g = geta.GETA(model, (x, x, x))
    report = g.report()
    rows = {row.name: row.macs for row in report.layers}
    assert rows == {"": 7 * 16 * 48, "out_proj": 7 * 16 * 16}
    assert report.macs == 7 * 16 * 48 + 7 * 16 * 16 + 2 * 4 * 7 * 7 * 4


def test_unquantized_and_skipped_layers_count_at_32_bits() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    g = geta.GETA(model, torch.randn(3, 4), skip=geta.LAST)
    g.layers[0].weight_quantizer.set_bits_(4)
    report = g.report()
    assert [row.weight_bits for row in report.layers] == [4, 32]
    assert report.bops == 16 * 4 * 32 + 8 * 32 * 32


def test_report_dict_and_table() -> None:
    g = geta.GETA(TinyAttentionNet(False), torch.randn(2, 1, 4, 4), quantize="weights+activations")
    report = g.report()
    data = report.to_dict()
    for key in ("macs", "bops", "rel_bops", "params", "size_bits", "avg_weight_bits", "group_sparsity", "layers"):
        assert key in data
    assert data["group_sparsity"] == 0.0
    assert set(data["layers"][0]) >= {"name", "kind", "macs", "weight_bits", "act_bits", "out_width"}
    assert [row["out_width"] for row in data["layers"]] == [2, 6]
    json.dumps(data)
    text = str(report)
    assert "conv" in text and "Linear" in text and "rel. BOPs" in text
