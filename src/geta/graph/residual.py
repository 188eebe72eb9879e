"""Which modules' outputs go into a residual add: where ``GETA(..., quantize_residuals=True)`` puts output
quantizers.

An integer runtime runs a convolution as an integer kernel only when its output is quantized as well
(onnxruntime's QLinearConv reads codes and writes codes). In a residual block the last convolution's
output (after its batch norm) goes into the add, where no layer's input quantizer sees it, so that
convolution stays in float, and so does every projection shortcut. Quantizing those outputs in the model
that is trained gives the export a quantizer to fuse each convolution with, as onnxruntime's own
``quantize_static`` does for the inputs of an add.

A module qualifies when it is a convolution or a batch norm (modules whose forward returns one tensor)
and, in the captured graph, a tensor computed innermost in it is an operand of an add or a subtraction of
two same-shaped tensors outside it. A batch norm whose input comes from a layer in ``excluded`` (kept at
full precision) does not qualify, nor does such a layer itself.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from geta.graph.capture import module_path

aten = torch.ops.aten

_RESIDUAL_OPS = {aten.add, aten.add_, aten.sub, aten.sub_}
RESIDUAL_KINDS = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def residual_sources(graph: fx.Graph, model: nn.Module, excluded: set[str]) -> list[str]:
    """Names of the modules of ``model`` whose output is an operand of a residual add in ``graph``, in
    module order; ``excluded`` names layers kept at full precision (see the module docstring)."""
    modules = dict(model.named_modules())
    found: set[str] = set()
    for node in graph.nodes:
        if node.op != "call_function" or getattr(node.target, "overloadpacket", None) not in _RESIDUAL_OPS:
            continue
        operands = [arg for arg in node.args[:2] if isinstance(arg, fx.Node)]
        if len(operands) != 2 or not _same_shape(*operands):
            continue
        scope = _scopes(node)
        for operand in operands:
            path = _innermost(operand)
            if path is None or path in scope or path in excluded:
                continue
            module = modules.get(path)
            if isinstance(module, RESIDUAL_KINDS) and not _fed_by(operand, path, excluded):
                found.add(path)
    return [name for name in modules if name in found]


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    x, y = a.meta.get("val"), b.meta.get("val")
    return (isinstance(x, torch.Tensor) and x.is_floating_point() and isinstance(y, torch.Tensor)
            and y.is_floating_point() and x.shape == y.shape)


def _scopes(node: fx.Node) -> set[str]:
    return {module_path(entry) for entry in (node.meta.get("nn_module_stack") or {}).values()}


def _innermost(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    return module_path(list(stack.values())[-1]) if stack else None


def _fed_by(node: fx.Node, path: str, excluded: set[str]) -> bool:
    """Whether a node of module ``path``'s scope, back from ``node``, reads a tensor computed in an
    ``excluded`` layer (a batch norm after a full-precision convolution)."""
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for arg in current.all_input_nodes:
            if path in _scopes(arg):
                todo.append(arg)
            elif _innermost(arg) in excluded:
                return True
    return False
