"""Which modules' outputs get a quantizer of their own (``GETA(..., quantize_residuals=True)``), and which layers
then read that quantized output as their input.

An integer runtime runs a convolution as an integer kernel only when its output is quantized as well
(onnxruntime's QLinearConv reads codes and writes codes), and a residual add as an integer add (QLinearAdd)
only when both its operands and its output are quantized. In a residual block the last convolution's
output (after its batch norm) goes into the add, where no layer's input quantizer sees it; and the
identity side of the add reads the previous block's output, which the next block's first convolution
quantizes with its own input quantizer, so the add reads the float value beside it. Quantizing such
tensors once, where they are produced, in the model that is trained gives the export a quantizer to fuse
each convolution and each add with, as onnxruntime's own ``quantize_static`` does.

The rule, on the captured graph of the model before its activation quantizers. A tensor T is a *source* when

1. T is an operand of an add or a subtraction of two same-shaped floating tensors (a residual add), the
   only input of at least two of the layers that get input quantizers (``readers``), or the input of an
   averaging pool (average or adaptive average pooling, a mean) whose output reaches one of ``readers``
   as that layer's only input through data-movement ops alone (flatten, view, reshape, squeeze, and
   dropout, the identity in eval mode): a
   *pooled* stream, such as the last block's output read by global pooling into the classifier. An
   integer runtime averages codes (onnxruntime's QLinearGlobalAveragePool, QLinearAveragePool) only when
   the pool's input is quantized, and the layer before the pool then runs as an integer kernel too (a max
   pooling needs no such quantizer: it selects values, so the export moves the reader's quantizer above it);
   or an input of a concatenation whose output reaches one of ``readers`` as its only input through
   data-movement ops and max poolings, or is the only input of at least two of them (a SqueezeNet fire
   module's or an Inception block's branches): onnxruntime concatenates codes (QLinearConcat) only when
   every input and the output are quantized, and each branch's last layer then runs as an integer kernel;
   or the output of a *kernel* (a convolution of ``readers``, not a transposed one, or a batch norm that alone
   reads one's output) that only functions an integer runtime computes in float read, directly or through
   permutations: sigmoid, hardsigmoid, tanh, SiLU, hardswish, GELU, ELU, SELU, CELU, Mish, softplus, leaky
   ReLU, layer and group norm (MobileNetV3's and EfficientNet's activations and squeeze-excitation gates,
   ConvNeXt's LayerNorm). No quantizer moves through these as one moves through a ReLU or a max pooling, and
   onnxruntime runs a convolution as an integer kernel only with its output quantized (QLinearConv), as its
   ``quantize_static`` quantizes it. A linear layer needs no such quantizer: onnxruntime multiplies its
   quantized input on integers into a float output (MatMulIntegerToFloat, QGemm), and fuses its bias into
   the GELU after it (BiasGelu), which a quantizer in between would break (measured on ConvNeXt: 18 more
   quantize/dequantize pairs, and slower). Likewise the ReLU of a kernel output that the ReLU alone reads,
   when only such functions, averaging pools of (1) and products read the ReLU's output: a squeeze-excitation
   input (RegNet-Y's, MobileNetV3's first block), which the pooling and ``x * gate`` read, and which no
   quantized layer reads, so nothing else would quantize that conv's output. None of these readers counts when
   the model returns its result (the last op before a model output never reads an added quantizer). A concatenation
   counts among such readers (it only moves values; onnxruntime joins the dequantized ones):
   a DenseNet layer's new features, which concatenations read for batch norms, or a ShuffleNet branch's; and so
   does an averaging or max pooling whose readers all are such and whose result the model does not return (a
   DenseNet transition's averaged conv output and its stem's max-pooled ReLU output, which only the next block's
   concatenations read);
2. T is the only output of a module P other than the root, called once: T is computed in P's scope (P is
   the innermost such module: a torchvision block whose output comes from the ReLU module it calls twice
   is P itself), nothing in P's scope reads it, and no other tensor computed in P's scope is read outside
   it. Or T is
   ``relu(y)`` computed outside any such module (a functional ReLU in a parent's forward, as in
   ``ResNet20``'s stem), y is P's only output in that sense and the ReLU alone reads it: P's quantizer is
   then unsigned, and ``Q(y) = Q(relu(y))`` (it maps negative values to level 0), which the ReLU leaves as
   it is, so T's readers read ``Q(relu(y))``;
3. P is not a layer kept at full precision (``excluded``); nor, when no layer of ``readers`` reads T, a
   batch norm fed by one (with readers, their input quantization only moves to P); and
4. every node that reads T is a residual add, a pooled reader, a concatenation or a float function of (1), or
   belongs to a layer of
   ``readers`` whose only input is T (so no full-precision layer and no other op is made to read a
   quantized value). A
   convolution's or batch norm's own output that goes into a residual add needs only (1)-(3), as before
   this rule covered more: its other readers then read the quantized value.

A layer whose only input is T through max poolings alone (an Inception block's pooling branch) counts as a
layer of ``readers`` whose only input is T, the poolings as part of it: a max pooling of quantized values
is quantized by the same quantizer (it selects levels), and the export leaves the pooling on codes.

5. Or, once the sources above are known: T is the output of a sigmoid or hardsigmoid module (a squeeze-excitation
   gate, torchvision's ``SqueezeExcitation.scale_activation``) that only products ``x * T`` read, each of whose
   ``x`` is quantized by a source found above and whose result reaches one of ``readers`` as its only input
   through data movement (the block's projection conv). T's quantizer is unsigned, and onnxruntime then runs
   the product on codes (QLinearMul) and a sigmoid gate too (QLinearSigmoid, its input being the gate conv's
   quantized output), as its ``quantize_static`` does; beside a float ``x`` (a hardswish output) a quantizer
   on T would buy no integer multiply, so T stays float.

P then gets an output quantizer (unsigned where T is provably non-negative, e.g. after a ReLU), and
the layers of (4) that read T take that quantizer as their input quantizer instead of quantizing T a
second time (see ``quant.prepare.share_input_quantizer``), so that every reader of T, the add included,
reads the same quantized tensor.

Not covered: a tensor computed in the root module's own forward other than the ReLU of a module's output
(``relu(x + y)`` or ``torch.sigmoid(y)`` there), which is no module's output, nor a tensor that is only one of
several outputs of a module, nor one read by anything but residual adds, pooled readers, concatenations,
float functions after a kernel and quantized layers, nor the inputs of a concatenation that a float op reads
(DenseNet's, which a batch norm reads) other than kernel outputs (1); these stay as before (the layers
reading them quantize them, the add, the pool or the concatenation reads the float value). A squeeze-excitation
product (``x * gate``) stays a float multiply between quantizers (no QLinearMul) unless (5) applies: its output
is quantized by the layer reading it. A functional gate (``torch.sigmoid`` in a parent's forward) is no module's
output, so (5) cannot give it a quantizer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from geta.graph.capture import module_path, op_of
from geta.graph.nonnegative import layer_inputs, nonnegative_nodes

aten = torch.ops.aten

_RESIDUAL_OPS = {aten.add, aten.add_, aten.sub, aten.sub_}
_RELUS = {aten.relu, aten.relu_}
_AVERAGING_POOLS = {
    aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d, aten.mean,
}
# ops that move or copy data, and dropout (the identity in the eval-mode graph; a reader beyond it keeps its own
# input quantizer, so a training-mode dropout's scaling is quantized there)
_DATA_MOVEMENT = {aten.flatten, aten.view, aten._unsafe_view, aten.reshape, aten.squeeze, aten.contiguous,
                  aten.clone, aten.dropout, aten.dropout_}
# functions an integer runtime computes in float, between a dequantization and a quantization: no quantizer moves
# through them (as one moves through a ReLU or a max pooling), so the kernel whose output one of them reads runs
# on integers only when that output has a quantizer of its own
_FLOAT_FUNCTIONS = {
    aten.sigmoid, aten.sigmoid_, aten.hardsigmoid, aten.hardsigmoid_, aten.tanh, aten.tanh_, aten.silu, aten.silu_,
    aten.hardswish, aten.hardswish_, aten.gelu, aten.gelu_, aten.elu, aten.elu_, aten.selu, aten.selu_, aten.celu,
    aten.celu_, aten.mish, aten.mish_, aten.softplus, aten.leaky_relu, aten.leaky_relu_, aten.layer_norm,
    aten.native_layer_norm, aten.group_norm, aten.native_group_norm,
}
_PERMUTATIONS = {aten.permute, aten.transpose}
_PRODUCTS = {aten.mul, aten.mul_}
_GATES = {aten.sigmoid, aten.sigmoid_, aten.hardsigmoid, aten.hardsigmoid_}
_CONVOLUTIONS = nn.modules.conv._ConvNd
_BATCH_NORMS = {aten.batch_norm, aten._native_batch_norm_legit_no_training}
_MAX_POOLS = {aten.max_pool1d, aten.max_pool2d, aten.max_pool3d}
_CONCATENATIONS = {aten.cat, aten.concat, aten.concatenate}
RESIDUAL_KINDS = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class Source:
    """A module whose output gets a quantizer: its ``name``, the layers (``readers``) whose only input is
    that output and that take the quantizer as their input quantizer, and whether the output is provably
    non-negative (``unsigned``: the quantizer is then unsigned)."""

    name: str
    readers: tuple[str, ...] = ()
    unsigned: bool = False


def residual_sources(
    program: torch.export.ExportedProgram, model: nn.Module, excluded: set[str], readers: Iterable[str] = (),
) -> list[Source]:
    """The sources of the captured ``program`` of ``model`` (see the module docstring), in module order.

    ``excluded`` names the layers kept at full precision, ``readers`` the layers that get input quantizers."""
    graph = program.graph
    modules = dict(model.named_modules())
    signature = program.graph_signature
    state = set(signature.inputs_to_parameters) | set(signature.inputs_to_buffers)
    state |= set(signature.inputs_to_lifted_tensor_constants)
    calls = _calls(graph)
    readers = list(readers)
    read_by: dict[fx.Node, list[str]] = defaultdict(list)
    for name in readers:
        inputs = layer_inputs(graph, name, state)
        if len(inputs) == 1 and calls.get(name) == 1:
            read_by[inputs[0]].append(name)
    pooled_readers: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for tensor in list(read_by):
        origin, first = tensor, None
        while op_of(origin) in _MAX_POOLS and isinstance(origin.args[0], fx.Node) and len(origin.users) == 1:
            origin, first = origin.args[0], origin
        if first is not None:
            read_by[origin].extend(read_by[tensor])
            pooled_readers[origin].append(first)
    adds: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if op_of(node) in _RESIDUAL_OPS:
            operands = [arg for arg in node.args[:2] if isinstance(arg, fx.Node)]
            if len(operands) == 2 and _same_shape(*operands):
                for operand in operands:
                    adds[operand].append(node)
    pools: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if (op_of(node) in _AVERAGING_POOLS and isinstance(node.args[0], fx.Node)
                and _reaches(node, read_by, _DATA_MOVEMENT)):
            pools[node.args[0]].append(node)
    cats: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if op_of(node) in _CONCATENATIONS and (len(read_by.get(node, [])) > 1
                                               or _reaches(node, read_by, _DATA_MOVEMENT | _MAX_POOLS)):
            for operand in _float_operands(node):
                cats[operand].append(node)
    convolutions = {name for name in readers if calls.get(name) == 1 and isinstance(modules.get(name), _CONVOLUTIONS)
                    and not isinstance(modules[name], nn.modules.conv._ConvTransposeNd)}
    kernels = {node for node in graph.nodes if (stack := _stack(node)) and stack[-1] in convolutions
               and any(stack[-1] not in _scopes(user) for user in node.users)}
    functions: dict[fx.Node, list[fx.Node]] = defaultdict(list)
    for tensor in graph.nodes:
        if not tensor.users:
            continue
        if _kernel_output(tensor, kernels):
            float_reads = all(_float_reader(user) for user in tensor.users)
        else:
            float_reads = _rectified_kernel_output(tensor, kernels) and all(
                user in pools.get(tensor, []) or (op_of(user) in _PRODUCTS and not _returned(user))
                or _float_reader(user) for user in tensor.users)
        if float_reads:
            functions[tensor].extend(tensor.users)
    gates = {node: list(node.users) for node in graph.nodes if op_of(node) in _GATES and node.users
             and all(_gated_operand(user, node, read_by) is not None for user in node.users)}
    shared = (node for node, names in read_by.items() if len(names) > 1)
    candidates = list(dict.fromkeys([*adds, *shared, *pools, *cats, *functions]))
    nonnegative = nonnegative_nodes(graph) if candidates else set()
    found: dict[str, Source] = {}
    for tensor in candidates:
        path, output, through_relu = _source_module(graph, tensor, modules, calls)
        if path is None or path in found or path in excluded:
            continue
        names = read_by.get(tensor, [])
        if not names and _fed_by(output, path, excluded):
            continue  # (3); with readers, their input quantization only moves to the source
        allowed = {*adds.get(tensor, []), *pools.get(tensor, []), *cats.get(tensor, []),
                   *pooled_readers.get(tensor, []), *functions.get(tensor, [])}
        only_adds_and_readers = all(user in allowed or any(name in _scopes(user) for name in names)
                                    for user in tensor.users)
        old_rule = not through_relu and isinstance(modules[path], RESIDUAL_KINDS) and tensor in adds
        if not only_adds_and_readers and not old_rule:
            continue  # (4); a conv's or batch norm's add operand needs only (1)-(3)
        found[path] = Source(path, tuple(names), through_relu or tensor in nonnegative)
    for gate, products in gates.items():  # (5), once the gated tensors' sources are known
        path = _module_output(graph, gate, modules, calls)
        gated = [_gated_operand(product, gate, read_by) for product in products]
        if path is None or path in found or path in excluded or not all(
                operand is not None and _source_module(graph, operand, modules, calls)[0] in found
                for operand in gated):
            continue
        found[path] = Source(path, (), True)
    return [found[name] for name in modules if name in found]


def _source_module(
    graph: fx.Graph, tensor: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]
) -> tuple[str | None, fx.Node, bool]:
    """The module whose output quantizer would quantize ``tensor`` (condition 2), the tensor it quantizes
    (``tensor``, or the ReLU's input for a functional ``relu(y)``), and whether it is reached through that ReLU."""
    path = _module_output(graph, tensor, modules, calls)
    if path is None and (relu := _relu_input(tensor)) is not None:
        return _module_output(graph, relu, modules, calls), relu, True
    return path, tensor, False


def _gated_operand(product: fx.Node, gate: fx.Node, read_by: dict[fx.Node, list[str]]) -> fx.Node | None:
    """For ``product = x * gate`` (either order) of two floating tensors, whose result the model does not return
    and which reaches a reader layer as its only input through data movement, ``x``; else None."""
    operands = product.args[:2]
    if (op_of(product) not in _PRODUCTS or len(operands) != 2 or gate not in operands or _returned(product)
            or not _reaches(product, read_by, _DATA_MOVEMENT)):
        return None
    other = operands[1] if operands[0] is gate else operands[0]
    if not isinstance(other, fx.Node) or other is gate:
        return None
    value = other.meta.get("val")
    return other if isinstance(value, torch.Tensor) and value.is_floating_point() else None


def _reaches(start: fx.Node, read_by: dict[fx.Node, list[str]], through: Collection[object]) -> bool:
    """Whether ``start``'s output is, through single-reader ops of ``through``, the only input of a reader layer."""
    node = start
    while node not in read_by:
        users = list(node.users)
        if len(users) != 1 or op_of(users[0]) not in through:
            return False
        node = users[0]
    return True


def _kernel_output(tensor: fx.Node, kernels: set[fx.Node]) -> bool:
    """Whether ``tensor`` is a reader layer's output (``kernels``), or a batch norm's of one that it alone reads."""
    if tensor in kernels:
        return True
    if op_of(tensor) not in _BATCH_NORMS:
        return False
    source = tensor.args[0] if tensor.args else None
    return isinstance(source, fx.Node) and source in kernels and list(source.users) == [tensor]


def _rectified_kernel_output(tensor: fx.Node, kernels: set[fx.Node]) -> bool:
    """Whether ``tensor`` is the ReLU of a kernel output (see :func:`_kernel_output`) that the ReLU alone reads."""
    rectified = _relu_input(tensor)
    return rectified is not None and _kernel_output(rectified, kernels)


def _returned(node: fx.Node) -> bool:
    """Whether the model returns ``node``'s result: a float reader whose result it returns does not count, so
    that the last op before a model output never reads an added quantizer."""
    return any(user.op == "output" for user in node.users)


def _joins(node: fx.Node) -> bool:
    """Whether ``node`` is a concatenation whose result the model does not return."""
    return op_of(node) in _CONCATENATIONS and not _returned(node)


def _float_reader(node: fx.Node) -> bool:
    """Whether ``node`` reads its input in float: a concatenation (:func:`_joins`), a function of
    ``_FLOAT_FUNCTIONS`` (:func:`_reaches_function`), or a pooling (averaging or max) whose readers all
    are such, none of whose results the model returns (a DenseNet transition's ``avg_pool(conv(x))``
    into the next block's concatenations, or its stem's ``max_pool(relu(bn(conv(x))))``)."""
    if op_of(node) in _AVERAGING_POOLS | _MAX_POOLS:
        return bool(node.users) and not _returned(node) and all(_float_reader(user) for user in node.users)
    return _joins(node) or _reaches_function(node)


def _reaches_function(node: fx.Node) -> bool:
    """Whether ``node`` is, or leads through single-reader permutations to, a function of ``_FLOAT_FUNCTIONS``
    whose result the model does not return."""
    while op_of(node) in _PERMUTATIONS and len(node.users) == 1:
        node = next(iter(node.users))
    return op_of(node) in _FLOAT_FUNCTIONS and not _returned(node)


def _float_operands(cat: fx.Node) -> list[fx.Node]:
    """The tensors a concatenation joins, when they are all floating nodes (else none)."""
    tensors = cat.args[0] if cat.args and isinstance(cat.args[0], (list, tuple)) else []
    values = [t.meta.get("val") if isinstance(t, fx.Node) else None for t in tensors]
    if not tensors or not all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in values):
        return []
    return [t for t in tensors if isinstance(t, fx.Node)]


