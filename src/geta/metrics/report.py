"""The cost report of a (quantization-aware) model: MACs, BOPs, size and per-layer bits and widths.

BOPs of a layer = MACs x weight bits x activation bits, with 32 for whatever is not quantized;
ops outside every layer (attention's activation products) count at 32 x 32. Bits are each
quantizer's integer bits (the width its levels need, see ``quant.functional.integer_bits``);
the learned, continuous Eq. 3 values are reported beside them.

Relative BOPs (``rel_bops``) have one meaning wherever geta reports them (``Report.rel_bops``,
``QassoMetrics.rel_bops``, ``RunResult.rel_bops``, ``geta compress``'s report): the BOPs of the model
as compacted (zeroed groups removed, bits kept) over the dense, unpruned model's MACs x 32 x 32, the
float model's BOPs. ``g.report()`` and QASSO take the dense MACs from the model before pruning;
``geta.report(model, x, dense=...)`` from the ``dense`` given, else from ``model`` itself.

A model in training still holds its zeroed groups; its cost is that of the compact model
(``pruning.subnet.construct_subnet``: zeroed groups removed, bits kept), whose MACs are counted on
that model itself. So every op that ``count_macs`` counts (those with a FLOP formula: convolutions,
matmuls, attention's products) shrinks as it does in the compact model; element-wise ops, norms,
pooling and embedding lookups count in neither. Scaling each layer's MACs by the kept fractions of
its weight's dimensions would be exact for convolutions (depthwise and grouped too) and linear
layers, but would miss the attention products between activations, which shrink with the heads.
:class:`CompactCost` keeps the count across training steps and recounts only when the set of
removed groups changes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta.core.inputs import ExampleInputs, model_device
from geta.metrics.cost import MacCount, count_macs
from geta.pruning.groups import SearchSpace
from geta.pruning.subnet import construct_subnet
from geta.quant.prepare import INPUT_QUANTIZER, QuantizableLayer, find_layers, parametrization_list
from geta.quant.quantizer import Quantizer, quantizer_parameter_ids

FULL_PRECISION_BITS = 32


@dataclass
class LayerReport:
    """One quantizable layer's row of the report."""

    name: str
    kind: str
    macs: float
    weight_bits: float
    act_bits: float
    out_width: int
    params: int
    weight_bits_learned: float | None = None
    act_bits_learned: float | None = None
    act_signed: bool | None = None
    full_precision_reason: str = ""


