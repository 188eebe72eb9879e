"""Quantization-aware dependency analysis (the paper's Algorithm 1) over a ``torch.export`` graph.

1. Quantizer branches are found by module identity (``nn_module_stack`` entries that resolve to a
   :class:`~geta.quant.quantizer.Quantizer`; capture traces each call as one node, see
   ``capture.quantizers_as_calls``) and collapsed: a branch's output takes the positions of the
   tensor it quantizes (the layer's weight for an attached branch, the activation for an inserted
   one), and a per-channel quantizer's parameters are tied to that tensor's channel axis.
2. Every other op ties dimensions through its rule (``rules.py``).
3. Connected atoms form classes; a class that owns parameter positions is a structure: removable
   (a group) unless it touches a model input or output or an op that forbids it, with the reason.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from geta.errors import error_summary
from geta.graph.atoms import INTERNAL, SINGLETON, Atoms, Slot, Split
from geta.graph.capture import module_path
from geta.graph.rules import rule_for
from geta.quant.prepare import public_name
from geta.quant.quantizer import Quantizer

MODEL_INPUT = "touches a model input"
MODEL_OUTPUT = "touches a model output"
UNUSED = "not used by the forward pass on the example inputs"


@dataclass(frozen=True)
class TensorSlice:
    """Positions ``indices`` along ``dim`` of the model's parameter or buffer ``name`` (its state-dict key)."""

    name: str
    dim: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class UnprunableStructure:
    """Structures left out of the search space: the tensor slices they span, why they cannot be
    removed, and how many structures of the same tensors and reasons this record stands for."""

    slices: tuple[TensorSlice, ...]
    reasons: tuple[str, ...] = ()
    count: int = 1

    def describe(self) -> str:
        """Short human-readable summary: the parameters and how many positions of each."""
        return ", ".join(f"{s.name}[dim {s.dim}: {len(s.indices)}]" for s in self.slices[:4]) + (
            f", ... ({len(self.slices)} tensors)" if len(self.slices) > 4 else ""
        )


@dataclass
class _ParamSlot:
    name: str
    dim: int
    slot: Slot
    is_parameter: bool


# The label of a node: the slots of each dim of its tensor value, or per output of a multi-output op.
Label = list[Slot] | tuple[list[Slot] | None, ...]


