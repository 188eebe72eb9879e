"""``geta.export_onnx``: a compact model as ONNX (opset 21) with integer weights and Q/DQ activations, laid
out so that onnxruntime runs integer kernels wherever the model's own quantizers allow it.

Weights. A quantized weight is x^Q = d * level with integer levels, stored as those levels (raw bytes) and
the step d. Levels of up to 8 bits are INT8 (the type of onnxruntime's integer kernels); with
``weights="int4"`` levels of up to 4 bits are INT4 instead, half the bytes but read by no integer kernel.
Beyond 8 bits they are INT16, beyond 16 INT32. The weight is ``DequantizeLinear(levels, d)`` (zero point 0,
per axis when the quantizer is per channel), except in a layer that reads a quantized input but is not
fused into an integer kernel (below): there it is ``Cast(levels) * d``, which onnxruntime folds into a
float constant when a session starts (it never folds a DequantizeLinear, whose float op would recompute it
on every run). Both give level * d exactly as torch does.

Batch norm. An eval-mode BatchNormalization that alone reads the output of a Conv or Gemm, an output
that feeds nothing else, is folded into it: with f = gamma / sqrt(var + eps) per channel, the step of
channel c becomes d_c |f_c| (its levels negated where f_c < 0, so they stay exact) and the bias
(b - mean) f + beta.

Activations. An input quantizer computes sign(x) * d * min(round(c^t / d), N), c = min(|x|, q_m),
N = floor(q_m^t / d) (a two's-complement one, ``exponent="fixed"``, reaches -(N + 1) d below zero). With
t = 1 that is ``QuantizeLinear(x, d, z) -> Clip -> DequantizeLinear(d, z)`` with the Clip on the integer
codes: [z - N, z + N] (two's complement: [z - N - 1, z + N]; unsigned: [0, N]). Up to 8 bits the codes are
UINT8, z = 128 for a signed quantizer and 0 for an unsigned one, and the Clip is left out where it is the
whole UINT8 range (every 8-bit quantizer of an ``exponent="fixed"`` run: QuantizeLinear's saturation is
then the quantizer's clip); clipping the codes between Q and DQ keeps the DQ a direct input of the next op
and the Q a direct output of the previous one, which onnxruntime's QDQ fusion needs. Beyond 8 bits (INT16 /
UINT16, z = 0; onnxruntime has no 16-bit integer Clip) the input is clipped to [-N d, N d] (two's
complement: [-(N + 1) d, N d]) before Q instead, the same function: N d / d rounds to N. Beyond 16 bits (no
QuantizeLinear type) the same arithmetic is
exported as Clip, Div, Round and Mul. With t != 1 the levels are uniform in c^t, not in x, so Q is
applied to the warped input ``sign(x) * exp(t * log(min(|x|, q_m)))`` (unsigned: ``relu`` in place of
``|x|`` and no sign), the quantizer's own formula.

Integer kernels (onnxruntime's CPU provider with its default graph optimizations). Quantizers are first
moved above the data-movement ops that feed them alone (Flatten, Reshape, Transpose, Squeeze, Unsqueeze,
MaxPool: the same codes either way). A Conv then runs as QLinearConv when its input is an activation
quantized to at most 8 bits, its weight is INT8 and its output (batch norm folded) feeds only a quantizer
of at most 8 bits, directly or through a Relu (then an unsigned one); a Gemm runs as QGemm and a MatMul as
MatMulIntegerToFloat whenever their input is such an activation. An Add (a residual add) runs as QLinearAdd
when both its operands are such activations and its output feeds only such a quantizer, directly or
through a Relu; a GlobalAveragePool (a ReduceMean over the axes after the channel axis is written as one)
runs as QLinearGlobalAveragePool between such quantizers. With ``GETA(..., quantize_residuals=True)`` the
conv outputs going into an add, the block outputs read by the next block's add and convs, and the streams
an averaging pool reads into a quantized layer carry output quantizers, one per tensor, whose
DequantizeLinear every reader shares (``geta.graph.residual``); a layer that reads such a tensor has no
Q/DQ of its own, so its input is quantized once. A Relu that reads a DequantizeLinear of unsigned codes
(zero point 0) changes nothing and is dropped, so that its readers read the DequantizeLinear (a functional
ReLU after a module with an unsigned output quantizer leaves one). Everything else computes in float on
the exact quantized values: an add whose operand is not quantized, for instance, which the torch model adds in float.

Which export is exact for which quantizer:

* t = 1 (``GETA(..., exponent="fixed")``): the graph computes the torch model's function, up to float
  rounding (summation order, the folded batch norm) and the int32 bias that onnxruntime gives a fused
  kernel (the float bias rounded to a multiple of the input step times the weight step), either of which
  can move an activation lying on a level boundary to the neighbouring level. Integer kernels apply as
  above.
* t != 1 (``exponent="learned"``): the warped-input pattern. The warp runs in float before each Q, and
  onnxruntime's exp/log may differ from torch's in the last bit, which can move an element to the
  neighbouring level. The levels a quantizer outputs are still uniform, so a MatMul or Gemm reading them
  still runs an integer kernel, but a Conv whose output feeds a warped quantizer (the warp lies between)
  runs in float.
* Weights only (float activations): exact weights and float activations, no integer speed claimed.

The model, of any module class, is traced by torch's TorchScript exporter (opset 20) with the quantizers as
placeholder nodes, which are then replaced by the patterns above in an opset-21 graph; ``onnx.checker``
must pass. What is traced is a deep copy of the model (the model itself is untouched), so no allow-list
of classes is involved.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta.core.inputs import ExampleInputs
from geta.errors import ConfigError, ModelError, SavedModelError
from geta.export.architecture import Description, describe
from geta.export.packed import quantized_levels
from geta.quant.functional import top_level
from geta.quant.kernel import quantize
from geta.quant.prepare import INPUT_QUANTIZER, OUTPUT_QUANTIZER
from geta.quant.quantizer import Quantizer

OPSET = 21
IR_VERSION = 10  # the first with INT4 / UINT4 (onnx 1.16); opset 21 belongs to it
_DOMAIN = "geta"
WeightFormat = Literal["int8", "int4"]
_WEIGHT_FORMATS = ("int8", "int4")
# ops that only move or select values: quantizing before them gives the same codes as after them
_DATA_MOVEMENT = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")


def export_onnx(
    model: nn.Module, example_inputs: object, path: str | os.PathLike, *, weights: WeightFormat = "int8"
) -> Path:
    """Write ``model`` (e.g. ``GETA.construct_subnet()``) to ``path`` as ONNX with Q/DQ, checked by onnx.checker.

    ``example_inputs``: a tensor, a tuple of positional tensors or a dict of keyword tensors. The first
    dimension of every input is exported as a dynamic batch dimension. ``weights``: ``"int8"`` (levels of
    up to 8 bits as INT8, which onnxruntime's integer kernels read) or ``"int4"`` (levels of up to 4 bits
    as INT4: a smaller file, but those weights compute in float).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"geta.export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    if weights not in _WEIGHT_FORMATS:
        raise ConfigError(f"weights={weights!r} is not a format; use one of {', '.join(map(repr, _WEIGHT_FORMATS))}")
    inputs = ExampleInputs.from_user(example_inputs)
    description = describe(model)
    exportable = _exportable(model, description, weights)
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
    graph = _Graph(graph_model.graph)
    _means_as_global_pools(graph, graph_model)
    _hoist_quantizers(graph)
    _clips_as_relus(graph)
    _drop_relus_of_unsigned_codes(graph)
    _transpose_weight_levels(graph)
    _fold_batch_norms(graph)
    _place_weights(graph)
    graph.remove_unused()
    onnx.checker.check_model(graph_model, full_check=True)
    onnx.save(graph_model, str(path))
    return path