@dataclass
class Report:
    """Costs of one model for one example (the example batch's counts divided by its batch size);
    ``rel_bops`` as the module docstring defines it."""

    macs: float
    bops: float
    rel_bops: float
    params: int
    size_bits: float
    avg_weight_bits: float
    group_sparsity: float
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def size_bytes(self) -> float:
        """Model size in bytes (size_bits / 8)."""
        return self.size_bits / 8

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict of every field, layers as a list of dicts."""
        data = asdict(self)
        data["size_bytes"] = self.size_bytes
        return data

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="geta report (per example)", title_justify="left")
        for column in ("layer", "kind", "MACs", "w bits", "a bits", "out width", "params"):
            table.add_column(column, justify="left" if column in ("layer", "kind") else "right")
        for layer in self.layers:
            table.add_row(
                layer.name or "<root>", layer.kind, _human(layer.macs), _bits(layer.weight_bits), _bits(layer.act_bits),
                str(layer.out_width), _human(layer.params),
            )
        summary = (
            f"MACs {_human(self.macs)}  BOPs {_human(self.bops)}  rel. BOPs {100 * self.rel_bops:.3f}%  "
            f"params {_human(self.params)}  size {self.size_bits / 8 / 2**20:.3f} MiB ({_human(self.size_bits)} bits)  "
            f"avg weight bits {self.avg_weight_bits:.2f}  group sparsity {100 * self.group_sparsity:.1f}%"
        )
        buffer = io.StringIO()
        console = Console(file=buffer, width=120, force_terminal=False, color_system=None)
        console.print(table)
        console.print(summary)
        notes = [f"  {layer.name}: {layer.full_precision_reason}"
                 for layer in self.layers if layer.full_precision_reason]
        if notes:
            console.print("full precision:\n" + "\n".join(notes))
        return buffer.getvalue().rstrip()


def build_report(
    model: nn.Module, layers: list[QuantizableLayer], macs: MacCount, group_sparsity: float = 0.0,
    dense_macs: float | None = None,
) -> Report:
    """Assemble the report from counted MACs and the quantizers' current bit widths; rel. BOPs are over
    ``dense_macs`` x 32 x 32 (default: ``macs.total``, the model's own)."""
    rows = [_layer_row(layer, macs.per_layer.get(layer.name, 0.0)) for layer in layers]
    total_macs = macs.total
    bops = _bops(((row.macs, row.weight_bits, row.act_bits) for row in rows), macs.other)
    weight_bits_of = {id(w): _bits_per_element(layer.weight_quantizer, w) for layer in layers for w in layer.weights()}
    quantizer_params = quantizer_parameter_ids(model)
    params = [p for p in model.parameters() if id(p) not in quantizer_params]  # each parameter once
    size_bits = sum(
        weight_bits_of[id(p)].sum() if id(p) in weight_bits_of else p.numel() * p.element_size() * 8 for p in params
    )
    weight_numel = sum(weight_bits_of[k].numel() for k in weight_bits_of)
    avg_weight_bits = sum(float(v.sum()) for v in weight_bits_of.values()) / weight_numel if weight_numel else 0.0
    return Report(
        macs=_integral(total_macs),
        bops=_integral(bops),
        rel_bops=_relative(bops, total_macs if dense_macs is None else dense_macs),
        params=sum(p.numel() for p in params),
        size_bits=_integral(float(size_bits)),
        avg_weight_bits=avg_weight_bits,
        group_sparsity=group_sparsity,
        layers=rows,
    )


def report(model: nn.Module, example_inputs: object, *, dense: nn.Module | None = None) -> Report:
    """The cost report of any ``model`` as it is, e.g. a compact model from ``GETA.construct_subnet()``:
    its MACs on ``example_inputs`` (per example) and the bits of the quantizers it carries (32 for a
    layer without one; a model from ``geta.load`` has no weight quantizers, so its weights count at 32).

    ``rel_bops`` is its BOPs over ``dense``'s MACs x 32 x 32: pass the uncompressed model to get the
    figure ``geta compress`` reports; without ``dense``, the model's own MACs are used.
    ``group_sparsity`` is 0.0: a model on its own has no search space."""
    inputs = ExampleInputs.from_user(example_inputs)
    layers = model_layers(model)
    macs = count_macs(model, inputs.to(model_device(model)), layers)
    dense_macs = None
    if dense is not None:
        # the total needs no split between layers
        dense_macs = count_macs(dense, inputs.to(model_device(dense)), []).total
    return build_report(model, layers, macs, dense_macs=dense_macs)


def model_layers(model: nn.Module, reasons: Mapping[str, str] | None = None) -> list[QuantizableLayer]:
    """The quantizable layers of ``model`` with the quantizers it already carries (a compact model's, say).

    ``reasons`` gives the full-precision reason of layers by name (from the GETA object it came from)."""
    layers = find_layers(model)
    for layer in layers:
        layer.weight_quantizer = _carried_weight_quantizer(layer)
        layer.input_quantizer = getattr(layer.module, INPUT_QUANTIZER, None)
        layer.full_precision_reason = (reasons or {}).get(layer.name, "")
    return layers


class CompactCost:
    """Relative BOPs of ``model`` as it would be compacted, cheap enough to compute after every step.

    A compact model's MACs depend only on which groups are removed, so they are counted on the
    compact model (built by ``construct_subnet``) when that set changes and kept otherwise. Bits
    are read from the live quantizers on each call, a per-channel quantizer's over the channels
    the compact model keeps. The result equals ``build_report``'s on the compact model, with
    ``dense`` (the model's MACs with nothing removed) as the reference."""

    def __init__(self, model: nn.Module, space: SearchSpace, inputs: ExampleInputs, dense: MacCount) -> None:
        self.model = model
        self.space = space
        self.inputs = inputs
        self.dense = dense
        self._removed: Tensor | None = None
        self._macs = dense
        self._kept: dict[int, Tensor] = {}

    def rel_bops(self, removed: Tensor, layers: list[QuantizableLayer]) -> float:
        """BOPs of the model without the groups in bool ``removed``, over the dense MACs x 32 x 32."""
        if self._removed is None or not torch.equal(removed, self._removed):
            self._recount(removed)
        terms = (
            (_integral(self._macs.per_layer.get(layer.name, 0.0)),
             self._bits(layer.weight_quantizer), self._bits(layer.input_quantizer))
            for layer in layers
        )
        return _relative(_bops(terms, self._macs.other), self.dense.total)

    def _recount(self, removed: Tensor) -> None:
        self._removed = removed.clone()
        if not removed.any():
            self._macs, self._kept = self.dense, {}
            return
        compact = construct_subnet(self.model, self.space, removed, share_unchanged=True)
        self._macs = count_macs(compact, self.inputs, model_layers(compact))
        self._kept = _kept_channels(self.space, removed)

    def _bits(self, quantizer: Quantizer | None) -> float:
        return _mean_bits(quantizer, self._kept.get(id(quantizer.d)) if quantizer is not None else None)


def _kept_channels(space: SearchSpace, removed: Tensor) -> dict[int, Tensor]:
    """Per quantizer tensor that the groups in bool ``removed`` cut (by ``id``; a per-channel quantizer's
    d, q_m and t): a bool mask of the channels the compact model keeps."""
    kept: dict[int, Tensor] = {}
    for member in space.members:
        chosen = member.positions[removed[member.groups]]
        if member.is_quantizer and len(chosen):
            mask = kept.setdefault(id(member.tensor), torch.ones(member.tensor.shape[member.dim], dtype=torch.bool))
            mask[chosen] = False
    return kept


def _layer_row(layer: QuantizableLayer, macs: float) -> LayerReport:
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        macs=_integral(macs),
        weight_bits=_mean_bits(wq),
        act_bits=_mean_bits(aq),
        out_width=layer.out_width(),
        params=sum(w.numel() for w in layer.weights()),
        weight_bits_learned=float(wq.bit_width().mean()) if wq is not None else None,
        act_bits_learned=float(aq.bit_width().mean()) if aq is not None else None,
        act_signed=aq.signed if aq is not None else None,
        full_precision_reason=layer.full_precision_reason,
    )