def _module_output(
    graph: fx.Graph, tensor: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]
) -> str | None:
    """The innermost module (not the root) called once whose one output is ``tensor``, or None (condition 2).

    Innermost first, then outwards: a torchvision ``BasicBlock`` computes its output in ``self.relu``, a module
    it calls twice (one hook would quantize both calls), so the block itself, called once, is the module
    whose only output that is."""
    for path in reversed(_stack(tensor)):
        if calls.get(path) != 1 or path not in modules:
            continue
        if any(path in _scopes(user) for user in tensor.users) or _outputs(graph, path) != [tensor]:
            continue
        return path
    return None


def _relu_input(tensor: fx.Node) -> fx.Node | None:
    """For ``tensor = relu(y)`` with ``y`` read by that ReLU alone, ``y``; else None.

    Where ``tensor`` is no module's output (a functional ReLU in a parent's forward) but ``y`` is, an unsigned
    quantizer on ``y`` outputs ``Q(y) = Q(relu(y))`` (it maps negative values to level 0), which the ReLU then
    leaves as it is: every reader of ``tensor`` reads ``Q(relu(y))``, as if the ReLU's output were quantized."""
    if op_of(tensor) not in _RELUS:
        return None
    inputs = tensor.all_input_nodes
    return inputs[0] if len(inputs) == 1 and list(inputs[0].users) == [tensor] else None


