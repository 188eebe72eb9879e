"""Group saliency: how important each group is, from its weights x and their gradient g.

Five criteria of the paper, each computed over every trainable slice of a group (vectorized per
tensor dimension, see ``pruning.groups``), each divided by its largest magnitude over the candidate
groups so that they are comparable, then mixed with weights and ranked globally:

    magnitude            ||x||
    avg_magnitude        ||x|| / (number of elements)
    cosine               -cos(x, g): a gradient step that shrinks x marks the group redundant
    taylor_first_order   |<x, g>|               (loss change when x is removed, first order)
    taylor_second_order  sum((x * g)^2) / 2     (second order, Fisher approximation)

and one of geta's own, off by default:

    macs                 -(MACs per example that removing the group saves)

The paper's target is a count of groups, and its criteria see no cost: a group of a wide, late,
low-resolution layer saves a fraction of the MACs of one in an early layer. Weighing ``macs`` in
removes costly groups first, so that the same count of groups cuts more MACs (and BOPs).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from geta.errors import ConfigError
from geta.metrics.cost import MacCount
from geta.optim.equations import cosine
from geta.pruning.groups import SearchSpace
from geta.quant.prepare import QuantizableLayer

PAPER_CRITERIA = ("magnitude", "avg_magnitude", "cosine", "taylor_first_order", "taylor_second_order")
CRITERIA = (*PAPER_CRITERIA, "macs")
DEFAULT_WEIGHTS: dict[str, float] = {**dict.fromkeys(PAPER_CRITERIA, 0.2), "macs": 0.0}


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Validate user criterion weights (missing criteria weigh 0); None gives the defaults (the paper's
    five at 0.2 each, ``macs`` at 0)."""
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    unknown = set(weights) - set(CRITERIA)
    if unknown:
        raise ConfigError(f"unknown saliency criteria {sorted(unknown)}; choose from {', '.join(CRITERIA)}")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ConfigError(f"saliency weights {dict(weights)} must be non-negative with at least one positive")
    return {name: float(weights.get(name, 0.0)) for name in CRITERIA}


@torch.no_grad()
def group_statistics(space: SearchSpace) -> dict[str, Tensor]:
    """Per group (float64): sum x^2, sum g^2, sum x*g, sum (x*g)^2 and element count."""
    stats = {key: torch.zeros(space.count, dtype=torch.float64) for key in ("xx", "gg", "xg", "xg2", "n")}
    for member in space.members:
        if not member.trainable:
            continue
        x = member.tensor.detach()
        # a choice forced at a skipped step (QASSO) may meet non-finite gradients: they count as zero
        g = member.tensor.grad.nan_to_num(0.0, 0.0, 0.0) if member.tensor.grad is not None else torch.zeros_like(x)
        per_position = {
            "xx": x * x, "gg": g * g, "xg": x * g, "xg2": (x * g) ** 2, "n": torch.ones_like(x),
        }
        for key, values in per_position.items():
            summed = values.movedim(member.dim, 0).reshape(x.shape[member.dim], -1).sum(1).to("cpu", torch.float64)
            stats[key].index_add_(0, member.groups, summed[member.positions])
    return stats


def group_macs(space: SearchSpace, layers: list[QuantizableLayer], macs: MacCount) -> Tensor:
    """Per group (float64), the MACs per example that removing it saves: for every layer weight the group
    cuts along a dimension of size n, that layer's MACs / n (exact for convolutions and linear layers,
    whose MACs are proportional to each weight dimension)."""
    layer_of = {id(weight): layer.name for layer in layers for weight in layer.weights()}
    costs = torch.zeros(space.count, dtype=torch.float64)
    for member in space.members:
        name = layer_of.get(id(member.tensor))
        if name is None or not member.trainable:
            continue
        per_position = macs.per_layer.get(name, 0.0) / member.tensor.shape[member.dim]
        costs.index_add_(0, member.groups, torch.full((len(member.groups),), per_position, dtype=torch.float64))
    return costs


def saliency(
    space: SearchSpace, weights: Mapping[str, float], candidates: Tensor, costs: Tensor | None = None
) -> Tensor:
    """Importance score of every group (higher is more important); only ``candidates`` (bool) are
    normalized and scored, the others get +inf. ``costs`` (:func:`group_macs`) is needed when ``macs``
    weighs in."""
    if weights.get("macs", 0.0) and costs is None:
        raise ValueError("the macs criterion needs the groups' costs (group_macs)")
    stats = group_statistics(space)
    norm_x = stats["xx"].sqrt()
    criteria = {
        "magnitude": norm_x,
        "avg_magnitude": norm_x / stats["n"].clamp_min(1),
        "cosine": -cosine(stats["xg"], norm_x, stats["gg"].sqrt()),
        "taylor_first_order": stats["xg"].abs(),
        "taylor_second_order": stats["xg2"] / 2,
        "macs": -costs if costs is not None else torch.zeros(space.count, dtype=torch.float64),
    }
    score = torch.zeros(space.count, dtype=torch.float64)
    for name, values in criteria.items():
        if weights.get(name, 0.0):
            scale = values[candidates].abs().max() if candidates.any() else torch.tensor(0.0, dtype=torch.float64)
            score += weights[name] * (values / scale if scale > 0 else torch.zeros_like(values))
    return torch.where(candidates, score, torch.full_like(score, float("inf")))

