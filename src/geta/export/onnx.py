"""``geta.export_onnx``: a compact model as ONNX (opset 21) with integer weights and Q/DQ activations.

Weights. A quantized weight is x^Q = d * level with integer levels, so it is exported exactly as
``DequantizeLinear(levels, scale=d)`` (zero point 0, per axis when the quantizer is per channel) with
the levels in the smallest ONNX integer type that holds every channel's bits: INT4 up to 4 bits (opset
21; onnxruntime runs it), INT8 up to 8, INT16 up to 16, INT32 beyond.

Activations. An input quantizer computes sign(x) * d * min(round(c^t / d), N), c = min(|x|, q_m),
N = floor(q_m^t / d). With t == 1 that is exactly ``QuantizeLinear(x, d) -> DequantizeLinear -> Clip(-N d,
N d)`` (unsigned: Clip(0, N d)); the clip is needed because N is usually below the integer type's
limit. With t != 1 the levels are uniform in c^t, not in x, so the pair is applied to the warped input
``sign(x) * exp(t * log(min(|x|, q_m)))`` (unsigned: ``relu`` in place of ``|x|`` and no sign), which is
the quantizer's formula; onnxruntime's exp/log may differ from torch's in the last bit, which can move
an element to the neighbouring level. Activations take INT4/UINT4 up to 4 bits, INT8/UINT8 up to 8
and INT16/UINT16 up to 16; a quantizer of more than 16 bits (no such QuantizeLinear type) is exported as the same arithmetic
(Div, Round, Clip, Mul) without Q/DQ.

The model, of any module class, is traced by torch's TorchScript exporter (opset 20) with the quantizers as
placeholder nodes, which are then replaced by the patterns above in an opset-21 graph; ``onnx.checker``
must pass. What is traced is a deep copy of the model (the model itself is untouched), so no allow-list
of classes is involved.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta.errors import ModelError, SavedModelError
from geta.export.architecture import Description, describe
from geta.export.packed import quantized_levels
from geta.graph.inputs import ExampleInputs
from geta.quant.functional import top_level
from geta.quant.kernel import quantize
from geta.quant.prepare import INPUT_QUANTIZER
from geta.quant.quantizer import Quantizer

OPSET = 21
IR_VERSION = 10  # the first with INT4 / UINT4 (onnx 1.16); opset 21 belongs to it
_DOMAIN = "geta"


def export_onnx(model: nn.Module, example_inputs: object, path: str | os.PathLike) -> Path:
    """Write ``model`` (e.g. ``GETA.construct_subnet()``) to ``path`` as ONNX with Q/DQ, checked by onnx.checker.

    ``example_inputs``: a tensor, a tuple of positional tensors or a dict of keyword tensors. The first
    dimension of every input is exported as a dynamic batch dimension.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"geta.export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    inputs = ExampleInputs.from_user(example_inputs)
    description = describe(model)
    exportable = _exportable(model, description)
    exportable.eval()
    names = [f"input_{i}" for i in range(len(inputs.args))] + list(inputs.kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # grad mode (parameters require grad) keeps torch's fused inference kernels (nn.TransformerEncoderLayer's,
    # nn.MultiheadAttention's), which have no ONNX form, out of the trace
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            exportable, inputs.args, str(path), kwargs=inputs.kwargs or None, dynamo=False, opset_version=20,
            input_names=names, dynamic_axes={name: {0: "batch"} for name in names},
            custom_opsets={_DOMAIN: 1} if _has_quantizers(description) else None, do_constant_folding=True,
        )
    graph_model = onnx.load(str(path))
    _lower_placeholders(graph_model)
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))
    return path


