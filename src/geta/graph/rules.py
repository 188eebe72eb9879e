"""How each op ties the dimensions of its inputs and outputs: one rule per op kind.

A rule reads the slots of the op's inputs from the analysis (``g``) and sets the slots of its output:
sharing a slot means "the same positions", ``g.tie`` joins two slots position by position, fresh
slots start new structures, and ``g.flag`` marks positions that cannot be removed (with the reason).
Ops without a rule are handled conservatively by ``unknown``: everything they touch is unprunable.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import fx

import geta.quant.quantizer  # noqa: F401  (defines the geta::quantizer_call op)
from geta.graph.atoms import INTERNAL, Slot
from geta.graph.capture import op_of
from geta.graph.owners import fixed_reshapes, owns_split_sizes

if TYPE_CHECKING:
    from geta.graph.dependency import DependencyAnalysis

aten = torch.ops.aten
Rule = Callable[["DependencyAnalysis", fx.Node], None]
RULES: dict[object, Rule] = {}

SPATIAL = "spatial positions of a convolution or pooling output (set by the input size)"


def rule(*packets: object) -> Callable[[Rule], Rule]:
    """Register a rule for the given op overload packets (or callables such as operator.getitem)."""

    def register(fn: Rule) -> Rule:
        for packet in packets:
            RULES[packet] = fn
        return fn

    return register


def rule_for(node: fx.Node) -> Rule | None:
    """The rule of ``node``'s op: registered, or elementwise for ops tagged pointwise."""
    target = node.target
    packet = op_of(node)
    if packet in RULES:
        return RULES[packet]
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags:
        return elementwise
    return None


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


# --- arguments ----------------------------------------------------------------------------------
# fx types every argument as the broad ``Argument`` union; an op's schema says which kind each one is.
# These read one as that kind and raise a TypeError otherwise (the rule then fails, and its op is
# unprunable, as for any call the rule did not foresee).


def _op_name(node: fx.Node) -> str:
    """The name of ``node``'s op without its overload (``conv2d``)."""
    return str(getattr(op_of(node), "__name__", node.target))


