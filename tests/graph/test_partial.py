"""A model torch.export cannot trace whole: groups inside the submodules that trace alone, one test per
pattern, and the compact model always equal to the original."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import geta


def _untraceable_order(h: torch.Tensor) -> torch.Tensor:
    """A row order computed in numpy: export cannot trace through ``.numpy()``, eager runs it."""
    return torch.from_numpy(np.argsort(h.detach().sum(-1).numpy(), kind="stable"))


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Routed(nn.Module):
    """The root's forward routes rows in numpy between two MLPs that trace alone."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _mlp(8, 16, 8)
        self.head = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.head(h[_untraceable_order(h)])


class Nested(nn.Module):
    """The untraceable code sits in a child; its two MLPs trace alone."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = _mlp(8, 10, 8), _mlp(8, 6, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.first(x)
            return self.second(h[_untraceable_order(h)]) + h

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([self.Block(), self.Block()])  # a container the forward never calls
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class ReadsAPartsWeight(Routed):
    """The untraceable root also reads a weight inside a traced part: no graph shows that use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        scale = self.encoder[0].weight.abs().mean()  # a mean over its hidden units: their count matters
        return self.head(h[_untraceable_order(h)] * scale)


class TiedAcrossParts(nn.Module):
    """Two parts hold the same weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = _mlp(8, 16, 8), _mlp(8, 16, 3)
        self.decoder[0].weight = self.encoder[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.decoder(h[_untraceable_order(h)])


def _geta(model: nn.Module, x: torch.Tensor, **kwargs: object) -> geta.GETA:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning that input quantizers are all signed
        return geta.GETA(model, x, **kwargs)


def _compact_equals(g: geta.GETA, x: torch.Tensor, fraction: float = 0.5) -> nn.Module:
    g.zero_random_groups(fraction, seed=1)
    g.model.eval()
    with torch.no_grad():
        expected = g.model(x)
        compact = g.construct_subnet().eval()
        torch.testing.assert_close(compact(x), expected, rtol=1e-5, atol=1e-5)
    return compact


@pytest.mark.parametrize("quantize", ["none", "weights", "weights+activations"])
def test_groups_are_found_inside_the_parts_that_trace_alone(quantize: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    g = _geta(Routed(), x, quantize=quantize)
    assert len(g.groups) == 16 + 12  # the hidden units of both MLPs; their boundaries stay
    whole = g.unprunable()[0].reasons[0]
    assert whole.startswith("the model as a whole: torch.export could not trace the model")
    assert "2 submodules that trace alone (encoder, head)" in whole
    assert any("an output of encoder (traced apart" in r for u in g.unprunable() for r in u.reasons)
    compact = _compact_equals(g, x)
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in g.model.parameters())


def test_an_untraceable_child_is_searched_inside_and_a_never_called_container_is_walked() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    g = _geta(Nested(), x, quantize="none")
    assert len(g.groups) == 2 * (10 + 6)
    assert "(blocks.0.first, blocks.0.second, blocks.1.first, blocks.1.second)" in g.unprunable()[0].reasons[0]
    _compact_equals(g, x)


def test_a_use_no_graph_shows_is_caught_by_the_probe() -> None:
    """The root reads encoder.0's weight in code no graph shows; the probe finds that removing encoder's
    hidden units changes the output, so only head's are offered, and the compact model is exact."""
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    g = _geta(ReadsAPartsWeight(), x, quantize="none")
    assert len(g.groups) == 12
    assert all(not any(s.name.startswith("encoder.") for s in group.slices) for group in g.groups)
    _compact_equals(g, x)


def test_a_tensor_held_by_two_parts_takes_its_groups_out() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    g = _geta(TiedAcrossParts(), x, quantize="none")
    tied = [u for u in g.unprunable() if any("held by two submodules traced apart" in r for r in u.reasons)]
    # both MLPs' hidden units cut the one encoder.0.weight (dim 0): a cut in one part changes the other
    assert len(tied) == 1 and tied[0].count == 32 and len(g.groups) == 0


def test_a_model_whose_parts_do_not_trace_either_is_unprunable_with_the_reason() -> None:
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(h[_untraceable_order(h)])

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.opaque = Opaque()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.opaque(x)

    g = _geta(Outer(), torch.randn(3, 4), quantize="none")
    reasons = g.unprunable()[0].reasons[0]
    assert len(g.groups) == 0
    assert "inside the 0 submodules that trace alone; not traced, so nothing in them is offered: opaque" in reasons
