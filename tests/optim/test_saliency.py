"""Group saliency: the MACs each group saves, and the ``macs`` criterion that removes costly groups first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.metrics.cost import count_macs
from geta.optim.saliency import check_weights, group_macs


def two_stage_cnn() -> nn.Sequential:
    """8 channels at 16x16 (costly), then 8 channels at 4x4 (cheap) after a pooling."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def test_group_macs_is_what_removing_the_group_saves() -> None:
    x = torch.randn(2, 3, 16, 16)
    model = two_stage_cnn()
    g = geta.GETA(model, x)
    costs = group_macs(g.groups, g.layers, count_macs(g.model, g.example_inputs, g.layers))
    assert len(costs) == 8 * 3 and costs.min() > 0
    for index in range(len(costs)):
        g = geta.GETA(model, x)
        g.groups.zero_(torch.arange(len(costs)) == index)
        compact = geta.GETA(g.construct_subnet(), x, quantize="none")
        saved = count_macs(g.model, g.example_inputs, g.layers).total - compact.report().macs
        assert costs[index].item() == pytest.approx(saved)


def test_the_macs_criterion_removes_the_costly_groups_first() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    targets = torch.randint(0, 4, (8,))
    chosen = {}
    for weights in ({"magnitude": 1.0}, {"magnitude": 0.01, "macs": 1.0}):
        torch.manual_seed(0)
        g = geta.GETA(two_stage_cnn(), x)
        costs = group_macs(g.groups, g.layers, count_macs(g.model, g.example_inputs, g.layers))
        opt = g.qasso("sgd", lr=0.01, target_sparsity=0.25, total_steps=40, weight_bits=(4, 8),
                      saliency_weights=weights)
        for _ in range(40):
            opt.zero_grad()
            nn.functional.cross_entropy(g.model(x), targets).backward()
            opt.step()
        chosen[tuple(weights)] = costs[g.groups.zero_mask()]
    costly = costs.topk(len(chosen[("magnitude", "macs")])).values
    assert torch.equal(chosen[("magnitude", "macs")].sort().values, costly.sort().values)
    assert chosen[("magnitude", "macs")].sum() > chosen[("magnitude",)].sum()


def test_macs_weighs_nothing_by_default() -> None:
    assert check_weights(None)["macs"] == 0.0
    assert check_weights({"macs": 1.0, "cosine": 0.5}) == {**dict.fromkeys(check_weights(None), 0.0), "macs": 1.0,
                                                           "cosine": 0.5}
