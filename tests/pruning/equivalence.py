"""The equivalence invariant: removing zeroed groups does not change what the model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta


def _tensors_removed(g: geta.GETA, zeroed: list) -> int:
    masks: dict[str, torch.Tensor] = {}
    for group in zeroed:
        for s in group.slices:
            if not s.is_parameter:
                continue
            mask = masks.setdefault(s.name, torch.zeros(s.tensor.shape, dtype=torch.bool))
            index = [slice(None)] * s.tensor.dim()
            index[s.dim] = s.indices
            mask[tuple(index)] = True
    return sum(int(mask.sum()) for mask in masks.values())


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _run(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs) if isinstance(inputs, tuple) else model(**inputs)
    return out if isinstance(out, torch.Tensor) else next(v for v in out.values() if isinstance(v, torch.Tensor))


def check_equivalence(model: nn.Module, inputs, other_inputs, quantize: str, fraction: float = 0.3, seed: int = 0):
    """Zero a random ``fraction`` of groups, construct the subnet, compare outputs and sizes."""
    g = geta.GETA(model, inputs, quantize=quantize)
    assert g.groups, f"no groups found; unprunable: {[(u.count, u.reasons) for u in g.unprunable()]}"
    zeroed = g.zero_random_groups(fraction, seed=seed)
    assert zeroed and g.group_sparsity() == pytest.approx(len(zeroed) / len(g.groups))
    g.model.eval()
    expected = _run(g.model, inputs)
    compact = g.construct_subnet().eval()
    actual = _run(compact, inputs)
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= 1e-4 * scale, "compact model computes something else"
    assert _parameters(compact) == _parameters(g.model) - _tensors_removed(g, zeroed)
    _run(compact, other_inputs)
    _run(g.model, inputs)  # the training model still runs unchanged
    return g, compact
