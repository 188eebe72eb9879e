"""Dependency analysis: one test per graph pattern the zoo does not already pin down."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.errors import ConfigError


class UnknownOp(nn.Module):
    """A linear layer whose output goes through an op without a rule (cumulative max)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.second = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        h = torch.cummax(self.second(h), dim=0).values
        return self.head(h)


def test_unknown_op_makes_what_it_touches_unprunable_with_the_reason() -> None:
    g = geta.GETA(UnknownOp(), torch.randn(3, 4), quantize="none")
    assert len(g.groups) == 6  # the first layer's units are still removable
    reasons = {reason for structure in g.unprunable() for reason in structure.reasons}
    assert any("cummax" in reason and "not understood" in reason for reason in reasons)
    assert {"touches a model input", "touches a model output"} <= reasons


def test_buffers_alone_and_broadcast_dims_are_not_groups() -> None:
    class WithBuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("unused", torch.arange(3))
            self.token = nn.Parameter(torch.zeros(1, 1, 4))
            self.linear = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
            return self.head(torch.relu(self.linear(h)))

    g = geta.GETA(WithBuffer(), torch.randn(2, 5, 4), quantize="none")
    assert len(g.groups) == 4 and g.group_sparsity() == 0.0
    assert all(not any(s.name in ("unused", "token") for s in group.slices) for group in g.groups)


def test_groups_never_empty_a_tensor() -> None:
    g = geta.GETA(nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 2)), torch.randn(2, 4), quantize="none")
    assert len(g.groups) == 0
    assert any("every position" in r for s in g.unprunable() for r in s.reasons)


def test_zero_random_groups_checks_its_fraction() -> None:
    g = geta.GETA(UnknownOp(), torch.randn(3, 4), quantize="none")
    with pytest.raises(ConfigError, match="fraction"):
        g.zero_random_groups(1.5)
    assert g.zero_random_groups(0.5, seed=1) and g.group_sparsity() == 0.5


def test_subnet_refuses_to_empty_a_tensor() -> None:
    from geta.errors import GetaError

    g = geta.GETA(UnknownOp(), torch.randn(3, 4), quantize="none")
    with pytest.raises(GetaError, match="emptying a tensor"):
        g.zero_random_groups(1.0)
    g.groups.zero_(torch.ones(len(g.groups), dtype=torch.bool))
    with pytest.raises(GetaError, match="no positions"):
        g.construct_subnet()


def test_selection_passes_over_a_group_that_would_empty_a_layer() -> None:
    class TwoBlocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = nn.Linear(4, 2)
            self.large = nn.Linear(4, 6)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([torch.relu(self.small(x)), torch.relu(self.large(x))], dim=-1))

    g = geta.GETA(TwoBlocks(), torch.randn(3, 4), quantize="none")
    groups = g.groups
    assert len(groups) == 8
    small = [i for i in range(8) if any(s.tensor is g.model.small.weight for s in groups[i].slices)]
    order = torch.tensor(small + [i for i in range(8) if i not in small])
    chosen = groups.select(order, 3)
    assert chosen.sum() == 3 and chosen[small].sum() == 1  # the second unit of `small` is passed over
    groups.zero_(chosen)
    assert g.construct_subnet().small.out_features == 1


def test_grouped_convolution_channels_go_by_offset() -> None:
    """Channel j of every group is one structure, so the groups stay equal (transposed convolutions too)."""
    from tests.zoo import GroupedNet

    g = geta.GETA(GroupedNet().eval(), torch.randn(2, 3, 8, 8), quantize="none")
    widen, up_bias = g.model.widen[0].weight, g.model.up.bias

    def positions(tensor: torch.Tensor) -> list[list[int]]:
        return sorted(sorted(s.indices.tolist()) for group in g.groups for s in group.slices
                      if s.tensor is tensor and s.dim == 0)

    assert positions(widen) == [[j, j + 6, j + 12, j + 18] for j in range(6)]
    assert positions(up_bias) == [[j, j + 4] for j in range(4)]
    def picked(s) -> bool:  # widen's channel 0 of every group, up's channel 3 of every group
        return (s.tensor is widen and s.dim == 0 and 0 in s.indices) or (s.tensor is up_bias and 3 in s.indices)

    chosen = torch.tensor([any(picked(s) for s in group.slices) for group in g.groups])
    g.groups.zero_(chosen)
    compact = g.construct_subnet().eval()
    assert (compact.widen[0].groups, compact.widen[0].out_channels, compact.expand[0].in_channels) == (4, 20, 20)
    assert (compact.up.groups, compact.up.out_channels, compact.head.in_features) == (2, 6, 6)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), g.model.eval()(x))


def test_a_rule_that_fails_makes_its_op_unprunable_instead_of_raising(monkeypatch) -> None:
    from geta.graph import rules

    def broken(g, node):
        raise TypeError("'Node' object is not iterable")

    monkeypatch.setitem(rules.RULES, torch.ops.aten.cat, broken)

    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 2)
            self.c, self.d = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.a(x), self.b(x)], 1)) + self.d(torch.relu(self.c(x)))

    g = geta.GETA(Concat(), torch.randn(3, 4), quantize="none")
    reasons = {r for u in g.unprunable() for r in u.reasons}
    assert any("the rule for aten.cat.default failed" in r and "not iterable" in r for r in reasons), reasons
    assert {s.name for group in g.groups for s in group.slices} == {"c.weight", "c.bias", "d.weight"}


def test_gather_keeps_the_dims_it_does_not_gather() -> None:
    class Router(nn.Module):
        """Gathers the top-2 of 4 token positions: the hidden dim is read position by position."""

        def __init__(self) -> None:
            super().__init__()
            self.up, self.score, self.down = nn.Linear(6, 8), nn.Linear(6, 1), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(self.up(x))
            top = self.score(x).squeeze(-1).topk(2, dim=1).indices
            picked = hidden.gather(1, top.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            return self.down(picked).sum(1)

    g = geta.GETA(Router(), torch.randn(3, 4, 6), quantize="none")
    assert len(g.groups) == 8, [u.reasons for u in g.unprunable()]
    g.zero_random_groups(0.5)
    x = torch.randn(3, 4, 6)
    with torch.no_grad():
        assert torch.allclose(g.construct_subnet()(x), g.model(x), atol=1e-6)


@pytest.mark.parametrize("quantize", ["none", "weights"])
def test_tensors_the_forward_pass_never_reads_are_no_structures(quantize: str) -> None:
    class WithAuxiliary(nn.Module):
        """An auxiliary head used only in training, as Inception's: the eval graph never reads it."""

        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 2)
            self.aux = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
            nn.init.zeros_(self.aux[0].bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.body(x))
            return self.head(h) + (self.aux(h) if self.training else 0)

    g = geta.GETA(WithAuxiliary(), torch.randn(3, 4), quantize=quantize, per_channel=True)
    assert {s.name.split(".")[0] for group in g.groups for s in group.slices} == {"body", "head"}
    assert len(g.groups) == 6
    unused = [u for u in g.unprunable() if "not used by the forward pass on the example inputs" in u.reasons]
    assert {s.name for u in unused for s in u.slices} >= {"aux.0.weight", "aux.0.bias", "aux.2.weight"}