@dataclass
class DependencyAnalysis:
    """Runs the rules over a captured program and extracts the removable structures."""

    program: torch.export.ExportedProgram
    model: nn.Module
    atoms: Atoms = field(default_factory=Atoms)
    labels: dict[fx.Node, Label] = field(default_factory=dict)
    params: list[_ParamSlot] = field(default_factory=list)
    state_names: dict[str, str] = field(default_factory=dict)
    weight_nodes: set[fx.Node] = field(default_factory=set)
    live: set[fx.Node] = field(default_factory=set)
    state_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    tensor_slots: dict[int, list[Slot]] = field(default_factory=dict)
    parameter_names: dict[int, str] = field(default_factory=dict)

    def run(self) -> tuple[GroupTable, list[UnprunableStructure]]:
        """(removable structures as a table, unprunable structures with their reasons)."""
        signature = self.program.graph_signature
        self.state_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        self.state_names.update(signature.inputs_to_lifted_tensor_constants)
        parameter_placeholders = set(signature.inputs_to_parameters)
        self.state_tensors = {**dict(self.model.named_buffers(remove_duplicate=False)),
                              **dict(self.model.named_parameters(remove_duplicate=False))}
        self.parameter_names = {id(p): name for name, p in self.model.named_parameters()}
        branches = _quantizer_branches(self.program.graph, self.model)
        self.live = _live_nodes(self.program.graph)
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, node.name in parameter_placeholders)
            elif node.op == "output":
                for value in _flatten(node.args):
                    if isinstance(value, fx.Node):
                        self.flag_all(value, MODEL_OUTPUT)
            elif node.op == "call_function":
                try:
                    if node in branches.members:
                        self._branch_node(node, branches)
                    elif (fn := rule_for(node)) is None:
                        self.unknown(node, f"op {node.target} not understood")
                    else:
                        fn(self, node)
                except Exception as error:  # a call the rule did not foresee: unprunable, never a crash
                    self.labels.pop(node, None)
                    self.unknown(node, f"the rule for {node.target} failed at {node.name} ({error_summary(error)})")
                if node in branches.members:
                    continue
                if node not in self.labels and self._tensor_value(node):
                    self.unknown(node, f"rule for {node.target} gave no result")
                if self.tensor_args(node) and all(self.weight_like(a) for a in self.tensor_args(node)):
                    self.weight_nodes.add(node)
            else:
                self.unknown(node, f"{node.op} nodes are not understood")
        self._flag_unused_state()
        return self._structures()

    def _flag_unused_state(self) -> None:
        """Tensors no live node reads (a vision tower a text-only input never runs) are no structures."""
        read: dict[int, bool] = {}
        for node in self.program.graph.nodes:
            if node.op == "placeholder" and node.name in self.state_names:
                key = id(self.state_tensors.get(self.state_names[node.name]))
                read[key] = read.get(key, False) or any(user in self.live for user in node.users)
        for key, slots in self.tensor_slots.items():
            if read.get(key) is False:  # lifted into the graph and read by nothing live
                for slot in slots:
                    self.flag(slot, UNUSED)

    # --- helpers used by the rules ---------------------------------------------------------------

    def shape(self, node: object) -> tuple[int, ...]:
        value = node.meta.get("val") if isinstance(node, fx.Node) else None
        return tuple(int(s) for s in value.shape) if isinstance(value, torch.Tensor) else ()

    def slots(self, node: object) -> list[Slot] | None:
        if not isinstance(node, fx.Node):
            return None
        value = self.labels.get(node)
        return value if isinstance(value, list) else None

    def slots_of(self, node: object) -> list[Slot]:
        """The slots of a tensor argument that must have them (a TypeError otherwise: the rule fails)."""
        slots = self.slots(node)
        if slots is None:
            raise TypeError(f"{node} has no slots (not a tracked tensor)")
        return slots

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in _flatten((node.args, tuple(node.kwargs.values())))
                if isinstance(a, fx.Node) and self._tensor_value(a)]

    def set(self, node: fx.Node, slots: list[Slot]) -> None:
        self.labels[node] = list(slots)

    def set_tuple(self, node: fx.Node, outputs: Sequence[list[Slot] | None]) -> None:
        self.labels[node] = tuple(outputs)

    def fresh(self, size: int, *, neutral: bool = False, reason: str | None = None) -> Slot:
        return self.atoms.slot(size, neutral=neutral, reason=reason)

    def flag(self, slot: Slot, reason: str) -> None:
        self.atoms.flag(slot, reason)

    def balance(self, slot: Slot, sizes: list[int], reason: str) -> None:
        self.atoms.balance(slot, tuple(sizes), reason)

    def take_apart(self, slot: Slot) -> None:
        self.atoms.take_apart(slot)

    def used(self, node: fx.Node) -> bool:
        """Whether the model's outputs depend on ``node``'s value."""
        return node in self.live

    def flag_all(self, node: object, reason: str) -> None:
        value = self.labels.get(node) if isinstance(node, fx.Node) else None
        outputs: Sequence[list[Slot] | None] = value if isinstance(value, tuple) else [value]
        for slots in outputs:
            for slot in slots or []:
                self.flag(slot, reason)

    def owner(self, node: fx.Node) -> nn.Module | None:
        """The innermost module whose forward produced ``node`` (None at the top level)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return None
        path = module_path(list(stack.values())[-1])
        return self.model.get_submodule(path) if path else self.model

    def weight_like(self, node: object) -> bool:
        return isinstance(node, fx.Node) and node in self.weight_nodes

    def unknown(self, node: fx.Node, reason: str) -> None:
        """Conservative fallback: every dim of every input and output becomes unprunable."""
        for arg in self.tensor_args(node):
            self.flag_all(arg, reason)
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            if _concrete(value):
                self.set(node, [self.fresh(int(s), reason=reason) for s in value.shape])
        elif isinstance(value, (tuple, list)):
            self.set_tuple(node, [
                [self.fresh(int(s), reason=reason) for s in v.shape] if isinstance(v, torch.Tensor) and _concrete(v)
                else None for v in value
            ])

    def tie(self, a: Slot, b: Slot, where: fx.Node) -> None:
        """Positions of ``a`` and ``b`` are the same structures."""
        if a is b:
            return
        layers_a, layers_b = self.atoms.structural(a), self.atoms.structural(b)
        if not layers_a or not layers_b:
            # a fresh broadcast slot (a tensor the forward makes, sized like a structure: a bias of
            # zeros per head) takes the layout it meets, so that where the tensor is used again ties too
            for fresh, other, layers in ((a, b, layers_b), (b, a, layers_a)):
                if fresh.fresh and layers and not self.atoms.structural(fresh) and fresh.size == other.size:
                    fresh.layers, fresh.fresh = list(other.layers), False
            return
        if len(layers_a) == len(layers_b) == 1:
            self.atoms.join(layers_a[0], layers_b[0])
            a.fresh = b.fresh = False
            return
        if a.fresh and len(layers_a) == 1:
            a.layers, a.fresh = list(b.layers), False
            return
        if b.fresh and len(layers_b) == 1:
            b.layers, b.fresh = list(a.layers), False
            return
        if not self.atoms.join_slots(a, b):  # merged dims of different layouts: no sound way to pair their layers
            reason = f"incompatible channel layouts meet at {where.name}"
            self.flag(a, reason)
            self.flag(b, reason)

    def tie_repeated(self, short: Slot, long: Slot, repeats: int, where: fx.Node) -> None:
        """Position i of ``short`` is positions i*repeats .. i*repeats+repeats-1 of ``long`` (GQA)."""
        expanded = Slot([np.repeat(layer, repeats) for layer in short.layers], fresh=False)
        self.tie(expanded, long, where)

    def sliced(self, slot: Slot, index: slice) -> Slot:
        return Slot([layer[index] for layer in slot.layers], fresh=False)

    def padded(self, slot: Slot, left: int, right: int) -> Slot:
        size = slot.size + left + right
        layers = []
        for layer in slot.layers:
            start = layer[max(0, -left) : len(layer) - max(0, -right)]
            layers.append(np.concatenate([self.atoms.new(max(left, 0), neutral=True), start,
                                          self.atoms.new(max(right, 0), neutral=True)]))
        return Slot(layers, fresh=False) if layers else self.fresh(size, neutral=True)

    def concatenated(self, slots: list[Slot]) -> Slot:
        structural = [self.atoms.structural(s) for s in slots]
        depth = max(len(layers) for layers in structural)
        layers = []
        for k in range(depth):
            parts = [ls[k] if k < len(ls) else self.atoms.new(s.size, neutral=k > 0 or not ls)
                     for s, ls in zip(slots, structural)]
            layers.append(np.concatenate(parts))
        return Slot(layers, fresh=False)

    def reshaped(self, slots: list[Slot], in_shape: tuple, out_shape: tuple, node: fx.Node,
                 fixed: str | None = None) -> list[Slot]:
        """Slots of a reshape: dims grouped into blocks of equal size; inside a block each layer of
        atoms goes to the output dim it varies along; a layer varying along several is a deferred
        split (``Atoms.defer_split``): whole slices along one of them form its structures, the other
        dims are unprunable. With a ``fixed`` reason, dims the reshape splits or merges are unprunable."""
        out: list[Slot | None] = [None] * len(out_shape)
        in_dims = [i for i, s in enumerate(in_shape) if s != 1]
        out_dims = [j for j, s in enumerate(out_shape) if s != 1]
        i = j = 0
        while i < len(in_dims) and j < len(out_dims):
            block_in, block_out = [in_dims[i]], [out_dims[j]]
            p_in, p_out = in_shape[in_dims[i]], out_shape[out_dims[j]]
            i, j = i + 1, j + 1
            while p_in != p_out:
                if p_in < p_out:
                    block_in.append(in_dims[i])
                    p_in *= in_shape[in_dims[i]]
                    i += 1
                else:
                    block_out.append(out_dims[j])
                    p_out *= out_shape[out_dims[j]]
                    j += 1
            if len(block_in) == 1 and len(block_out) == 1:
                out[block_out[0]] = slots[block_in[0]]
                continue
            if fixed is not None:
                for k in block_in:
                    self.flag(slots[k], fixed)
            for d, slot in zip(block_out, self._reblock([slots[k] for k in block_in],
                                                         [out_shape[k] for k in block_out], node)):
                out[d] = slot
        return [slot if slot is not None else self.fresh(out_shape[k], neutral=True) for k, slot in enumerate(out)]

    def _reblock(self, in_slots: list[Slot], out_sizes: list[int], node: fx.Node) -> list[Slot]:
        in_sizes = [s.size for s in in_slots]
        total = int(np.prod(in_sizes))
        position = np.arange(total)
        grids: list[np.ndarray] = []
        stride = total
        for slot, size in zip(in_slots, in_sizes):
            stride //= size
            index = (position // stride) % size
            grids.extend(layer[index].reshape(out_sizes) for layer in self.atoms.structural(slot))
        varying = [[d for d in range(len(out_sizes)) if out_sizes[d] > 1 and np.any(np.diff(grid, axis=d) != 0)]
                   for grid in grids]
        merged = any(len(self.atoms.structural(slot)) > 1 for slot in in_slots)
        if merged and any(len(dims) > 1 for dims in varying):
            # splitting a dim that already merges several structures (e.g. a second channel shuffle):
            # which positions go together is no longer a property of one output dim
            reason = f"re-split of a merged channel dim at {node.name}"
            for slot in in_slots:
                self.flag(slot, reason)
            return [self.fresh(size, reason=reason) for size in out_sizes]
        reason = f"splits a channel dim at {node.name}: only whole blocks along one of its dims are removable"
        assigned: list[list[np.ndarray]] = [[] for _ in out_sizes]
        for grid, dims in zip(grids, varying):
            proxies = []
            for d in dims:
                rows = np.moveaxis(grid, d, 0).reshape(out_sizes[d], -1)[:, 0]
                if len(dims) == 1:
                    assigned[d].append(rows)
                    continue
                _, first, pattern = np.unique(rows, return_index=True, return_inverse=True)
                proxy = self.atoms.new(len(first))[pattern]
                assigned[d].append(proxy)
                proxies.append(proxy)
            if proxies:
                self.atoms.defer_split(Split(grid, dims, proxies, reason))
        return [Slot(layers, fresh=False) if layers else self.fresh(size, neutral=True)
                for layers, size in zip(assigned, out_sizes)]

    # --- placeholders and quantizer branches ------------------------------------------------------

    def _placeholder(self, node: fx.Node, is_parameter: bool) -> None:
        shape = self.shape(node)
        if node.name in self.state_names:
            name = self.state_names[node.name]
            tensor = self.state_tensors.get(name)
            if tensor is not None and id(tensor) in self.tensor_slots:  # one tensor lifted under several names
                slots = self.tensor_slots[id(tensor)]
            else:
                slots = self._new_state_slots(name, shape, is_parameter, tensor)
            self.set(node, slots)
            self.weight_nodes.add(node)
        elif self._tensor_value(node):
            self.set(node, [self.fresh(size, reason=MODEL_INPUT) for size in shape])

    def _state_slots(self, parameter: nn.Parameter) -> list[Slot]:
        """The slots of a parameter the graph does not hold (a quantizer's), made on first use."""
        if id(parameter) not in self.tensor_slots:
            self._new_state_slots(self.parameter_names[id(parameter)], tuple(parameter.shape), True, parameter)
        return self.tensor_slots[id(parameter)]

    def _new_state_slots(
        self, name: str, shape: tuple[int, ...], is_parameter: bool, tensor: torch.Tensor | None
    ) -> list[Slot]:
        # a size-1 dim is broadcast, never a structure of its own
        slots = [self.fresh(size, reason=SINGLETON if size == 1 else None) for size in shape]
        for dim, slot in enumerate(slots):
            self.params.append(_ParamSlot(name, dim, slot, is_parameter))
        if tensor is not None:
            self.tensor_slots[id(tensor)] = slots
        return slots

    def _branch_node(self, node: fx.Node, branches: _Branches) -> None:
        branch = branches.members[node]
        if node not in branch.outputs:
            return
        source = self.slots_of(branch.source)
        self.set(node, list(source))
        if self.weight_like(branch.source):
            self.weight_nodes.add(node)
        quantizer = branch.quantizer
        if quantizer.axis is not None:
            for parameter in quantizer.parameters():
                self.tie(source[quantizer.axis], self._state_slots(parameter)[0], node)

    def _tensor_value(self, node: fx.Node) -> bool:
        return isinstance(node.meta.get("val"), torch.Tensor)

    # --- results ----------------------------------------------------------------------------------

    def _structures(self) -> tuple[GroupTable, list[UnprunableStructure]]:
        label, reasons = self.atoms.classes()
        empty = np.zeros(0, dtype=np.int64)
        slot_ids, positions, classes = [empty], [empty], [empty]
        for k, param in enumerate(self.params):
            for layer in self.atoms.structural(param.slot):
                slot_ids.append(np.full(len(layer), k))
                positions.append(np.arange(len(layer)))
                classes.append(label[layer])
        cls, slot, position = _unique_rows(np.concatenate(classes), np.concatenate(slot_ids), np.concatenate(positions))
        # a class is a structure only if it spans some parameter (buffers alone are not trained or pruned)
        is_parameter = np.array([p.is_parameter for p in self.params] or [False])
        keep = np.isin(cls, np.unique(cls[is_parameter[slot]]))
        cls, slot, position = cls[keep], slot[keep], position[keep]
        # a class covering every position of some tensor dim would leave that tensor empty
        sizes = np.array([p.slot.size for p in self.params] or [0])
        pair, count = np.unique(cls * len(sizes) + slot, return_counts=True)
        for whole in np.unique(pair[count == sizes[pair % len(sizes)]] // len(sizes)).tolist():
            reasons.setdefault(whole, set()).add("would remove every position of a tensor dimension")
        blocked = np.isin(cls, np.array(sorted(reasons), dtype=np.int64))
        table = _group_table(self.params, cls[~blocked], slot[~blocked], position[~blocked])
        return table, self._unprunable(cls[blocked], slot[blocked], position[blocked], reasons)

    # ``builtins.set``: in this class ``set`` is the method above
    def _unprunable(
        self, cls: np.ndarray, slot: np.ndarray, position: np.ndarray, reasons: dict[int, builtins.set[str]]
    ) -> list[UnprunableStructure]:
        """Blocked classes with parameters, merged by (tensors spanned, reasons)."""
        starts = np.flatnonzero(np.diff(cls, prepend=-1))
        ends = np.append(starts[1:], len(cls))
        keys: dict[tuple, int] = {}
        key_of_class = np.full(len(starts), -1)
        for k, (begin, stop) in enumerate(zip(starts, ends)):
            why = reasons[int(cls[begin])]
            if INTERNAL in why:  # kernel taps and the like are not structures at all: nothing to list
                continue
            why = why - {SINGLETON}
            if why:
                key = (tuple(sorted(set(slot[begin:stop].tolist()))), tuple(sorted(why)))
                key_of_class[k] = keys.setdefault(key, len(keys))
        key_of_row = np.repeat(key_of_class, ends - starts)
        counts = np.bincount(key_of_class[key_of_class >= 0], minlength=len(keys))
        records = []
        for key, number in keys.items():
            rows = key_of_row == number
            _, row_slot, row_position = _unique_rows(np.zeros(int(rows.sum()), dtype=np.int64), slot[rows],
                                                     position[rows])
            slices = []
            for k in np.unique(row_slot).tolist():
                param = self.params[k]
                slices.append(TensorSlice(public_name(param.name), param.dim,
                                          tuple(row_position[row_slot == k].tolist())))
            records.append(UnprunableStructure(tuple(slices), key[1], int(counts[number])))
        return records


@dataclass(frozen=True)
class GroupTable:
    """The removable structures, in columns: row r puts position ``position[r]`` along dim
    ``dims[slot[r]]`` of the tensor named ``names[slot[r]]`` into group ``group[r]``. Groups are
    numbered in the order of their first tensor position."""

    names: tuple[str, ...]
    dims: tuple[int, ...]
    slot: np.ndarray
    position: np.ndarray
    group: np.ndarray
    count: int

    def without(self, groups: np.ndarray) -> GroupTable:
        """The table without ``groups`` (group numbers), the rest renumbered in the same order."""
        dropped = np.zeros(self.count, dtype=bool)
        dropped[groups] = True
        rows = ~dropped[self.group]
        number = np.cumsum(~dropped) - 1
        return GroupTable(self.names, self.dims, self.slot[rows], self.position[rows], number[self.group[rows]],
                          int((~dropped).sum()))

    def structure(self, groups: np.ndarray, reason: str) -> UnprunableStructure:
        """``groups`` as one unprunable record, for ``reason``."""
        rows = np.isin(self.group, groups)
        slices = []
        for k in np.unique(self.slot[rows]).tolist():
            positions = np.unique(self.position[rows & (self.slot == k)])
            slices.append(TensorSlice(public_name(self.names[k]), self.dims[k], tuple(positions.tolist())))
        return UnprunableStructure(tuple(slices), (reason,), len(groups))


def _unique_rows(cls: np.ndarray, slot: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distinct (class, slot, position) rows, sorted in that order."""
    if not len(cls):
        return cls, slot, position
    slots, positions = int(slot.max()) + 1, int(position.max()) + 1
    key = np.sort((cls * slots + slot) * positions + position)
    key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    return key // (slots * positions), (key // positions) % slots, key % positions


def _group_table(params: list[_ParamSlot], cls: np.ndarray, slot: np.ndarray, position: np.ndarray) -> GroupTable:
    classes, first = np.unique(cls, return_index=True)  # rows are sorted by (class, slot, position)
    order = np.lexsort((position[first], slot[first]))
    number = np.empty(len(classes), dtype=np.int64)
    number[order] = np.arange(len(classes))
    group = number[np.searchsorted(classes, cls)] if len(classes) else np.zeros(0, dtype=np.int64)
    return GroupTable(tuple(p.name for p in params), tuple(p.dim for p in params), slot, position, group, len(classes))


@dataclass
class _Branch:
    quantizer: Quantizer
    nodes: set[fx.Node] = field(default_factory=set)
    source: fx.Node | None = None
    outputs: set[fx.Node] = field(default_factory=set)


@dataclass
class _Branches:
    members: dict[fx.Node, _Branch]


def _quantizer_branches(graph: fx.Graph, model: nn.Module) -> _Branches:
    """Each call of a Quantizer module in the graph: its nodes, the tensor it quantizes, its outputs."""
    modules = dict(model.named_modules(remove_duplicate=False))  # a quantizer shared by q, k, v weights has 3 names
    by_call: dict[str, _Branch] = {}
    members: dict[fx.Node, _Branch] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for key, entry in reversed(list(stack.items())):
            module = modules.get(module_path(entry))
            if isinstance(module, Quantizer):
                branch = by_call.setdefault(key, _Branch(module))
                branch.nodes.add(node)
                members[node] = branch
                break
    for branch in by_call.values():
        for node in branch.nodes:
            for arg in node.all_input_nodes:
                value = arg.meta.get("val")
                if arg not in branch.nodes and isinstance(value, torch.Tensor) and value.dim() > 0:
                    branch.source = arg
            if any(user not in branch.nodes for user in node.users):
                branch.outputs.add(node)
    for branch in by_call.values():
        if branch.source is None:
            for node in branch.nodes:
                members.pop(node, None)
    return _Branches(members)


def _live_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose values reach the graph's output or an op with side effects."""
    live: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.op == "output" or node in live or node.is_impure():
            live.add(node)
            live.update(node.all_input_nodes)
    return live


def _concrete(value: torch.Tensor) -> bool:
    """Whether every size of ``value`` is a plain int (not a data-dependent size: a value left unlabeled,
    so that whatever reads it is unprunable too)."""
    return all(isinstance(s, int) for s in value.shape)


def _flatten(value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flatten(v)]
    if isinstance(value, dict):
        return [item for v in value.values() for item in _flatten(v)]
    return [value]
