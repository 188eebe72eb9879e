"""Groups inside the submodules that trace on their own, for a model that ``torch.export`` cannot trace whole.

A forward that export refuses (routing on unbacked sizes, an LSTM on data-dependent lengths, a broadcast
only the real values decide) would leave a model with no groups at all. Often the refusal lies in a
few lines of one module's forward, and the layers around it trace fine. So the model is run once
eagerly, each module's first call (its positional and keyword inputs) recorded; then, from the root's
children down, each module that holds parametrized children is exported alone on its recorded inputs,
and where that fails, its children are tried in turn.

Each module that traces is analysed as a model of its own (``DependencyAnalysis``): its inputs and
outputs are its boundary, so only structures inside it are offered, and the code around it (which no
graph shows) sees tensors of unchanged shapes. Their tables are merged under the modules' names. What
no graph shows stays unsure, so:

* a tensor that two traced modules both hold (tied weights across them) takes its groups out;
* everything is checked as usual: the probe (``pruning.verify``) runs the compact model eagerly against
  the original on the example and drops every family that changes an output or crashes.

The root's own failure is listed in ``unprunable()`` with the modules searched and those that did not
trace, so the user sees what was left out and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from geta.core.inputs import ExampleInputs
from geta.core.modes import eval_mode
from geta.errors import ModelError
from geta.graph.capture import capture
from geta.graph.dependency import DependencyAnalysis, GroupTable, UnprunableStructure
from geta.quant.quantizer import Quantizer

MAX_LISTED = 6


@dataclass(frozen=True)
class TracedPart:
    """A submodule that exports alone: its qualified name, the module and its group table."""

    path: str
    module: nn.Module
    table: GroupTable


def analyse_parts(model: nn.Module, inputs: ExampleInputs,
                  error: ModelError) -> tuple[GroupTable, list[UnprunableStructure]]:
    """The merged group table of every submodule of ``model`` that traces alone, and the unprunable records
    (each part's own, and first one for the whole model's ``error`` naming what was searched)."""
    parts, untraced, unprunable = _trace_parts(model, _first_calls(model, inputs))
    table = merge([(part.path, part.table) for part in parts])
    shared = _shared_groups(parts)
    if shared.size:
        unprunable.append(table.structure(shared, "tied: the tensor is held by two submodules traced apart"))
        table = table.without(shared)
    cause = error.args[0].split(". Make the forward")[0].splitlines()[0].rstrip(" .")
    traced = f" ({_listed(p.path for p in parts)})" if parts else ""
    reason = (f"the model as a whole: {cause}; groups were looked for "
              f"only inside the {len(parts)} submodules that trace alone{traced}")
    if untraced:
        reason += f"; not traced, so nothing in them is offered: {_listed(untraced)}"
    return table, [UnprunableStructure((), (reason,), 1), *unprunable]


def _trace_parts(model: nn.Module, calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]
                 ) -> tuple[list[TracedPart], list[str], list[UnprunableStructure]]:
    """Walk ``model`` from its children down: export each module worth analysing on its first call's
    inputs; a module that traces becomes a part (its subtree done), one that does not has its children
    tried. Returns the parts, the names of modules with nothing traced inside them, and the parts' own
    unprunable records."""
    parts: list[TracedPart] = []
    untraced: list[str] = []
    unprunable: list[UnprunableStructure] = []
    pending = list(model.named_children())
    while pending:
        path, module = pending.pop(0)
        if not _worth_analysing(module):
            continue
        if id(module) not in calls:  # a container the forward never calls (a ModuleList): its children may be
            pending[:0] = [(f"{path}.{name}", child) for name, child in module.named_children()]
            continue
        args, kwargs = calls[id(module)]
        try:
            program = capture(module, ExampleInputs(args=args, kwargs=kwargs))
            table, own = DependencyAnalysis(program, module).run()
        except Exception:  # anything export or the analysis refuses: look inside instead
            children = [(f"{path}.{name}", child) for name, child in module.named_children()]
            if not any(_worth_analysing(child) for _, child in children):
                untraced.append(path)
            pending[:0] = children
            continue
        parts.append(TracedPart(path, module, table))
        unprunable += [_prefixed(record, path) for record in own]
    return parts, untraced, unprunable


def _listed(names: Iterable[str]) -> str:
    listed = list(names)
    return ", ".join(listed[:MAX_LISTED]) + (", ..." if len(listed) > MAX_LISTED else "")


def _worth_analysing(module: nn.Module) -> bool:
    """A module with at least two parametrized submodules (a lone layer has no structure inside it to remove)."""
    layers = [m for m in module.modules() if m is not module and not isinstance(m, Quantizer)
              and any(True for _ in m.parameters(recurse=False))]
    return len(layers) >= 2 and not isinstance(module, Quantizer)


def _first_calls(model: nn.Module, inputs: ExampleInputs) -> dict[int, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Each module's inputs at its first call in one eager run of ``model`` on ``inputs`` (eval mode)."""
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.setdefault(id(module), (args, dict(kwargs)))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules() if m is not model]
    try:
        with eval_mode(model), torch.no_grad():
            inputs.run(model)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def merge(tables: list[tuple[str, GroupTable]]) -> GroupTable:
    """One table of several submodules' tables, their tensor names prefixed with the submodule's name and
    their groups numbered one after another."""
    names: list[str] = []
    dims: list[int] = []
    slots, positions, groups = [], [], []
    offset = 0
    for prefix, table in tables:
        slots.append(table.slot + len(names))
        positions.append(table.position)
        groups.append(table.group + offset)
        names += [f"{prefix}.{name}" for name in table.names]
        dims += list(table.dims)
        offset += table.count
    empty = np.zeros(0, dtype=np.int64)
    return GroupTable(tuple(names), tuple(dims), np.concatenate(slots) if slots else empty,
                      np.concatenate(positions) if positions else empty,
                      np.concatenate(groups) if groups else empty, offset)


def _shared_groups(parts: list[TracedPart]) -> np.ndarray:
    """Groups, numbered as :func:`merge` numbers them, that cut a tensor held by more than one part."""
    holders: dict[int, int] = {}
    for part in parts:
        for key in {id(t) for t in [*part.module.parameters(), *part.module.buffers()]}:
            holders[key] = holders.get(key, 0) + 1
    shared, offset = [], 0
    for part in parts:
        tensors = {**dict(part.module.named_buffers(remove_duplicate=False)),
                   **dict(part.module.named_parameters(remove_duplicate=False))}
        slots = [k for k, name in enumerate(part.table.names) if holders.get(id(tensors[name]), 0) > 1]
        shared.append(np.unique(part.table.group[np.isin(part.table.slot, slots)]) + offset)
        offset += part.table.count
    return np.unique(np.concatenate(shared)) if shared else np.zeros(0, dtype=np.int64)


def _prefixed(record: UnprunableStructure, path: str) -> UnprunableStructure:
    """A part's own record under the model's names; its boundary is the part's, not the model's."""
    slices = tuple(type(s)(f"{path}.{s.name}", s.dim, s.indices) for s in record.slices)
    boundary = f"an {{}} of {path} (traced apart from the code around it)"
    reasons = tuple(reason.replace("a model input", boundary.format("input"))
                    .replace("a model output", boundary.format("output")) for reason in record.reasons)
    return UnprunableStructure(slices, reasons, record.count)