def inference_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported model that computes in float32.

    onnxruntime's default graph optimizations turn DequantizeLinear(weights) -> MatMul into MatMulNBits
    and, by default (``session.qdq_matmulnbits_accuracy_level`` 4), quantize that matmul's input to int8
    on the fly, an error the torch model does not have (0.007 on outputs of size up to 2 in a 64 x 64
    test layer); this session sets the accuracy level to float32. ``threads`` sets intra-op threads (default: onnxruntime's).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _DequantizeWeight(torch.autograd.Function):
    """levels * scale in torch; a placeholder node (later DequantizeLinear) in the exported graph."""

    @staticmethod
    def forward(ctx, levels: Tensor, scale: Tensor, axis: int, bits: int, dtype: torch.dtype) -> Tensor:
        shape = [1] * levels.dim()
        if axis >= 0:
            shape[axis] = -1
        return (levels.to(scale.dtype) * scale.reshape(shape if axis >= 0 else ())).to(dtype)

    @staticmethod
    def symbolic(g, levels, scale, axis: int, bits: int, dtype: torch.dtype):
        out = g.op(f"{_DOMAIN}::DequantizeWeight", levels, scale, axis_i=axis, bits_i=bits)
        out.setType(levels.type().with_dtype(dtype))
        return out


class _QuantizeActivation(torch.autograd.Function):
    """The input quantizer in torch; a placeholder node (later the Q/DQ pattern) in the exported graph."""

    @staticmethod
    def forward(ctx, x: Tensor, d: float, q_m: float, t: float, top: int, signed: bool) -> Tensor:
        params = [torch.tensor(v, dtype=torch.float32) for v in (d, q_m, t)]
        return quantize(x, *params, signed=signed)

    @staticmethod
    def symbolic(g, x, d: float, q_m: float, t: float, top: int, signed: bool):
        out = g.op(f"{_DOMAIN}::QuantizeActivation", x, d_f=d, q_m_f=q_m, t_f=t, top_i=top, signed_i=int(signed))
        out.setType(x.type())
        return out


class _WeightLevels(nn.Module):
    """A parametrization returning a weight from integer levels and the step d (the original is ignored)."""

    def __init__(self, levels: Tensor, scale: Tensor, axis: int | None, bits: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("levels", levels)
        self.register_buffer("scale", scale)
        self.axis = -1 if axis is None else axis
        self.bits = bits
        self.dtype = dtype

    def forward(self, original: Tensor) -> Tensor:
        return _DequantizeWeight.apply(self.levels, self.scale, self.axis, self.bits, self.dtype)


class _ActivationQuantizer(nn.Module):
    """An input quantizer with its constrained parameters as constants, exportable as a placeholder."""

    def __init__(self, quantizer: Quantizer) -> None:
        super().__init__()
        d, q_m, t = (float(p.detach().float()) for p in quantizer.constrained_parameters())
        self.params = (d, q_m, t)
        self.top = int(top_level(torch.tensor(q_m, dtype=torch.float32) ** t / torch.tensor(d, dtype=torch.float32)))
        self.signed = quantizer.signed

    def forward(self, x: Tensor) -> Tensor:
        return _QuantizeActivation.apply(x, *self.params, self.top, self.signed)


def _exportable(model: nn.Module, description: Description) -> nn.Module:
    """A deep copy of ``model`` (described by ``description``) with each quantized weight computed from
    its integer levels and each input quantizer replaced by an exportable one."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # by hand: parametrize.remove_parametrizations would edit the parametrized class, which the copy
            # shares with ``model``
            chains = module._modules.pop("parametrizations")
            module.__class__ = type(module).__bases__[0]
            for attr, chain in chains.items():
                module.register_parameter(attr, chain.original)
    holders = _holders(model)
    for key, saved in description.tensors.items():
        if saved.quantizer is None:
            continue
        if saved.value.dtype != torch.float32:
            raise ModelError(f"{key} is {saved.value.dtype}; geta.export_onnx exports float32 models (call model.float())")
        levels = quantized_levels(saved)
        if not levels.signed:
            raise SavedModelError(f"{key}: unsigned weight quantizers are not exported to ONNX")
        container = _weight_container(max(levels.bits))[1]
        for module, attr in holders[key]:
            weights = _WeightLevels(levels.levels.to(container), levels.scale.clone(), levels.axis,
                                    max(levels.bits), saved.value.dtype)
            parametrize.register_parametrization(module, attr, weights, unsafe=True)
    for module in model.modules():
        quantizer = getattr(module, INPUT_QUANTIZER, None)
        if isinstance(quantizer, Quantizer):
            setattr(module, INPUT_QUANTIZER, _ActivationQuantizer(quantizer))
    return model


def _has_quantizers(description: Description) -> bool:
    return bool(description.input_quantizers) or any(s.quantizer is not None for s in description.tensors.values())


def _holders(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """(module, attribute) pairs holding each parameter, keyed by the parameter's first name."""
    first: dict[int, str] = {}
    found: dict[str, list[tuple[nn.Module, str]]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for attr, tensor in module._parameters.items():
            if tensor is None:
                continue
            key = first.setdefault(id(tensor), f"{path}.{attr}" if path else attr)
            if (module, attr) not in found.setdefault(key, []):
                found[key].append((module, attr))
    return found


def _weight_container(bits: int) -> tuple[int, torch.dtype]:
    """The ONNX type of a signed weight's levels, and the torch type they are traced in."""
    if bits <= 4:
        return TensorProto.INT4, torch.int8
    if bits <= 8:
        return TensorProto.INT8, torch.int8
    if bits <= 16:
        return TensorProto.INT16, torch.int16
    return TensorProto.INT32, torch.int32


def _activation_container(bits: int, signed: bool) -> int | None:
    """The ONNX integer type of an activation's levels, or None beyond 16 bits (no QuantizeLinear type)."""
    for limit, types in ((4, (TensorProto.INT4, TensorProto.UINT4)), (8, (TensorProto.INT8, TensorProto.UINT8)),
                         (16, (TensorProto.INT16, TensorProto.UINT16))):
        if bits <= limit:
            return types[0] if signed else types[1]
    return None


def _lower_placeholders(model: onnx.ModelProto) -> None:
    """Replace geta's placeholder nodes by standard opset-21 nodes, in place."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if node.domain != _DOMAIN:
            nodes.append(node)
        elif node.op_type == "DequantizeWeight":
            nodes.extend(_lower_weight(node, initializers, graph))
        elif node.op_type == "QuantizeActivation":
            nodes.extend(_lower_activation(node, f"geta_act{index}", graph))
        else:
            raise SavedModelError(f"unknown placeholder node {node.op_type}")
    del graph.node[:]
    graph.node.extend(nodes)
    opsets = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", _DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET), *opsets])
    model.ir_version = max(model.ir_version, IR_VERSION)


def _lower_weight(node: onnx.NodeProto, initializers: dict, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    levels_name, scale_name = (_constant_source(name, graph, initializers) for name in node.input)
    if levels_name not in initializers or scale_name not in initializers:
        raise SavedModelError(f"the levels of weight node {node.name} were not exported as constants")
    levels = numpy_helper.to_array(initializers[levels_name])
    onnx_type = _weight_container(int(attrs["bits"]))[0]
    replacement = helper.make_tensor(levels_name, onnx_type, levels.shape, levels.astype(np.int64).reshape(-1).tolist())
    initializers[levels_name].CopyFrom(replacement)
    scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float32)
    initializers[scale_name].CopyFrom(numpy_helper.from_array(scale, scale_name))
    extra = {"axis": int(attrs["axis"])} if int(attrs["axis"]) >= 0 else {}
    return [helper.make_node("DequantizeLinear", [levels_name, scale_name], list(node.output), name=node.name, **extra)]


def _constant_source(name: str, graph: onnx.GraphProto, initializers: dict) -> str:
    """The initializer behind ``name``, through the Identity nodes the exporter uses to share equal constants."""
    producers = {output: node for node in graph.node for output in node.output}
    while name not in initializers and name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    return name


def _lower_activation(node: onnx.NodeProto, prefix: str, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    d, q_m, t = (np.float32(attrs[k]) for k in ("d", "q_m", "t"))
    top, signed = int(attrs["top"]), bool(attrs["signed"])
    bits = int(np.ceil(np.log2(max(2 * top + 2 if signed else top + 1, 2))))
    (x,), (y,) = node.input, node.output
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"{prefix}_{name}"))
        return f"{prefix}_{name}"

    def add(op: str, inputs: list[str], name: str, **kwargs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{prefix}_{name}"], name=f"{prefix}_{name}", **kwargs))
        return f"{prefix}_{name}"

    warped = x
    if t != np.float32(1):
        magnitude = add("Abs" if signed else "Relu", [x], "magnitude")
        clipped = add("Min", [magnitude, constant("q_m", q_m)], "clipped")
        power = add("Exp", [add("Mul", [add("Log", [clipped], "log"), constant("t", t)], "t_log")], "power")
        warped = add("Mul", [add("Sign", [x], "sign"), power], "warped") if signed else power
    scale = constant("scale", d)
    low = constant("low", np.float32(-top) * d if signed else np.float32(0))
    high = constant("high", np.float32(top) * d)
    container = _activation_container(bits, signed)
    if container is None:
        levels = add("Round", [add("Div", [warped, scale], "ratio")], "levels")
        dequantized = add("Mul", [levels, scale], "dequantized")
    else:
        graph.initializer.append(helper.make_tensor(f"{prefix}_zero_point", container, [], [0]))
        zero = f"{prefix}_zero_point"
        quantized = add("QuantizeLinear", [warped, scale, zero], "quantized")
        dequantized = add("DequantizeLinear", [quantized, scale, zero], "dequantized")
    nodes.append(helper.make_node("Clip", [dequantized, low, high], [y], name=f"{prefix}_clip"))
    return nodes
