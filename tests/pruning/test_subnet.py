"""construct_subnet: a copy without the removed groups, sharing the untouched tensors only when asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.pruning.subnet import construct_subnet


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 2)).eval()


@pytest.mark.parametrize("share", [False, True], ids=["copied", "shared"])
def test_unchanged_tensors_are_shared_only_when_asked(share: bool) -> None:
    g = geta.GETA(_model(), torch.randn(3, 4), quantize="none")
    removed = torch.zeros(len(g.groups), dtype=torch.bool)
    removed[0] = True
    before = {k: v.clone() for k, v in g.model.state_dict().items()}
    compact = construct_subnet(g.model, g.groups, removed, share_unchanged=share)
    cut = {id(s.tensor) for s in g.groups[0].slices}
    for (name, original), (_, new) in zip(g.model.named_parameters(), compact.named_parameters(), strict=True):
        if id(original) in cut:
            assert new is not original and new.shape != original.shape, name
        else:
            assert (new is original) == share, name
    assert all(torch.equal(before[k], v) for k, v in g.model.state_dict().items())
    g.groups.zero_(removed)
    with torch.no_grad():
        torch.testing.assert_close(compact(torch.ones(2, 4)), g.model(torch.ones(2, 4)))
