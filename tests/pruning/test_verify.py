"""The search space verifies itself: families whose removal breaks the compact model are unprunable."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import geta
from geta.pruning.verify import families, output_difference


class PositionScale(nn.Module):
    """Scales channel i by i + 1, counting the channels it is given: with some removed, the later ones
    are scaled differently, silently."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)


def _scaled(zero_head: bool = False) -> nn.Module:
    head = nn.Linear(8, 3)
    if zero_head:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 8), nn.ReLU(), PositionScale(), head)


@pytest.mark.parametrize("zero_head", [False, True], ids=["plain", "zero-initialized head"])
def test_a_family_whose_removal_changes_the_output_is_unprunable(zero_head: bool) -> None:
    g = geta.GETA(_scaled(zero_head), torch.randn(5, 4), quantize="none")
    names = {s.name for group in g.groups for s in group.slices}
    assert names == {"0.weight", "0.bias", "2.weight"}, "only the first layer's channels stay"
    probed = [u for u in g.unprunable() if any(r.startswith("probed:") for r in u.reasons)]
    assert len(probed) == 1 and probed[0].count == 8
    assert "differs by" in probed[0].reasons[0]
    if zero_head:
        assert not g.model[5].weight.any(), "the probe fills zero tensors for itself only"


def test_the_probe_leaves_the_model_exactly_as_it_was() -> None:
    model = _scaled()
    g = geta.GETA(model, torch.randn(5, 4), quantize="weights+activations")
    before = {k: v.clone() for k, v in g.model.state_dict().items()}
    g.groups  # noqa: B018  (builds and probes the search space)
    assert all(torch.equal(before[k], v) for k, v in g.model.state_dict().items())


def test_families_are_the_groups_that_share_tensor_dimensions() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    g = geta.GETA(model, torch.randn(3, 4), quantize="none")
    family = families(g.groups)
    assert sorted(torch.bincount(torch.from_numpy(family)).tolist()) == [5, 6]


def test_construct_subnet_refuses_a_compact_model_that_computes_something_else(monkeypatch) -> None:
    g = geta.GETA(_scaled().eval(), torch.randn(5, 4), quantize="none")
    g.zero_random_groups(0.5)
    real = geta.api.construct_subnet

    def wrong(model, space, removed, **options):
        compact = real(model, space, removed, **options)
        compact[0].bias = nn.Parameter(compact[0].bias.detach() + 1.0)  # a new tensor: it may be shared
        return compact

    monkeypatch.setattr(geta.api, "construct_subnet", wrong)
    with pytest.raises(geta.GetaError, match=r"differs by .* the family of groups like 0\.weight"):
        g.construct_subnet()


def test_output_difference_is_relative_to_each_output_and_strict_on_structure() -> None:
    a = (torch.tensor([1.0, 2.0]), {"x": torch.zeros(2)})
    assert output_difference(a, (torch.tensor([1.0, 2.002]), {"x": torch.zeros(2)})) == pytest.approx(1e-3, rel=1e-3)
    assert output_difference(a, (torch.tensor([1.0, 2.0]), {"x": torch.ones(2)})) == float("inf")
    assert output_difference(a, (torch.tensor([1.0, 2.0]),)) == float("inf")
    assert output_difference(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0])) == 0.0