def inference_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported model, with float32 where the model computes in float.

    onnxruntime's default graph optimizations turn DequantizeLinear(weights) -> MatMul with a float input
    (a weight-only model) into MatMulNBits and, by default (``session.qdq_matmulnbits_accuracy_level`` 4),
    quantize that matmul's input to int8 on the fly, an error the torch model does not have (0.007 on
    outputs of size up to 2 in a 64 x 64 test layer); this session sets the accuracy level to float32.
    Inputs that the model itself quantizes run in onnxruntime's integer kernels regardless. ``threads``
    sets intra-op threads (default: onnxruntime's).
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
    def forward(ctx, levels: Tensor, scale: Tensor, axis: int, container: int, dtype: torch.dtype) -> Tensor:
        shape = [1] * levels.dim()
        if axis >= 0:
            shape[axis] = -1
        return (levels.to(scale.dtype) * scale.reshape(shape if axis >= 0 else ())).to(dtype)

    @staticmethod
    def symbolic(g, levels, scale, axis: int, container: int, dtype: torch.dtype):
        out = g.op(f"{_DOMAIN}::DequantizeWeight", levels, scale, axis_i=axis, container_i=container)
        out.setType(levels.type().with_dtype(dtype))
        return out


class _QuantizeActivation(torch.autograd.Function):
    """The input quantizer in torch; a placeholder node (later the Q/DQ pattern) in the exported graph."""

    @staticmethod
    def forward(ctx, x: Tensor, d: float, q_m: float, t: float, top: int, signed: bool, extra: bool) -> Tensor:
        d_t, q_m_t, t_t = (torch.tensor(v, dtype=torch.float32) for v in (d, q_m, t))
        return quantize(x, d_t, q_m_t, t_t, signed=signed, twos_complement=extra)

    @staticmethod
    def symbolic(g, x, d: float, q_m: float, t: float, top: int, signed: bool, extra: bool):
        out = g.op(f"{_DOMAIN}::QuantizeActivation", x, d_f=d, q_m_f=q_m, t_f=t, top_i=top, signed_i=int(signed),
                   extra_i=int(extra))
        out.setType(x.type())
        return out


class _WeightLevels(nn.Module):
    """A parametrization returning a weight from integer levels and the step d (the original is ignored)."""

    def __init__(self, levels: Tensor, scale: Tensor, axis: int | None, container: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("levels", levels)
        self.register_buffer("scale", scale)
        self.axis = -1 if axis is None else axis
        self.container = container
        self.dtype = dtype

    def forward(self, original: Tensor) -> Tensor:
        return _DequantizeWeight.apply(self.levels, self.scale, self.axis, self.container, self.dtype)


class _ActivationQuantizer(nn.Module):
    """An input quantizer with its constrained parameters as constants, exportable as a placeholder."""

    def __init__(self, quantizer: Quantizer) -> None:
        super().__init__()
        d, q_m, t = (float(p.detach().float()) for p in quantizer.constrained_parameters())
        self.params = (d, q_m, t)
        self.top = int(top_level(torch.tensor(q_m, dtype=torch.float32) ** t / torch.tensor(d, dtype=torch.float32)))
        self.signed = quantizer.signed
        self.extra = quantizer.twos_complement

    def forward(self, x: Tensor) -> Tensor:
        return _QuantizeActivation.apply(x, *self.params, self.top, self.signed, self.extra)


def _exportable(model: nn.Module, description: Description, weights: WeightFormat) -> nn.Module:
    """A deep copy of ``model`` (described by ``description``) with each quantized weight computed from
    its integer levels and each input quantizer replaced by an exportable one."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # by hand: parametrize.remove_parametrizations would edit the parametrized class, which the copy
            # shares with ``model``
            chains = cast(nn.ModuleDict, module._modules.pop("parametrizations"))
            module.__class__ = type(module).__bases__[0]
            for attr, chain in chains.items():
                module.register_parameter(attr, cast(nn.Parameter, chain.original))  # register_parameter checks it
    holders = _holders(model)
    for key, saved in description.tensors.items():
        if saved.quantizer is None:
            continue
        if saved.value.dtype != torch.float32:
            raise ModelError(
                f"{key} is {saved.value.dtype}; geta.export_onnx exports float32 models (call model.float())"
            )
        levels = quantized_levels(saved)
        if not levels.signed:
            raise SavedModelError(f"{key}: unsigned weight quantizers are not exported to ONNX")
        container, traced = _weight_container(max(levels.bits), weights)
        for module, attr in holders[key]:
            parametrization = _WeightLevels(levels.levels.to(traced), levels.scale.clone(), levels.axis, container,
                                            saved.value.dtype)
            parametrize.register_parametrization(module, attr, parametrization, unsafe=True)
    exportable: dict[int, _ActivationQuantizer] = {}  # a shared input quantizer is its producer's output one
    for module in list(model.modules()):
        for attr in (INPUT_QUANTIZER, OUTPUT_QUANTIZER):
            quantizer = getattr(module, attr, None)
            if isinstance(quantizer, Quantizer):
                setattr(module, attr, exportable.setdefault(id(quantizer), _ActivationQuantizer(quantizer)))
    return model


def _has_quantizers(description: Description) -> bool:
    return bool(description.activation_quantizers) or any(s.quantizer is not None for s in description.tensors.values())


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


def _weight_container(bits: int, weights: WeightFormat) -> tuple[int, torch.dtype]:
    """The ONNX type of a signed weight's levels, and the torch type they are traced in."""
    if bits <= 4 and weights == "int4":
        return TensorProto.INT4, torch.int8
    if bits <= 8:
        return TensorProto.INT8, torch.int8
    if bits <= 16:
        return TensorProto.INT16, torch.int16
    return TensorProto.INT32, torch.int32


def _activation_container(bits: int, signed: bool) -> tuple[int, int] | None:
    """The ONNX integer type of an activation's codes and its zero point, or None beyond 16 bits (no
    QuantizeLinear type). Up to 8 bits UINT8 for both signs (onnxruntime's integer kernels take UINT8
    activations), a signed quantizer's levels -N..N offset by 128."""
    if bits <= 8:
        return TensorProto.UINT8, 0 if not signed else 128
    if bits <= 16:
        return (TensorProto.INT16 if signed else TensorProto.UINT16), 0
    return None


def _integer_tensor(name: str, values: np.ndarray, onnx_type: int) -> TensorProto:
    """``values`` as an ONNX tensor of ``onnx_type`` stored as raw bytes (INT4 packed two to a byte)."""
    return numpy_helper.from_array(np.asarray(values).astype(helper.tensor_dtype_to_np_dtype(onnx_type)), name)


def _lower_placeholders(model: onnx.ModelProto) -> None:
    """Replace geta's placeholder nodes by standard opset-21 nodes, in place."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if node.domain != _DOMAIN:
            nodes.append(node)
        elif node.op_type == "DequantizeWeight":
            nodes.append(_lower_weight(node, initializers, producers))
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


def _lower_weight(node: onnx.NodeProto, initializers: dict, producers: dict) -> onnx.NodeProto:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    levels_name, scale_name = (_constant_source(name, producers, initializers) for name in node.input)
    if levels_name not in initializers or scale_name not in initializers:
        raise SavedModelError(f"the levels of weight node {node.name} were not exported as constants")
    levels = numpy_helper.to_array(initializers[levels_name])
    initializers[levels_name].CopyFrom(_integer_tensor(levels_name, levels, int(attrs["container"])))
    scale = numpy_helper.to_array(initializers[scale_name]).astype(np.float32)
    initializers[scale_name].CopyFrom(numpy_helper.from_array(scale, scale_name))
    extra: dict[str, Any] = {"axis": int(attrs["axis"])} if int(attrs["axis"]) >= 0 else {}
    return helper.make_node("DequantizeLinear", [levels_name, scale_name], list(node.output), name=node.name, **extra)


def _constant_source(name: str, producers: dict, initializers: dict) -> str:
    """The initializer behind ``name``, through the Identity nodes the exporter uses to share equal constants."""
    while name not in initializers and name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    return name


def _lower_activation(node: onnx.NodeProto, prefix: str, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    d, q_m, t = (np.float32(attrs[k]) for k in ("d", "q_m", "t"))
    top, signed, extra = int(attrs["top"]), bool(attrs["signed"]), int(attrs["extra"])
    bits = int(np.ceil(np.log2(max(2 * top + 2 if signed else top + 1, 2))))
    (x,), (y,) = node.input, node.output
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"{prefix}_{name}"))
        return f"{prefix}_{name}"

    def add(op: str, inputs: list[str], name: str, output: str | None = None, **kwargs) -> str:
        output = output or f"{prefix}_{name}"
        nodes.append(helper.make_node(op, inputs, [output], name=f"{prefix}_{name}", **kwargs))
        return output

    warped = x
    if t != np.float32(1):
        magnitude = add("Abs" if signed else "Relu", [x], "magnitude")
        clipped = add("Min", [magnitude, constant("q_m", q_m)], "clipped")
        power = add("Exp", [add("Mul", [add("Log", [clipped], "log"), constant("t", t)], "t_log")], "power")
        warped = add("Mul", [add("Sign", [x], "sign"), power], "warped") if signed else power
    scale = constant("scale", d)
    container = _activation_container(bits, signed)
    if container is not None and container[0] == TensorProto.UINT8:
        zero = container[1]
        zero_point = constant("zero_point", np.uint8(zero))
        codes = add("QuantizeLinear", [warped, scale, zero_point], "quantized")
        code_low, code_high = zero - top - extra if signed else 0, zero + top
        if (code_low, code_high) != (0, 255):
            codes = add("Clip", [codes, constant("low", np.uint8(code_low)), constant("high", np.uint8(code_high))],
                        "clip")
        add("DequantizeLinear", [codes, scale, zero_point], "dequantized", output=y)
        return nodes
    low = constant("low", np.float32(-top - extra) * d if signed else np.float32(0))
    clipped = add("Clip", [warped, low, constant("high", np.float32(top) * d)], "clip")
    if container is None:
        levels = add("Round", [add("Div", [clipped, scale], "ratio")], "levels")
        add("Mul", [levels, scale], "dequantized", output=y)
    else:
        zero_dtype = helper.tensor_dtype_to_np_dtype(container[0])
        zero_point = constant("zero_point", np.asarray(container[1], dtype=zero_dtype))
        codes = add("QuantizeLinear", [clipped, scale, zero_point], "quantized")
        add("DequantizeLinear", [codes, scale, zero_point], "dequantized", output=y)
    return nodes


@dataclass
class _Weight:
    """A DequantizeLinear of constant levels: the node, its levels (int64), scale (float32), axis (None
    per tensor) and the ONNX type of the levels."""

    node: onnx.NodeProto
    levels: np.ndarray
    scale: np.ndarray
    axis: int | None
    onnx_type: int

    def channel_scale(self, axis: int) -> np.ndarray:
        """The scale of each channel along ``axis``."""
        if self.axis is None:
            return np.full(self.levels.shape[axis], self.scale, dtype=np.float32)
        return self.scale


class _Graph:
    """An ONNX graph with its initializers, producers and consumers, for the rewrites below (which call
    :meth:`refresh` after changing nodes)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.refresh()

    def nodes(self) -> list[onnx.NodeProto]:
        """The nodes, as a list (a copy: the rewrites change the graph while they go through it)."""
        return list(self.graph.node)

    def refresh(self) -> None:
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.producers = {output: node for node in self.graph.node for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        # names read where ``consumers`` does not see them: graph outputs and subgraphs (If, Loop)
        self.pinned = {output.name for output in self.graph.output} | _subgraph_reads(self.graph)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a Constant node's tensor (read through Identity
        nodes), else None."""
        name = _constant_source(name, self.producers, self.initializers)
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The node reading ``name`` if exactly one does and nothing else (a graph output) reads it."""
        consumers = self.consumers.get(name, [])
        return consumers[0] if len(consumers) == 1 and name not in self.pinned else None

    def add_constant(self, value: np.ndarray, base: str, onnx_type: int | None = None) -> str:
        """A new initializer holding ``value`` (as ``onnx_type`` when given), named after ``base``."""
        name, count = base, 0
        while name in self.initializers:
            count += 1
            name = f"{base}_{count}"
        value = np.asarray(value)
        tensor = numpy_helper.from_array(value, name) if onnx_type is None else _integer_tensor(name, value, onnx_type)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def weight(self, node: onnx.NodeProto | None) -> _Weight | None:
        """The weight ``node`` dequantizes, if it is a DequantizeLinear of constant integer levels."""
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) > 2:
            return None
        source = _constant_source(node.input[0], self.producers, self.initializers)
        scale = self.constant(node.input[1])
        if source not in self.initializers or self.initializers[source].data_type not in _WEIGHT_TYPES or scale is None:
            return None
        levels = numpy_helper.to_array(self.initializers[source]).astype(np.int64)
        axis = int(_attribute(node, "axis", 1)) % levels.ndim if scale.ndim else None
        return _Weight(node, levels, scale.astype(np.float32), axis, self.initializers[source].data_type)

    def replace(self, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        """Put ``new`` in the node list where ``old`` is."""
        index = list(self.graph.node).index(old)
        del self.graph.node[index]
        for offset, node in enumerate(new):
            self.graph.node.insert(index + offset, node)

    def remove_unused(self) -> None:
        """Drop the nodes whose outputs nothing reads, then the initializers nothing reads, and the
        value_info of tensors (some changed or are gone)."""
        while True:
            self.refresh()
            dead = [node for node in self.graph.node
                    if not any(self.consumers.get(output) or output in self.pinned for output in node.output)]
            if not dead:
                break
            for node in dead:
                self.graph.node.remove(node)
        used = set(self.consumers) | self.pinned
        kept = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        del self.graph.value_info[:]


_WEIGHT_TYPES = (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name that a subgraph of a node of ``graph`` reads (an If's branches, a Loop's body)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for subgraph in subgraphs:
                names |= {name for inner in subgraph.node for name in inner.input} | _subgraph_reads(subgraph)
    return names


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of ``node`` (its type is the attribute's), else ``default``."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _along(values: np.ndarray, axis: int, dims: int) -> np.ndarray:
    """``values`` (one per channel) shaped to broadcast along ``axis`` of a ``dims``-dimensional tensor."""
    shape = [1] * dims
    shape[axis] = -1
    return values.reshape(shape)


def _means_as_global_pools(graph: _Graph, model: onnx.ModelProto) -> None:
    """Write each ReduceMean over every axis after the channel axis (``x.mean((2, 3))``) of a dequantized
    input as GlobalAveragePool, followed by a Flatten(axis=1) where it drops the reduced axes: the same mean,
    which onnxruntime runs on the codes (QLinearGlobalAveragePool) when a quantizer reads its output, as it
    does for ``nn.AdaptiveAvgPool2d(1)``. The input's rank comes from ONNX shape inference; a mean whose rank
    or axes are not known stays as it is."""
    means = [node for node in graph.nodes() if node.op_type == "ReduceMean" and len(node.input) == 2
             and (producer := graph.producers.get(node.input[0])) is not None
             and producer.op_type == "DequantizeLinear"]
    if not means:
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {value.name: len(value.type.tensor_type.shape.dim) for value in inferred.graph.value_info
             if value.type.tensor_type.HasField("shape")}
    for mean in means:
        rank, axes = ranks.get(mean.input[0]), graph.constant(mean.input[1])
        if rank is None or rank < 3 or axes is None or sorted(int(a) % rank for a in axes.ravel()) != [
                *range(2, rank)]:
            continue
        keep = bool(_attribute(mean, "keepdims", 1))
        pooled = mean.output[0] if keep else f"{mean.output[0]}_pooled"
        nodes = [helper.make_node("GlobalAveragePool", [mean.input[0]], [pooled], name=f"{mean.name}_pool")]
        if not keep:
            nodes.append(helper.make_node("Flatten", [pooled], [mean.output[0]], name=f"{mean.name}_flatten",
                                          axis=1))
        graph.replace(mean, nodes)
    graph.refresh()


def _hoist_quantizers(graph: _Graph) -> None:
    """Move each activation QuantizeLinear above the data-movement ops (``_DATA_MOVEMENT``) that feed it
    alone, so that it directly follows the op computing its input (which can then be fused with it); the
    codes are the same, quantization being monotone and elementwise. A constant Pad of zeros moves too when
    the zero point is 0 (``Q(0)`` is code 0, so the padded codes are the codes padded with 0): a pad before
    each conv, as in TensorFlow-style "same" padding, would otherwise keep the conv before it in float."""
    for q in [node for node in graph.nodes() if node.op_type == "QuantizeLinear"]:
        scale = graph.constant(q.input[1])
        zero = graph.constant(q.input[2]) if len(q.input) > 2 else None
        while scale is not None and scale.ndim == 0:
            mover = graph.producers.get(q.input[0])
            padding = mover is not None and zero is not None and not np.any(zero) and _zero_pad(graph, mover)
            if mover is None or (mover.op_type not in _DATA_MOVEMENT and not padding) or len(mover.output) != 1 \
                    or graph.only_consumer(mover.output[0]) is not q:
                break
            if padding and zero is not None and len(mover.input) > 2 and mover.input[2]:
                mover.input[2] = graph.add_constant(np.zeros((), zero.dtype), f"{mover.name}_zero_code")
            codes = q.output[0]
            q.input[0], q.output[0] = mover.input[0], f"{codes}_before_{mover.op_type}"
            mover.input[0], mover.output[0] = q.output[0], codes
            moved = copy.deepcopy(mover)  # the mover now reads q: it goes right after q
            graph.graph.node.remove(mover)
            graph.graph.node.insert(list(graph.graph.node).index(q) + 1, moved)
            graph.refresh()


def _zero_pad(graph: _Graph, node: onnx.NodeProto) -> bool:
    """Whether ``node`` is a Pad in constant mode whose padding value is 0 (given as a constant, or left out)."""
    if node.op_type != "Pad" or _attribute(node, "mode", b"constant") != b"constant":
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    value = graph.constant(node.input[2])
    return value is not None and value.size == 1 and float(value.reshape(())) == 0.0


def _clips_as_relus(graph: _Graph) -> None:
    """Turn each ``Clip(x, 0, c)`` (ReLU6 and kin) that alone feeds an unsigned UINT8 QuantizeLinear (zero
    point 0, step d) into a ``Relu`` with the codes clipped at ``round(c / d)``: rounding is monotone, so
    ``Q(min(relu(x), c)) = min(Q(relu(x)), Q(c))``, the same codes, and onnxruntime fuses a Relu before
    such a quantizer into the op before it (a QLinearConv), which it does not do for the Clip."""
    for clip in [node for node in graph.nodes() if node.op_type == "Clip"]:
        q = graph.only_consumer(clip.output[0])
        bounds = ([b for name in clip.input[1:3] if (b := graph.constant(name)) is not None]
                  if len(clip.input) == 3 else [])
        if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3 or len(bounds) != 2:
            continue
        scale, zero = graph.constant(q.input[1]), graph.constant(q.input[2])
        low, high = (float(b) for b in bounds)
        if scale is None or scale.ndim or zero is None or zero.dtype != np.uint8 or int(zero) or low != 0 or high <= 0:
            continue
        top = int(min(np.rint(np.float32(high) / np.float32(scale)), 255))
        codes = graph.only_consumer(q.output[0])
        graph.replace(clip, [helper.make_node("Relu", [clip.input[0]], list(clip.output), name=f"{clip.name}_relu")])
        graph.refresh()
        if codes is not None and codes.op_type == "Clip" and len(codes.input) == 3:
            current = graph.constant(codes.input[2])
            if current is not None and int(current) > top:
                codes.input[2] = graph.add_constant(np.uint8(top), f"{q.output[0]}_top")
        elif top < 255:
            clipped = f"{q.output[0]}_clipped"
            for consumer in graph.consumers.get(q.output[0], []):
                consumer.input[:] = [clipped if name == q.output[0] else name for name in consumer.input]
            index = list(graph.graph.node).index(q)
            graph.graph.node.insert(index + 1, helper.make_node(
                "Clip", [q.output[0], graph.add_constant(np.uint8(0), f"{q.output[0]}_low"),
                         graph.add_constant(np.uint8(top), f"{q.output[0]}_top")], [clipped], name=clipped))
        graph.refresh()


def _drop_relus_of_unsigned_codes(graph: _Graph) -> None:
    """Remove each Relu that reads a DequantizeLinear of unsigned codes with zero point 0 (values >= 0, which it
    leaves as they are): its readers read the DequantizeLinear instead, which onnxruntime's QDQ fusion needs.
    Such a Relu comes from a functional ReLU after a module whose output quantizer is unsigned (geta quantizes
    ``y`` where ``relu(y)`` is read, ``graph/residual.py``)."""
    for relu in [node for node in graph.nodes() if node.op_type == "Relu"]:
        dq = graph.producers.get(relu.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or relu.output[0] in graph.pinned:
            continue
        zero = graph.constant(dq.input[2])
        if zero is None or zero.dtype not in (np.uint8, np.uint16) or np.any(zero != 0):
            continue
        for consumer in graph.consumers.get(relu.output[0], []):
            consumer.input[:] = [dq.output[0] if name == relu.output[0] else name for name in consumer.input]
        graph.graph.node.remove(relu)
        graph.refresh()


def _transpose_weight_levels(graph: _Graph) -> None:
    """Store transposed levels instead of transposing a dequantized weight (the exporter's form of a
    linear layer on batched sequences), so that the DequantizeLinear feeds the MatMul directly."""
    for node in graph.nodes():
        weight = graph.weight(graph.producers.get(node.input[0])) if node.op_type == "Transpose" else None
        if weight is None or graph.only_consumer(weight.node.output[0]) is not node:
            continue
        perm = list(_attribute(node, "perm", range(weight.levels.ndim)[::-1]))
        levels = graph.add_constant(weight.levels.transpose(perm), f"{weight.node.input[0]}_t", weight.onnx_type)
        extra: dict[str, Any] = {} if weight.axis is None else {"axis": perm.index(weight.axis)}
        graph.replace(node, [helper.make_node("DequantizeLinear", [levels, weight.node.input[1]], list(node.output),
                                              name=f"{weight.node.name}_t", **extra)])
        graph.refresh()


def _fold_batch_norms(graph: _Graph) -> None:
    """Fold each BatchNormalization into the Conv or Gemm before it where that is exact (module docstring)."""
    for bn in graph.nodes():
        layer = graph.producers.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if layer is None or layer.op_type not in ("Conv", "Gemm") or graph.only_consumer(layer.output[0]) is not bn:
            continue
        statistics = [s for name in bn.input[1:5] if (s := graph.constant(name)) is not None]
        if len(bn.output) > 1 or _attribute(bn, "training_mode", 0) or len(statistics) < len(bn.input[1:5]):
            continue
        if layer.op_type == "Gemm" and (_attribute(layer, "alpha", 1.0) != 1 or _attribute(layer, "beta", 1.0) != 1):
            continue
        gamma, beta, mean, var = (s.astype(np.float64) for s in statistics)
        factor = gamma / np.sqrt(var + _attribute(bn, "epsilon", 1e-5))
        bias = graph.constant(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else np.zeros_like(factor)
        axis = 0 if layer.op_type == "Conv" or _attribute(layer, "transB", 0) else 1
        if bias is None:
            continue
        folded = _folded_weight(graph, layer.input[1], factor, axis, bn.output[0])
        if folded is None:
            continue
        new_bias = ((bias.astype(np.float64) - mean) * factor + beta).astype(np.float32)
        inputs = [layer.input[0], folded, graph.add_constant(new_bias, f"{bn.output[0]}_bias")]
        del layer.input[:]
        layer.input.extend(inputs)
        layer.output[0] = bn.output[0]
        graph.graph.node.remove(bn)
        graph.refresh()


def _folded_weight(graph: _Graph, name: str, factor: np.ndarray, axis: int, base: str) -> str | None:
    """The weight ``name`` times ``factor`` along ``axis`` as a new tensor named after ``base`` (a float
    initializer, or a DequantizeLinear of levels whose steps take |factor|); None if it is neither or is
    read elsewhere."""
    value = graph.constant(name)
    if value is not None:
        if value.dtype != np.float32:
            return None
        return graph.add_constant((value * _along(factor, axis, value.ndim)).astype(np.float32), f"{base}_weight")
    weight = graph.weight(graph.producers.get(name))
    if weight is None or graph.only_consumer(name) is None:
        return None
    sign = np.where(factor < 0, -1, np.where(factor > 0, 1, 0))
    levels = weight.levels * _along(sign, axis, weight.levels.ndim)
    # a zero factor zeroes the channel's levels and keeps its step (a zero step would divide the int32 bias)
    step = weight.channel_scale(axis).astype(np.float64) * np.where(factor == 0, 1, np.abs(factor))
    dequantize = helper.make_node(
        "DequantizeLinear",
        [graph.add_constant(levels, f"{base}_levels", weight.onnx_type),
         graph.add_constant(step.astype(np.float32), f"{base}_scale")],
        [f"{base}_weight"], name=f"{base}_weight", axis=axis,
    )
    graph.replace(weight.node, [dequantize])
    return dequantize.output[0]


def _place_weights(graph: _Graph) -> None:
    """Give a weight's DequantizeLinear a zero point where onnxruntime fuses it into an integer kernel (its
    QGemm fusion wants one), and a fused Gemm without a quantized output its bias as a float Add (QGemm
    reads an int32 bias only). Where a layer reads a quantized input but stays a float op whose output
    reaches no quantizer, make the weight ``Cast(levels) * scale``, a constant that onnxruntime folds: a
    DequantizeLinear would be recomputed on every run and keep the op off its fast float layouts. (A float
    weight before a quantizer would be quantized again by onnxruntime, per tensor: not exact.) Weight-only
    layers keep the DequantizeLinear."""
    for node in graph.nodes():
        weight = graph.weight(node)
        if weight is None:
            continue
        consumers = graph.consumers.get(node.output[0], [])
        unfused = [consumer for consumer in consumers if not _integer_kernel(graph, consumer, weight)]
        if not unfused and consumers and node.output[0] not in graph.pinned:
            node.input.append(graph.add_constant(np.zeros(weight.scale.shape), f"{node.output[0]}_zero_point",
                                                 weight.onnx_type))
            for consumer in consumers:
                if consumer.op_type == "Gemm":
                    _split_bias(graph, consumer)
        elif any(_dequantized_input(graph, consumer) and not _reaches_quantizer(graph, consumer)
                 for consumer in unfused):
            levels = f"{node.output[0]}_levels"
            scale = weight.scale if weight.axis is None else _along(weight.scale, weight.axis, weight.levels.ndim)
            graph.replace(node, [
                helper.make_node("Cast", [node.input[0]], [levels], name=levels, to=TensorProto.FLOAT),
                helper.make_node("Mul", [levels, graph.add_constant(scale, f"{node.output[0]}_scale")],
                                 list(node.output), name=f"{node.output[0]}_mul"),
            ])
            graph.refresh()


def _dequantized_input(graph: _Graph, consumer: onnx.NodeProto) -> bool:
    """Whether the first input of ``consumer`` is a dequantized activation (computed codes, not constant ones)."""
    producer = graph.producers.get(consumer.input[0]) if consumer.input else None
    return producer is not None and producer.op_type == "DequantizeLinear" and graph.constant(producer.input[0]) is None


def _integer_kernel(graph: _Graph, consumer: onnx.NodeProto, weight: _Weight) -> bool:
    """Whether onnxruntime fuses ``consumer``, reading ``weight`` as its second input, into an integer
    kernel (see the module docstring); a MatMul also keeps it when its input is float (MatMulNBits)."""
    weight_name = weight.node.output[0]
    if len(consumer.input) < 2 or consumer.input[1] != weight_name or consumer.input[0] == weight_name:
        return False
    if consumer.op_type == "MatMul":
        return weight.onnx_type in (TensorProto.INT4, TensorProto.INT8)
    if consumer.op_type not in ("Conv", "Gemm") or weight.onnx_type != TensorProto.INT8:
        return False
    if not _quantized_activation(graph, graph.producers.get(consumer.input[0])):
        return False
    return consumer.op_type == "Gemm" or _feeds_quantizer(graph, consumer)


def _quantized_activation(graph: _Graph, node: onnx.NodeProto | None) -> bool:
    """Whether ``node`` dequantizes UINT8 activation codes with one scale (geta's up-to-8-bit pattern)."""
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
        return False
    scale, zero = graph.constant(node.input[1]), graph.constant(node.input[2])
    return scale is not None and scale.ndim == 0 and zero is not None and zero.dtype == np.uint8


def _feeds_quantizer(graph: _Graph, node: onnx.NodeProto) -> bool:
    """Whether ``node``'s output feeds only a UINT8 QuantizeLinear, directly or through a Relu (then the
    quantizer must be unsigned, zero point 0, for onnxruntime to drop the Relu)."""
    consumer = graph.only_consumer(node.output[0])
    relu = consumer is not None and consumer.op_type == "Relu"
    if consumer is not None and relu:
        consumer = graph.only_consumer(consumer.output[0])
    if consumer is None or consumer.op_type != "QuantizeLinear" or len(consumer.input) < 3:
        return False
    zero = graph.constant(consumer.input[2])
    return zero is not None and zero.dtype == np.uint8 and (not relu or int(zero) == 0)


def _reaches_quantizer(graph: _Graph, node: onnx.NodeProto) -> bool:
    """Whether ``node``'s output reaches a QuantizeLinear through ops that each alone read the one before
    and that onnxruntime looks or moves quantization through (Relu, Clip, data movement)."""
    name = node.output[0]
    while (consumer := graph.only_consumer(name)) is not None:
        if consumer.op_type == "QuantizeLinear":
            return True
        if consumer.op_type not in ("Relu", "Clip", "Slice", *_DATA_MOVEMENT):
            return False
        name = consumer.output[0]
    return False


def _split_bias(graph: _Graph, gemm: onnx.NodeProto) -> None:
    """Move the float bias of ``gemm`` (if it has one and feeds no quantizer) into an Add after it."""
    if len(gemm.input) < 3 or not gemm.input[2] or _feeds_quantizer(graph, gemm) or _attribute(gemm, "beta", 1.0) != 1:
        return
    bias, output = gemm.input[2], gemm.output[0]
    del gemm.input[2:]
    gemm.output[0] = f"{output}_product"
    index = list(graph.graph.node).index(gemm)
    graph.graph.node.insert(index + 1, helper.make_node("Add", [gemm.output[0], bias], [output], name=f"{output}_bias"))
    graph.refresh()