def _mean_bits(quantizer: Quantizer | None, kept: Tensor | None = None) -> float:
    """A quantizer's integer bits, averaged over its (``kept``) channels; 32 without a quantizer."""
    if quantizer is None:
        return FULL_PRECISION_BITS
    bits = quantizer.integer_bits()
    if kept is not None:
        bits = bits[kept.to(bits.device)]
    return _integral(float(bits.mean()))


def _bops(terms: Iterable[tuple[float, float, float]], other_macs: float) -> float:
    """Sum of MACs x weight bits x activation bits over (macs, weight bits, act bits) terms, plus the
    MACs outside every layer at 32 x 32."""
    quantized = sum(macs * weight_bits * act_bits for macs, weight_bits, act_bits in terms)
    return quantized + other_macs * FULL_PRECISION_BITS**2


def _relative(bops: float, dense_macs: float) -> float:
    return bops / (dense_macs * FULL_PRECISION_BITS**2) if dense_macs else 0.0


def _carried_weight_quantizer(layer: QuantizableLayer) -> Quantizer | None:
    """The Quantizer parametrizing the layer's weights, if any (another parametrization is not one)."""
    for name in layer.weight_names:
        if parametrize.is_parametrized(layer.module, name):
            for parametrization in parametrization_list(layer.module, name):
                if isinstance(parametrization, Quantizer):
                    return parametrization
    return None


def _bits_per_element(quantizer: Quantizer | None, weight: Tensor) -> Tensor:
    """Integer bits of each element of ``weight`` (32 where it is not quantized)."""
    if quantizer is None:
        return weight.detach().new_full(weight.shape, float(weight.element_size() * 8))
    bits = quantizer.integer_bits()
    if quantizer.axis is None:
        return bits.expand(weight.shape)
    shape = [1] * weight.dim()
    shape[quantizer.axis] = -1
    return bits.reshape(shape).expand(weight.shape)


def _integral(value: float) -> float:
    return int(value) if float(value).is_integer() else float(value)


def _bits(value: float) -> str:
    return f"{value:g}"


def _human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"
