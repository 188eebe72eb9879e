"""Which tensors of a captured graph are provably non-negative (e.g. after ReLU).

Used to give a layer an unsigned input quantizer, which gains one bit. The analysis is
conservative: an op not listed here produces a tensor that is not known to be non-negative.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
from torch import fx

from geta.graph.capture import module_path, op_of

aten = torch.ops.aten

# Ops whose output is non-negative whatever their input (in-place variants included: ``nn.ReLU(inplace=True)``
# exports as ``relu_``, ``nn.ReLU6(inplace=True)`` as ``hardtanh_``).
_ALWAYS = {
    aten.relu, aten.relu_, aten.relu6, aten.sigmoid, aten.sigmoid_, aten.softmax, aten._softmax, aten.exp,
    aten.exp_, aten.abs, aten.abs_, aten.hardsigmoid, aten.hardsigmoid_, aten.softplus, aten.sqrt, aten.sqrt_,
    aten.rsqrt, aten.rsqrt_, aten.square,
}
# Ops whose output is non-negative when every tensor input is (copies, reshapes, selections,
# poolings, convex combinations and products of non-negative values).
_PRESERVING = {
    aten.view, aten._unsafe_view, aten.reshape, aten.flatten, aten.permute, aten.transpose, aten.t,
    aten.contiguous, aten.clone, aten.squeeze, aten.unsqueeze, aten.expand, aten.slice, aten.select,
    aten.cat, aten.stack, aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, aten.narrow,
    aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
    aten.max_pool3d_with_indices, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
    aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d,
    aten.adaptive_max_pool2d, aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.detach,
    aten.alias, aten._to_copy, aten.to, aten.upsample_nearest2d, aten.upsample_bilinear2d,
    aten.mean, aten.sum, aten.amax, aten.max, aten.pad, aten.unflatten, aten.repeat, aten.lift_fresh_copy,
}
# Arithmetic whose output is non-negative when every operand, tensor or number, is.
_ARITHMETIC = {aten.add, aten.mul, aten.div, aten.constant_pad_nd}
# Ops with a lower bound argument: non-negative when that bound is >= 0.
_LOWER_BOUND_ARG = {
    aten.hardtanh: 1, aten.hardtanh_: 1, aten.clamp: 1, aten.clamp_: 1, aten.clamp_min: 1, aten.clamp_min_: 1,
}
_THRESHOLD = {aten.threshold, aten.threshold_}


def nonnegative_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Every node of ``graph`` whose value is provably >= 0 elementwise."""
    known: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if _is_nonnegative(node, known):
            known.add(node)
        elif _mutates_first_argument(node) and isinstance(node.args[0], fx.Node):
            known.discard(node.args[0])  # an in-place op that may leave negative values in its input
    return known


def _mutates_first_argument(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return alias is not None and alias.is_write


def _is_nonnegative(node: fx.Node, known: set[fx.Node]) -> bool:
    if node.target is operator.getitem:
        return node.args[0] in known
    packet = op_of(node)
    if packet in _ALWAYS:
        return True
    if packet in _LOWER_BOUND_ARG:
        index = _LOWER_BOUND_ARG[packet]
        bound = node.args[index] if len(node.args) > index else node.kwargs.get("min", node.kwargs.get("min_val"))
        return _is_nonnegative_number(bound)
    if packet in _THRESHOLD:  # threshold(x, th, value): x where x > th, else value
        return len(node.args) > 2 and _is_nonnegative_number(node.args[1]) and _is_nonnegative_number(node.args[2])
    if packet in _PRESERVING:
        return all(_tensor_nonnegative(a, known) for a in _operands(node) if isinstance(a, fx.Node))
    if packet in _ARITHMETIC:
        return all(
            _tensor_nonnegative(a, known) if isinstance(a, fx.Node) else _is_nonnegative_number(a)
            for a in _operands(node)
            if isinstance(a, (fx.Node, int, float))
        )
    return False


def _is_nonnegative_number(value: object) -> bool:
    return isinstance(value, (int, float)) and value >= 0


def _operands(node: fx.Node) -> Iterable[object]:
    for arg in list(node.args) + list(node.kwargs.values()):
        if isinstance(arg, (list, tuple)):
            yield from arg
        else:
            yield arg


def _tensor_nonnegative(arg: fx.Node, known: set[fx.Node]) -> bool:
    value = arg.meta.get("val")
    if isinstance(value, torch.Tensor) and not (value.dtype.is_floating_point or value.dtype.is_complex):
        return True  # integer tensors here are indices or masks, not activations
    return arg in known


def layer_inputs(graph: fx.Graph, path: str, params: set[str]) -> list[fx.Node]:
    """Nodes from outside module ``path``'s scope that feed it, parameters and buffers excluded.

    ``params`` holds the placeholder names of parameters, buffers and constants.
    """
    inside = {n for n in graph.nodes if _in_scope(n, path)}
    external: list[fx.Node] = []
    for node in inside:
        for arg in node.all_input_nodes:
            if arg not in inside and not (arg.op == "placeholder" and arg.name in params) and arg not in external:
                external.append(arg)
    return external


def _in_scope(node: fx.Node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(module_path(entry) == path for entry in stack.values())