def _arg(node: fx.Node, i: int, name: str | None = None, default: object = None) -> object:
    """Positional argument ``i`` of ``node``, else its keyword argument ``name``, else ``default``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default) if name is not None else default


def _int(value: object, what: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{what} is {type(value).__name__}, not an int")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is {type(value).__name__}, not a str")
    return value


def _optional_int(value: object, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _seq(value: object, what: str) -> Sequence[object]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} is {type(value).__name__}, not a list")
    return value


def _ints(value: object, what: str) -> list[int]:
    """A list of ints (``int[]`` in the schema)."""
    return [_int(v, what) for v in _seq(value, what)]


def _int_or_ints(value: object, what: str) -> list[int]:
    """An int or a list of ints, as a list."""
    return [value] if isinstance(value, int) else _ints(value, what)


def _aligned(
    g: DependencyAnalysis, node: fx.Node, shape: tuple[int, ...], inputs: list[list[Slot]]
) -> list[Slot | None]:
    """``inputs`` (slot lists) aligned with ``shape`` from the last dim, as broadcasting aligns them:
    at each dim of size > 1, the inputs' slots of that size are the same positions and are tied. Per
    dim of ``shape``, the first such slot, or None where no input has one."""
    aligned: list[Slot | None] = []
    for i, size in enumerate(shape):
        offset = len(shape) - i
        candidates = [s[-offset] for s in inputs if len(s) >= offset and s[-offset].size == size and size > 1]
        for other in candidates[1:]:
            g.tie(candidates[0], other, node)
        aligned.append(candidates[0] if candidates else None)
    return aligned


def _broadcast(g: DependencyAnalysis, node: fx.Node, shape: tuple[int, ...], inputs: list[list[Slot]]) -> list[Slot]:
    """The slots of a broadcast result of ``shape``: each dim's aligned input slot (see :func:`_aligned`),
    or a fresh neutral slot where no input has one."""
    aligned = _aligned(g, node, shape, inputs)
    return [slot if slot is not None else g.fresh(size, neutral=True) for slot, size in zip(aligned, shape)]


# --- elementwise --------------------------------------------------------------------------------


@rule(
    aten.dropout, aten.dropout_, aten.feature_dropout, aten.alpha_dropout, aten.clone, aten.contiguous,
    aten.alias, aten.detach, aten.to, aten._to_copy, aten.lift_fresh_copy, aten.type_as, aten.masked_fill,
    aten.masked_fill_, aten.where, aten.hardtanh, aten.hardtanh_, aten.relu_, aten.silu_, aten.hardswish_,
    aten.gelu, aten.silu, aten.hardswish, aten.hardsigmoid, aten.mish, aten.elu, aten.leaky_relu, aten.relu6,
    aten.clamp, aten.clamp_, aten.fill_, aten.copy_, aten.add_, aten.mul_, aten.sub_, aten.div_,
)
def elementwise(g: DependencyAnalysis, node: fx.Node) -> None:
    """Broadcasting elementwise op: aligned dims of equal size are the same positions."""
    operands = [slots for a in g.tensor_args(node) if (slots := g.slots(a)) is not None]
    g.set(node, _broadcast(g, node, g.shape(node), operands))


# --- layers -------------------------------------------------------------------------------------


# A quantizer call that capture could not attribute to its Quantizer module: it maps each value to its
# level, so it ties nothing across positions (a per-channel quantizer's parameters then stay untied, and
# the probe of the search space finds out).
RULES[torch.ops.geta.quantizer_call] = elementwise


@rule(aten.linear)
def linear(g: DependencyAnalysis, node: fx.Node) -> None:
    x, w = g.slots_of(node.args[0]), g.slots_of(node.args[1])
    bias = g.slots(_arg(node, 2))
    g.tie(x[-1], w[1], node)
    out = [*x[:-1], w[0]]
    if bias is not None:
        g.tie(w[0], bias[0], node)
    g.set(node, out)


@rule(aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten.conv_transpose1d, aten.conv_transpose2d,
      aten.conv_transpose3d)
def convolution(g: DependencyAnalysis, node: fx.Node) -> None:
    packet = op_of(node)
    args = list(node.args) + [None] * 9
    w = g.slots_of(args[1])
    bias = g.slots(args[2])
    transposed = packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d) or (
        packet is aten.convolution and bool(args[6])
    )
    if packet is aten.convolution:
        groups = _int(args[8] if args[8] is not None else 1, "groups")
    else:  # conv{1,2,3}d and conv_transpose{1,2,3}d both take groups as argument 6
        groups = _int(_arg(node, 6, "groups", 1), "groups")
    shape = g.shape(node)
    for kernel in w[2:]:
        g.flag(kernel, INTERNAL)
    spatial = [g.fresh(size, reason=SPATIAL) for size in shape[2:]]
    x = g.slots_of(args[0])
    in_ch, out_w = (w[0], w[1]) if transposed else (w[1], w[0])
    if groups == 1:
        g.tie(x[1], in_ch, node)
        out = out_w
    elif not transposed and w[1].size == 1 and x[1].size == groups and w[0].size == groups:
        g.flag(w[1], INTERNAL)  # depthwise: channel c in, channel c out
        g.tie(x[1], w[0], node)
        out = x[1]
    elif w[1].size > 1:
        # Grouped: channel i of every group goes together, so that the groups stay equal. The weight's
        # dim 1 is one group's width (of the input of a convolution, of the output of a transposed one);
        # its dim 0 holds every group of the other side.
        g.tie(w[0], _tiled(g.fresh(w[0].size // groups), groups), node)
        if transposed:
            g.tie(x[1], w[0], node)
            out = _tiled(w[1], groups)
        else:
            g.tie(x[1], _tiled(w[1], groups), node)
            out = w[0]
    else:
        reason = f"grouped convolution (groups={groups}) with one channel per group on a side at {node.name}"
        g.flag(x[1], reason)
        g.flag(in_ch, reason)
        g.flag(out_w, reason)
        out = out_w
    if bias is not None:
        g.tie(out, bias[0], node)
    g.set(node, [x[0], out, *spatial])


def _tiled(slot: Slot, times: int) -> Slot:
    """``slot`` repeated ``times`` times end to end (position i of every copy is position i of ``slot``)."""
    return Slot([np.tile(layer, times) for layer in slot.layers], fresh=False)


@rule(aten.batch_norm, aten._native_batch_norm_legit_no_training, aten.instance_norm)
def batch_norm(g: DependencyAnalysis, node: fx.Node) -> None:
    x = g.slots_of(node.args[0])
    for arg in node.args[1:5]:
        if isinstance(arg, fx.Node) and (slots := g.slots(arg)) is not None:
            g.tie(x[1], slots[0], node)
    if op_of(node) is aten._native_batch_norm_legit_no_training:
        g.set_tuple(node, [list(x), None, None])
    else:
        g.set(node, list(x))


@rule(aten.layer_norm, aten.rms_norm)
def layer_norm(g: DependencyAnalysis, node: fx.Node) -> None:
    x = g.slots_of(node.args[0])
    normalized = len(_seq(node.args[1], "normalized_shape"))
    for arg in node.args[2:4]:
        if isinstance(arg, fx.Node) and (slots := g.slots(arg)) is not None:
            for a, b in zip(x[-normalized:], slots):
                g.tie(a, b, node)
    for slot in x[-normalized:]:
        g.flag(slot, f"normalized by {_op_name(node)} (removing entries changes its statistics)")
    g.set(node, list(x))


@rule(aten.group_norm)
def group_norm(g: DependencyAnalysis, node: fx.Node) -> None:
    x = g.slots_of(node.args[0])
    for arg in node.args[2:4]:
        if isinstance(arg, fx.Node) and (slots := g.slots(arg)) is not None:
            g.tie(x[1], slots[0], node)
    g.flag(x[1], "normalized by group_norm (removing channels changes its statistics)")
    g.set(node, list(x))


@rule(aten.embedding)
def embedding(g: DependencyAnalysis, node: fx.Node) -> None:
    w, ids = g.slots_of(node.args[0]), g.slots_of(node.args[1])
    g.flag(w[0], INTERNAL)
    g.set(node, [*ids, w[1]])


# --- products -----------------------------------------------------------------------------------


def _contract(g: DependencyAnalysis, node: fx.Node, a_node: object, b_node: object, a: Slot, b: Slot) -> None:
    g.tie(a, b, node)
    if not (g.weight_like(a_node) or g.weight_like(b_node)):
        g.flag(a, f"contracted between two activations at {node.name}")


@rule(aten.matmul, aten.mm, aten.bmm)
def matmul(g: DependencyAnalysis, node: fx.Node) -> None:
    a_node, b_node = node.args[0], node.args[1]
    a, b = list(g.slots_of(a_node)), list(g.slots_of(b_node))
    a_vector, b_vector = len(a) == 1, len(b) == 1
    _contract(g, node, a_node, b_node, a[-1], b[0] if b_vector else b[-2])
    shape = g.shape(node)
    rows = [] if a_vector else [a[-2]]
    cols = [] if b_vector else [b[-1]]
    batch_rank = len(shape) - len(rows) - len(cols)
    batch = _broadcast(g, node, tuple(shape[:batch_rank]), [a[:-2], b[:-2]])
    g.set(node, batch + rows + cols)


@rule(aten.addmm, aten.baddbmm)
def addmm(g: DependencyAnalysis, node: fx.Node) -> None:
    bias, a_node, b_node = node.args[0], node.args[1], node.args[2]
    a, b = g.slots_of(a_node), g.slots_of(b_node)
    _contract(g, node, a_node, b_node, a[-1], b[-2])
    out = [*a[:-1], b[-1]]
    if op_of(node) is aten.baddbmm:
        g.tie(a[0], b[0], node)
    _aligned(g, node, tuple(s.size for s in out), [out, g.slots_of(bias)])  # the bias broadcasts over the product
    g.set(node, out)


@rule(aten.einsum)
def einsum(g: DependencyAnalysis, node: fx.Node) -> None:
    equation, operands = _str(node.args[0], "equation").replace(" ", ""), _seq(node.args[1], "operands")
    output: str | None = None
    if "->" in equation:
        inputs, output = equation.split("->")
    else:
        inputs = equation
    terms = inputs.split(",")
    if "." in equation or output is None:
        g.unknown(node, "einsum with ellipsis or implicit output")
        return
    by_letter: dict[str, tuple[object, Slot]] = {}
    for term, operand in zip(terms, operands):
        for letter, slot in zip(term, g.slots_of(operand)):
            if letter in by_letter:
                first_node, first = by_letter[letter]
                if letter in output:
                    g.tie(first, slot, node)
                else:
                    _contract(g, node, first_node, operand, first, slot)
            else:
                by_letter[letter] = (operand, slot)
    g.set(node, [by_letter[letter][1] for letter in output])


@rule(aten.scaled_dot_product_attention)
def attention(g: DependencyAnalysis, node: fx.Node) -> None:
    q, k, v = (list(g.slots_of(a)) for a in node.args[:3])
    # batch dims (heads included): a KV head serves a run of consecutive query heads under GQA
    for i in range(len(q) - 2):
        if q[i].size == k[i].size:
            g.tie(q[i], k[i], node)
        elif k[i].size and q[i].size % k[i].size == 0:
            g.tie_repeated(k[i], q[i], q[i].size // k[i].size, node)
        else:
            g.unknown(node, "attention heads of incompatible sizes")
            return
        g.tie(k[i], v[i], node)
    g.tie(q[-1], k[-1], node)
    g.flag(q[-1], f"head width contracted between queries and keys at {node.name}")
    g.tie(k[-2], v[-2], node)
    g.flag(k[-2], f"key positions contracted in attention at {node.name}")
    mask = _arg(node, 3, "attn_mask")
    if isinstance(mask, fx.Node) and (mask_slots := g.slots(mask)) is not None:
        # the mask (or bias) is added to the scores (batch..., queries, keys): aligned dims are the same
        scores = [*q[:-1], k[-2]]
        _aligned(g, node, tuple(s.size for s in scores), [scores, mask_slots])
    g.set(node, [*q[:-1], v[-1]])


# --- shapes -------------------------------------------------------------------------------------


@rule(aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.squeeze, aten.unsqueeze,
      aten.view_as, aten.reshape_as)
def reshape(g: DependencyAnalysis, node: fx.Node) -> None:
    owner = g.owner(node)
    fixed = (f"reshaped to sizes that {type(owner).__name__} derives from other widths at {node.name}"
             if fixed_reshapes(owner) else None)
    g.set(node, g.reshaped(g.slots_of(node.args[0]), g.shape(node.args[0]), g.shape(node), node, fixed))


@rule(aten.expand, aten.expand_as)
def expand(g: DependencyAnalysis, node: fx.Node) -> None:
    x, shape = g.slots_of(node.args[0]), g.shape(node)
    offset = len(shape) - len(x)
    out = []
    for i, size in enumerate(shape):
        j = i - offset
        out.append(x[j] if j >= 0 and x[j].size == size else g.fresh(size, neutral=True))
    g.set(node, out)


@rule(aten.permute)
def permute(g: DependencyAnalysis, node: fx.Node) -> None:
    x = g.slots_of(node.args[0])
    g.set(node, [x[_dim(d, len(x))] for d in _ints(node.args[1], "dims")])


@rule(aten.transpose, aten.swapaxes, aten.t, aten.movedim, aten.numpy_T)
def transpose(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    packet = op_of(node)
    if packet is aten.movedim:
        source = _dim(_int(node.args[1], "source"), len(x))
        destination = _dim(_int(node.args[2], "destination"), len(x))
        x.insert(destination, x.pop(source))
    elif len(node.args) >= 3:
        i, j = _dim(_int(node.args[1], "dim0"), len(x)), _dim(_int(node.args[2], "dim1"), len(x))
        x[i], x[j] = x[j], x[i]
    else:
        x = x[::-1]
    g.set(node, x)


@rule(aten.slice)
def slice_(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    dim = _dim(_int(_arg(node, 1, default=0), "dim"), len(x))
    start = _optional_int(_arg(node, 2), "start")
    end = _optional_int(_arg(node, 3), "end")
    step = _optional_int(_arg(node, 4, default=1), "step")
    index = slice(start, end, step)
    if range(*index.indices(x[dim].size)) != range(x[dim].size):
        g.flag(x[dim], f"sliced at fixed offsets at {node.name}: removing positions would shift the slice")
    x[dim] = g.sliced(x[dim], index)
    g.set(node, x)


@rule(aten.narrow)
def narrow(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    dim = _dim(_int(node.args[1], "dim"), len(x))
    if node.args[3] != x[dim].size:
        g.flag(x[dim], f"narrowed at fixed offsets at {node.name}: removing positions would shift it")
    start, length = _int(node.args[2], "start"), _int(node.args[3], "length")
    x[dim] = g.sliced(x[dim], slice(start, start + length))
    g.set(node, x)


@rule(aten.select)
def select(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    dim = _dim(_int(node.args[1], "dim"), len(x))
    if x[dim].size > 1:
        g.flag(x[dim], f"one position selected at {node.name}: removing positions would shift it")
    g.take_apart(x[dim])
    del x[dim]
    g.set(node, x)


@rule(aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, aten.tensor_split)
def split(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    packet = op_of(node)
    outputs = node.meta["val"]
    default_dim = 0
    dim = _dim(_int(_arg(node, 2, "dim", default_dim), "dim"), len(x))
    if packet is aten.unbind:
        dim = _dim(_int(_arg(node, 1, default=0), "dim"), len(x))
    sizes = [1 if packet is aten.unbind else value.shape[dim] for value in outputs]
    owned = owns_split_sizes(g.owner(node))
    if packet is aten.split and not owned:
        g.flag(x[dim], f"split by a fixed size at {node.name}: register a width handler for "
               f"{type(g.owner(node)).__name__} that updates it to allow pruning here")
    elif len(set(sizes)) == 1 or owned:
        g.balance(x[dim], sizes, f"cut into parts of sizes {sizes} at {node.name}: a structure must take from "
                  "each part a share proportional to its size")
    else:
        g.flag(x[dim], f"cut into parts of fixed sizes {sizes} at {node.name}")
    if set(sizes) == {1}:
        g.take_apart(x[dim])
    results: list[list[Slot] | None] = []
    start = 0
    for value in outputs:
        size = 1 if packet is aten.unbind else value.shape[dim]
        piece = list(x)
        if packet is aten.unbind:
            del piece[dim]
        else:
            piece[dim] = g.sliced(x[dim], slice(start, start + size))
        start += size
        results.append(piece)
    g.set_tuple(node, results)


@rule(aten.cat, aten.concat)
def cat(g: DependencyAnalysis, node: fx.Node) -> None:
    tensors = [t for t in _seq(node.args[0], "tensors")
               if g.slots(t) is not None and len(g.shape(t)) > 0 and g.shape(t) != (0,)]
    dim = _dim(_int(_arg(node, 1, default=0), "dim"), len(g.shape(node)))
    first = list(g.slots_of(tensors[0]))
    for other in tensors[1:]:
        for i, slot in enumerate(g.slots_of(other)):
            if i != dim:
                g.tie(first[i], slot, node)
    first[dim] = g.concatenated([g.slots_of(t)[dim] for t in tensors])
    g.set(node, first)


@rule(aten.stack)
def stack(g: DependencyAnalysis, node: fx.Node) -> None:
    tensors = _seq(node.args[0], "tensors")
    dim = _dim(_int(_arg(node, 1, default=0), "dim"), len(g.shape(node)))
    first = list(g.slots_of(tensors[0]))
    for other in tensors[1:]:
        for a, b in zip(first, g.slots_of(other)):
            g.tie(a, b, node)
    first.insert(dim, g.fresh(len(tensors), neutral=True))
    g.set(node, first)


@rule(aten.repeat_interleave)
def repeat_interleave(g: DependencyAnalysis, node: fx.Node) -> None:
    """Each position repeated ``r`` times in place: a structure takes all its copies with it."""
    x = list(g.slots_of(node.args[0]))
    repeats = _arg(node, 1, "repeats")
    dim_arg = _arg(node, 2, "dim")
    if not isinstance(repeats, int) or dim_arg is None:
        g.unknown(node, "repeat_interleave with tensor repeats or over the flattened tensor")
        return
    dim = _dim(_int(dim_arg, "dim"), len(x))
    x[dim] = Slot([np.repeat(layer, repeats) for layer in x[dim].layers], fresh=False)
    g.set(node, x)


@rule(aten.repeat)
def repeat(g: DependencyAnalysis, node: fx.Node) -> None:
    """The whole tensor tiled: a structure is removed from every tile."""
    x = list(g.slots_of(node.args[0]))
    factors = _ints(node.args[1], "repeats")
    lead = len(factors) - len(x)
    out = [g.fresh(f, neutral=True) for f in factors[:lead]]
    for slot, factor in zip(x, factors[lead:]):
        out.append(slot if factor == 1 else Slot([np.tile(layer, factor) for layer in slot.layers], fresh=False))
    g.set(node, out)


@rule(aten.roll)
def roll(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    shifts = _int_or_ints(node.args[1], "shifts")
    dims = _int_or_ints(_arg(node, 2, default=[]), "dims")
    if not dims:
        g.unknown(node, "roll over the flattened tensor")
        return
    for shift, d in zip(shifts, dims):
        d = _dim(d, len(x))
        x[d] = Slot([np.roll(layer, shift) for layer in x[d].layers], fresh=False)
    g.set(node, x)


@rule(aten.pad, aten.constant_pad_nd)
def pad(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    amounts = _ints(node.args[1], "pad")
    for i in range(len(amounts) // 2):
        left, right = amounts[2 * i], amounts[2 * i + 1]
        d = len(x) - 1 - i
        if left or right:
            x[d] = g.padded(x[d], left, right)
    g.set(node, x)


# --- pooling and reductions ---------------------------------------------------------------------


@rule(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
      aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten.adaptive_max_pool1d,
      aten.adaptive_max_pool2d, aten.max_pool2d_with_indices, aten.upsample_nearest2d, aten.upsample_bilinear2d,
      aten.pixel_shuffle)
def pool(g: DependencyAnalysis, node: fx.Node) -> None:
    value = node.meta["val"]
    shape = tuple((value[0] if isinstance(value, (tuple, list)) else value).shape)
    if op_of(node) is aten.pixel_shuffle:
        g.unknown(node, "pixel_shuffle moves channels into space")
        return
    x = g.slots_of(node.args[0])
    keep = len(shape) - (len(x) - 2) if len(x) >= 3 else 1
    out = list(x[:keep]) + [g.fresh(size, reason=SPATIAL, neutral=size == 1) for size in shape[keep:]]
    if isinstance(value, (tuple, list)):
        g.set_tuple(node, [out, [g.fresh(size, reason=SPATIAL) for size in shape[:keep]] + out[keep:]])
    else:
        g.set(node, out)


@rule(aten.mean, aten.sum, aten.amax, aten.amin, aten.max, aten.min, aten.var, aten.std, aten.norm,
      aten.logsumexp, aten.argmax, aten.argmin, aten.var_mean, aten.prod, aten.linalg_vector_norm)
def reduction(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    value = node.meta["val"]
    out_value = value[0] if isinstance(value, (tuple, list)) else value
    dim_arg = _arg(node, 1, "dim")
    if op_of(node) in (aten.norm, aten.linalg_vector_norm):
        dim_arg = _arg(node, 2, "dim")
    if dim_arg is None or dim_arg == []:
        dim_arg = list(range(len(x)))
    dims = {_dim(d, len(x)) for d in _int_or_ints(dim_arg, "dim")}
    reason = f"reduced by {_op_name(node)} at {node.name}"
    keepdim = len(out_value.shape) == len(x)
    out = []
    for i, slot in enumerate(x):
        if i in dims:
            if slot.size > 1 and g.used(node):  # an unused result (attention weights nobody reads) ties nothing
                g.flag(slot, reason)
            if keepdim:
                out.append(g.fresh(1, neutral=True))
        else:
            out.append(slot)
    if isinstance(value, (tuple, list)):
        g.set_tuple(node, [out for _ in value])
    else:
        g.set(node, out)


@rule(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, aten.cumsum, aten.cumprod)
def normalize_along(g: DependencyAnalysis, node: fx.Node) -> None:
    x = list(g.slots_of(node.args[0]))
    dim = _dim(_int(node.args[1], "dim"), len(x))
    if x[dim].size > 1 and g.used(node):
        g.flag(x[dim], f"mixed along by {_op_name(node)} at {node.name}")
    g.set(node, x)


# --- constants and plumbing ---------------------------------------------------------------------


@rule(aten.arange, aten.zeros, aten.ones, aten.full, aten.empty, aten.new_zeros, aten.new_ones, aten.new_full,
      aten.new_empty, aten.scalar_tensor, aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like,
      aten.rand, aten.randn, aten.tensor, aten.eye, aten.tril, aten.triu)
def constant(g: DependencyAnalysis, node: fx.Node) -> None:
    if op_of(node) in (aten.tril, aten.triu):
        g.flag_all(node.args[0], "triangular mask")
    g.set(node, [g.fresh(size, neutral=True) for size in g.shape(node)])


@rule(aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size,
      aten._assert_async)
def assertion(g: DependencyAnalysis, node: fx.Node) -> None:
    """Runtime checks: no value, no ties."""


@rule(aten.index)
def index(g: DependencyAnalysis, node: fx.Node) -> None:
    """x[i0, i1, ...] with index tensors: indexed dims are gathered (unprunable), the others kept."""
    x = list(g.slots_of(node.args[0]))
    indices = list(_seq(node.args[1], "indices"))
    used = [k for k, i in enumerate(indices) if i is not None]
    if used != list(range(len(used))):
        g.unknown(node, "advanced indexing after a skipped dim")
        return
    for k in used:
        g.flag(x[k], f"gathered by index at {node.name}")
    index_shape = g.shape(indices[0])
    index_slots = g.slots(indices[0])
    lead = [index_slots[d] if index_slots else g.fresh(s, neutral=True) for d, s in enumerate(index_shape)]
    g.set(node, lead + x[len(used):])


@rule(aten.gather)
def gather(g: DependencyAnalysis, node: fx.Node) -> None:
    """out[..., i, ...] = x[..., index[..., i, ...], ...] along ``dim``: that dim is gathered (unprunable);
    every other dim is read position by position where its size is kept."""
    x, index = list(g.slots_of(node.args[0])), g.slots(node.args[2])
    dim = _dim(_int(node.args[1], "dim"), len(x))
    out = []
    for d, size in enumerate(g.shape(node)):
        source = index[d] if index is not None and d < len(index) else g.fresh(size, neutral=True)
        if d != dim and d < len(x) and x[d].size == size:
            g.tie(x[d], source, node)
            out.append(x[d])
            continue
        if d < len(x) and x[d].size > 1:
            g.flag(x[d], f"gathered by index at {node.name}")
        out.append(source)
    g.set(node, out)


@rule(operator.getitem)
def getitem(g: DependencyAnalysis, node: fx.Node) -> None:
    source, item = node.args[0], node.args[1]
    container = g.labels.get(source) if isinstance(source, fx.Node) else None
    if isinstance(container, tuple) and isinstance(item, int):
        slots = container[item]
        if slots is None:
            raise TypeError(f"output {item} of {source} has no slots")
        g.set(node, slots)
    else:
        g.unknown(node, "indexing into an untracked value")
