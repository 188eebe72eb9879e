"""The cost report of a (quantization-aware) model: MACs, BOPs, size and per-layer bits and widths.

BOPs of a layer = MACs x weight bits x activation bits, with 32 for whatever is not quantized;
ops outside every layer (attention's activation products) count at 32 x 32. Bits are each
quantizer's integer bits (the width its levels need, see ``quant.functional.integer_bits``);
the learned, continuous Eq. 3 values are reported beside them. Relative BOPs divide by the same
model's MACs x 32 x 32.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

from torch import Tensor, nn

from geta.metrics.cost import MacCount
from geta.quant.prepare import QuantizableLayer
from geta.quant.quantizer import Quantizer

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
    """Costs of one model for one example (the example batch's counts divided by its batch size)."""

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
        notes = [f"  {layer.name}: {layer.full_precision_reason}" for layer in self.layers if layer.full_precision_reason]
        if notes:
            console.print("full precision:\n" + "\n".join(notes))
        return buffer.getvalue().rstrip()


def build_report(
    model: nn.Module, layers: list[QuantizableLayer], macs: MacCount, group_sparsity: float = 0.0
) -> Report:
    """Assemble the report from counted MACs and the quantizers' current bit widths."""
    rows = [_layer_row(layer, macs.per_layer.get(layer.name, 0.0)) for layer in layers]
    total_macs = macs.total
    bops = sum(row.macs * row.weight_bits * row.act_bits for row in rows) + macs.other * FULL_PRECISION_BITS**2
    weight_bits_of = {id(w): _bits_per_element(layer.weight_quantizer, w) for layer in layers for w in layer.weights()}
    quantizer_params = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    params = [p for p in _unique_parameters(model) if id(p) not in quantizer_params]
    size_bits = sum(
        weight_bits_of[id(p)].sum() if id(p) in weight_bits_of else p.numel() * p.element_size() * 8 for p in params
    )
    weight_numel = sum(weight_bits_of[k].numel() for k in weight_bits_of)
    avg_weight_bits = sum(float(v.sum()) for v in weight_bits_of.values()) / weight_numel if weight_numel else 0.0
    return Report(
        macs=_integral(total_macs),
        bops=_integral(bops),
        rel_bops=bops / (total_macs * FULL_PRECISION_BITS**2) if total_macs else 0.0,
        params=sum(p.numel() for p in params),
        size_bits=_integral(float(size_bits)),
        avg_weight_bits=avg_weight_bits,
        group_sparsity=group_sparsity,
        layers=rows,
    )


def _layer_row(layer: QuantizableLayer, macs: float) -> LayerReport:
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    return LayerReport(
        name=layer.name,
        kind=layer.kind,
        macs=_integral(macs),
        weight_bits=_integral(float(wq.integer_bits().mean())) if wq is not None else FULL_PRECISION_BITS,
        act_bits=_integral(float(aq.integer_bits().mean())) if aq is not None else FULL_PRECISION_BITS,
        out_width=layer.out_width(),
        params=sum(w.numel() for w in layer.weights()),
        weight_bits_learned=float(wq.bit_width().mean()) if wq is not None else None,
        act_bits_learned=float(aq.bit_width().mean()) if aq is not None else None,
        act_signed=aq.signed if aq is not None else None,
        full_precision_reason=layer.full_precision_reason,
    )


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


def _unique_parameters(model: nn.Module) -> list[Tensor]:
    seen: dict[int, Tensor] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _integral(value: float) -> float:
    return int(value) if float(value).is_integer() else float(value)


def _bits(value: float) -> str:
    return f"{value:g}"


def _human(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"
