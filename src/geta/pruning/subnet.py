"""Construction of the compact model: zeroed structures physically removed from a copy."""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import Tensor, nn

from geta.errors import GetaError
from geta.pruning.groups import SearchSpace
from geta.pruning.modules import update_widths


def construct_subnet(model: nn.Module, space: SearchSpace, removed: Tensor) -> nn.Module:
    """A deep copy of ``model`` without the groups selected by bool ``removed``; ``model`` is untouched.

    Every tensor slice of every removed group is cut out (all aliases of a tied tensor follow), then
    each module's width attributes are updated from its new tensors.
    """
    cuts: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    names: dict[int, str] = {}
    for member in space.members:
        cuts[id(member.tensor)][member.dim].update(member.positions[removed[member.groups]].tolist())
        names[id(member.tensor)] = member.name
    copies: dict[int, object] = {}
    compact = copy.deepcopy(model, copies)  # copies[id(tensor)] is the copy of each of model's tensors
    holders = _holders(compact)
    for key, dims in cuts.items():
        old = copies[key]
        new = old.detach()
        for dim, positions in dims.items():
            keep = [i for i in range(new.shape[dim]) if i not in positions]
            if not keep:
                raise GetaError(
                    f"removing the zeroed groups would leave {names[key]} with no positions along dim {dim}; "
                    "keep at least one of the groups that span it"
                )
            new = new.index_select(dim, torch.tensor(keep, dtype=torch.long, device=new.device))
        _replace(holders[id(old)], old, new.clone())
    for module in compact.modules():
        update_widths(module)
    return compact


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (module, attribute) that holds each tensor, keyed by tensor identity."""
    found: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is not None:
                found[id(tensor)].append((module, attr))
    return found


def _replace(holders: list[tuple[nn.Module, str]], old: Tensor, new: Tensor) -> None:
    replacement = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
    for module, attr in holders:
        if attr in module._parameters:
            module._parameters[attr] = replacement
        else:
            module._buffers[attr] = replacement