def _calls(graph: fx.Graph) -> dict[str, int]:
    """How many times each module is called in ``graph`` (its distinct ``nn_module_stack`` keys)."""
    keys: dict[str, set[str]] = defaultdict(set)
    for node in graph.nodes:
        for key, entry in (node.meta.get("nn_module_stack") or {}).items():
            keys[module_path(entry)].add(key)
    return {path: len(found) for path, found in keys.items()}


def _outputs(graph: fx.Graph, path: str) -> list[fx.Node]:
    """The nodes computed in module ``path``'s scope that something outside it reads (its outputs)."""
    return [node for node in graph.nodes if path in _scopes(node)
            and any(path not in _scopes(user) for user in node.users)]


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    x, y = a.meta.get("val"), b.meta.get("val")
    return (isinstance(x, torch.Tensor) and x.is_floating_point() and isinstance(y, torch.Tensor)
            and y.is_floating_point() and x.shape == y.shape)


def _scopes(node: fx.Node) -> set[str]:
    return {module_path(entry) for entry in (node.meta.get("nn_module_stack") or {}).values()}


def _stack(node: fx.Node) -> list[str]:
    """The paths of the modules whose scope computes ``node``, outermost first, the root left out."""
    return [path for entry in (node.meta.get("nn_module_stack") or {}).values() if (path := module_path(entry))]


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
            elif (stack := _stack(arg)) and stack[-1] in excluded:
                return True
    return False
