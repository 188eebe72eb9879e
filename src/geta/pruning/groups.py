"""The pruning search space: groups resolved to the model's tensors (by object identity), in columns.

A model can have tens of thousands of groups (every FFN unit of BERT-base is one), so membership is
kept per tensor dimension as two index vectors (position, group) and every operation over groups
(zeroing, testing for zero, cutting) is a vectorized scatter or gather, not a Python loop. Single
groups are materialized on demand as :class:`Group` records for inspection.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from geta.errors import ConfigError, GetaError
from geta.graph.dependency import GroupTable
from geta.quant.prepare import public_name
from geta.quant.quantizer import quantizer_parameter_ids


@dataclass(frozen=True)
class Member:
    """One tensor dimension that groups cut: ``positions[k]`` along ``dim`` belongs to ``groups[k]``.
    ``name`` is the tensor's state-dict key (for display; the tensor itself is ``tensor``)."""

    name: str
    tensor: Tensor
    dim: int
    positions: Tensor
    groups: Tensor
    is_parameter: bool
    is_quantizer: bool

    @property
    def trainable(self) -> bool:
        """A model parameter other than a quantizer's: zero when its group is pruned."""
        return self.is_parameter and not self.is_quantizer


@dataclass(frozen=True)
class GroupSlice:
    """Positions ``indices`` along ``dim`` of ``tensor`` (the model's parameter or buffer, state-dict key ``name``)."""

    name: str
    tensor: Tensor
    dim: int
    indices: Tensor
    is_parameter: bool
    is_quantizer: bool


@dataclass(frozen=True)
class Group:
    """One minimally removable structure: every tensor slice that goes with it."""

    index: int
    slices: tuple[GroupSlice, ...]

    def describe(self) -> str:
        """Short summary: tensors and how many positions of each."""
        return ", ".join(f"{s.name}[dim {s.dim}] x{len(s.indices)}" for s in self.slices)


