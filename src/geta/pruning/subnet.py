"""Construction of the compact model: zeroed structures physically removed from a copy."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import cast

import torch
from torch import Tensor, nn

from geta.errors import GetaError
from geta.pruning.groups import SearchSpace
from geta.pruning.heads import update_head_attributes
from geta.pruning.modules import update_widths


def construct_subnet(
    model: nn.Module, space: SearchSpace, removed: Tensor, *, share_unchanged: bool = False
) -> nn.Module:
    """A deep copy of ``model`` without the groups selected by bool ``removed``; ``model`` is untouched.

    Every tensor slice of every removed group is cut out (all aliases of a tied tensor follow), then
    each module's width attributes are updated from its new tensors. The cut tensors go into the copy
    directly (through ``deepcopy``'s memo), so a tensor that loses positions is copied once, cut.
    With ``share_unchanged`` the copy holds ``model``'s own parameters and buffers wherever they lose
    no position, rather than copies: for a compact model that is only run or measured and then dropped
    (a probe, a cost count), it spares copying them (a vocabulary's embedding, the norms).
    """
    cuts: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    tensors: dict[int, Tensor] = {}
    names: dict[int, str] = {}
    for member in space.members:
        cuts[id(member.tensor)][member.dim].update(member.positions[removed[member.groups]].tolist())
        tensors[id(member.tensor)] = member.tensor
        names[id(member.tensor)] = member.name
    memo: dict[int, object] = {}
    for key, dims in cuts.items():
        if not any(dims.values()):
            continue
        old = tensors[key]
        new = old.detach()
        for dim, positions in dims.items():
            keep = torch.ones(new.shape[dim], dtype=torch.bool)
            keep[list(positions)] = False
            if not keep.any():
                raise GetaError(
                    f"removing the zeroed groups would leave {names[key]} with no positions along dim {dim}; "
                    "keep at least one of the groups that span it"
                )
            new = new.index_select(dim, keep.nonzero().flatten().to(new.device))
        memo[key] = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
    if share_unchanged:
        for tensor in [*model.parameters(), *model.buffers()]:
            memo.setdefault(id(tensor), tensor)
    compact = copy.deepcopy(model, memo)
    for module in compact.modules():
        update_widths(module)

    def cut_rows(tensor: Tensor, dim: int) -> set[int]:
        return cuts[id(tensor)][dim] if id(tensor) in cuts else set()

    for module in model.modules():
        update_head_attributes(module, cast(nn.Module, memo[id(module)]), cut_rows)  # its copy (deepcopy's memo)
    return compact
