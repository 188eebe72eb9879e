"""Groups: minimally removable structures resolved to the model's tensors (by object identity)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from geta.graph.dependency import Structure
from geta.quant.quantizer import Quantizer


@dataclass(frozen=True)
class GroupSlice:
    """Positions ``indices`` along ``dim`` of ``tensor`` (the model's parameter or buffer ``name``)."""

    name: str
    tensor: Tensor
    dim: int
    indices: Tensor
    is_parameter: bool
    is_quantizer: bool

    def values(self) -> Tensor:
        """The sliced values (a copy)."""
        return self.tensor.detach().index_select(self.dim, self.indices.to(self.tensor.device))


@dataclass(frozen=True)
class Group:
    """One minimally removable structure: every tensor slice that goes with it."""

    index: int
    slices: tuple[GroupSlice, ...]

    def trainable_slices(self) -> tuple[GroupSlice, ...]:
        """Slices of the model's own parameters (weights, biases, norm scales), quantizers excluded:
        the values that are zero when the structure is pruned."""
        return tuple(s for s in self.slices if s.is_parameter and not s.is_quantizer)

    def is_zero(self) -> bool:
        """Whether every trainable slice is exactly zero."""
        return all(bool((s.values() == 0).all()) for s in self.trainable_slices())

    @torch.no_grad()
    def zero_(self) -> None:
        """Set every trainable slice to zero."""
        for s in self.trainable_slices():
            s.tensor.index_fill_(s.dim, s.indices.to(s.tensor.device), 0.0)

    def describe(self) -> str:
        """Short summary: tensors and how many positions of each."""
        return ", ".join(f"{s.name}[{s.dim}]x{len(s.indices)}" for s in self.slices)


def resolve(model: nn.Module, structures: list[Structure]) -> list[Group]:
    """Attach the model's tensors to each structure's slices."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    quantizer_tensors = {id(t) for m in model.modules() if isinstance(m, Quantizer) for t in m.parameters()}
    groups = []
    for index, structure in enumerate(structures):
        slices = []
        for s in structure.slices:
            tensor = parameters.get(s.name)
            is_parameter = tensor is not None
            if tensor is None:
                tensor = buffers[s.name]
            slices.append(GroupSlice(s.name, tensor, s.dim, torch.tensor(s.indices, dtype=torch.long),
                                     is_parameter, id(tensor) in quantizer_tensors))
        groups.append(Group(index, tuple(slices)))
    return groups