class SearchSpace(Sequence[Group]):
    """All groups of a model. Indexing gives a :class:`Group`; the methods act on many at once."""

    # The number of groups (= len(space)). It hides Sequence.count(value), which is of no use here
    # (every group occurs once), so the override is deliberate.
    count: int  # type: ignore[assignment]

    def __init__(self, model: nn.Module, table: GroupTable) -> None:
        tensors = {**dict(model.named_buffers(remove_duplicate=False)),
                   **dict(model.named_parameters(remove_duplicate=False))}
        parameters = {id(p) for p in model.parameters()}
        quantizer_tensors = quantizer_parameter_ids(model)
        self.count = table.count
        self.members: list[Member] = []
        for k, (name, dim) in enumerate(zip(table.names, table.dims)):
            rows = table.slot == k
            if not rows.any():
                continue
            tensor = tensors[name]
            self.members.append(Member(
                public_name(name), tensor, dim, torch.from_numpy(table.position[rows]),
                torch.from_numpy(table.group[rows]),
                id(tensor) in parameters, id(tensor) in quantizer_tensors,
            ))
        self._by_group: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._dims: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Group:  # type: ignore[override]
        if not -self.count <= index < self.count:
            raise IndexError(f"group {index} out of range ({self.count} groups)")
        index %= self.count
        member_of, position_of, offsets = self._rows_by_group()
        rows = slice(offsets[index], offsets[index + 1])
        slices = []
        for m in np.unique(member_of[rows]):
            member = self.members[m]
            indices = torch.from_numpy(np.sort(position_of[rows][member_of[rows] == m]))
            slices.append(GroupSlice(member.name, member.tensor, member.dim, indices, member.is_parameter,
                                     member.is_quantizer))
        return Group(index, tuple(slices))

    def zero_mask(self) -> Tensor:
        """Bool per group: every trainable slice is exactly zero."""
        magnitude = torch.zeros(self.count, dtype=torch.float64)
        for member in self.members:
            if member.trainable:
                magnitude.index_add_(0, member.groups, _per_position_max(member.tensor, member.dim)[member.positions])
        return magnitude == 0

    @torch.no_grad()
    def zero_(self, mask: Tensor) -> None:
        """Set every trainable slice of the groups selected by bool ``mask`` to zero.

        A broadcast ``masked_fill_`` rather than ``index_fill_``: along a weight's inner dim (a layer's
        input channels) the latter walks the tensor position by position, several times slower."""
        for member in self.members:
            if member.trainable:
                chosen = member.positions[mask[member.groups]]
                if len(chosen):
                    tensor = member.tensor
                    positions = torch.zeros(tensor.shape[member.dim], dtype=torch.bool, device=tensor.device)
                    positions[chosen.to(tensor.device)] = True
                    shape = [1] * tensor.dim()
                    shape[member.dim] = -1
                    tensor.masked_fill_(positions.view(shape), 0.0)

    def select(self, order: Tensor, count: int, round_to: int = 1) -> Tensor:
        """Bool mask of the first ``count`` groups of ``order`` (group indices, most wanted first) whose
        removal leaves every tensor dimension at least one position.

        A group that would take the last remaining position of some tensor dimension (every head
        of an attention block, every channel of a layer) is passed over for the next one in
        ``order``. Raises :class:`GetaError` when fewer than ``count`` groups can be taken.

        ``round_to`` > 1 keeps widths hardware-friendly: groups are taken in whole chunks (see
        :meth:`chunk_sizes`) so that every tensor dimension whose size is a multiple of ``round_to``
        keeps a multiple of ``round_to`` positions. A chunk completes when ``order`` has reached all
        of its groups and is taken if it still fits into ``count``; the mask then holds the most
        groups that whole chunks allow (possibly fewer than ``count``) and nothing is raised for that.
        """
        order = torch.as_tensor(order, dtype=torch.long).cpu()
        if not 0 <= count <= len(order):
            raise GetaError(f"cannot select {count} groups out of {len(order)} candidates")
        round_to = check_round_to(round_to)
        chosen = torch.zeros(self.count, dtype=torch.bool)
        if round_to == 1:
            chosen[order[:count]] = True
            if self._dims_left(chosen).min(initial=1) > 0:
                return chosen
            chosen.zero_()
            family, chunk = np.arange(self.count), np.ones(self.count, dtype=np.int64)
        else:
            family, chunk = self.chunk_sizes(round_to)
        member_of, position_of, offsets = self._rows_by_group()
        dim_of = self._dim_of_member()
        removed = self._removed_positions(chosen)
        pending: dict[int, list[int]] = defaultdict(list)
        taken = 0
        for group in order.tolist():
            if taken == count:
                break
            waiting = pending[family[group]]
            waiting.append(group)
            if len(waiting) < chunk[family[group]]:
                continue
            del pending[family[group]]
            if taken + len(waiting) > count:
                continue
            rows = np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in waiting])
            if self._take(removed, dim_of[member_of[rows]], position_of[rows]):
                chosen[waiting] = True
                taken += len(waiting)
        if taken < count and round_to == 1:
            raise GetaError(
                f"only {taken} of the requested {count} groups can be removed without emptying a tensor "
                "dimension (every channel of a layer, every head of a block); ask for fewer"
            )
        return chosen

    @staticmethod
    def _take(removed: list[np.ndarray], dims: np.ndarray, positions: np.ndarray) -> bool:
        """Mark ``positions`` of tensor dimensions ``dims`` removed, unless that empties one (then nothing)."""
        marked = []
        for d in np.unique(dims).tolist():
            mask = removed[d]
            new = np.unique(positions[dims == d])
            new = new[~mask[new]]
            mask[new] = True
            marked.append((mask, new))
            if mask.all():
                for undo, positions_set in marked:
                    undo[positions_set] = False
                return False
        return True

    def chunk_sizes(self, round_to: int) -> tuple[np.ndarray, np.ndarray]:
        """(family of each group, chunk size of each family) for widths in multiples of ``round_to``.

        A family is the groups that cut the same tensor dimensions by the same number of positions
        each (the channels of one layer, or of every layer tied to it by residual adds). Its chunk
        is the fewest groups whose removal takes a multiple of ``round_to`` positions from each of
        those dimensions whose size is a multiple of ``round_to`` (1 when there is none)."""
        member_of, _, offsets = self._rows_by_group()
        sizes = np.array([m.tensor.shape[m.dim] for m in self.members], dtype=np.int64)
        keys: dict[tuple, int] = {}
        family = np.empty(self.count, dtype=np.int64)
        chunk: list[int] = []
        for group in range(self.count):
            members, positions = np.unique(member_of[offsets[group]:offsets[group + 1]], return_counts=True)
            key = (tuple(members.tolist()), tuple(positions.tolist()))
            if key not in keys:
                keys[key] = len(chunk)
                aligned = sizes[members] % round_to == 0
                steps = [round_to // math.gcd(round_to, int(p)) for p in positions[aligned]]
                chunk.append(math.lcm(*steps) if steps else 1)
            family[group] = keys[key]
        return family, np.array(chunk, dtype=np.int64)

    def _dim_of_member(self) -> np.ndarray:
        """Per member: the number of its tensor dimension (members of one tensor and dim share it)."""
        if self._dims is None:
            keys: dict[tuple[int, int], int] = {}
            self._dims = np.array([keys.setdefault((id(m.tensor), m.dim), len(keys)) for m in self.members],
                                  dtype=np.int64)
        return self._dims

    def _removed_positions(self, removed: Tensor) -> list[np.ndarray]:
        """Per tensor dimension (see :meth:`_dim_of_member`): which of its positions the groups in
        ``removed`` take, over every member that cuts it."""
        dim_of = self._dim_of_member()
        masks = [np.zeros(0, dtype=bool)] * (int(dim_of.max()) + 1 if len(dim_of) else 0)
        for member, d in zip(self.members, dim_of.tolist()):
            if not len(masks[d]):
                masks[d] = np.zeros(member.tensor.shape[member.dim], dtype=bool)
            masks[d][member.positions[removed[member.groups]].numpy()] = True
        return masks

    def _dims_left(self, removed: Tensor) -> np.ndarray:
        """Per tensor dimension: positions it keeps once the groups in ``removed`` are gone."""
        return np.array([len(mask) - int(mask.sum()) for mask in self._removed_positions(removed)], dtype=np.int64)

    def _rows_by_group(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._by_group is None:
            member_of = np.concatenate([np.full(len(m.positions), k) for k, m in enumerate(self.members)])
            position_of = np.concatenate([m.positions.numpy() for m in self.members])
            group_of = np.concatenate([m.groups.numpy() for m in self.members])
            order = np.argsort(group_of, kind="stable")
            offsets = np.searchsorted(group_of[order], np.arange(self.count + 1))
            self._by_group = (member_of[order], position_of[order], offsets)
        return self._by_group


def check_round_to(round_to: object) -> int:
    """``round_to`` as a positive int, or ConfigError."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to={round_to!r} must be a positive integer (1: any width)")
    return round_to


def _per_position_max(tensor: Tensor, dim: int) -> Tensor:
    """max |tensor| over every dimension but ``dim`` (on the CPU)."""
    values = tensor.detach().abs().movedim(dim, 0)
    if not values.numel():
        return torch.zeros(values.shape[0], dtype=torch.float64)
    return values.reshape(values.shape[0], -1).amax(1).to("cpu", torch.float64)
