"""Costs measured against the dense float model: rel. BOPs = BOPs / (dense MACs x 32 x 32), per-layer rows.

``geta.Report.rel_bops`` divides by the same model's MACs; a compressed model's cost has to be
compared with the dense model's, so the harness divides by the dense model's MACs here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from geta.core.inputs import ExampleInputs
from geta.metrics.cost import count_macs
from geta.metrics.report import FULL_PRECISION_BITS, Report, build_report, model_layers


@dataclass(frozen=True)
class DenseCost:
    """The dense float model's MACs (total and per layer), output widths and parameter count."""

    macs: float
    layer_macs: dict[str, float]
    widths: dict[str, int]
    params: int
    size_bits: float

    @property
    def bops(self) -> float:
        """BOPs of the dense float model: MACs x 32 x 32."""
        return self.macs * FULL_PRECISION_BITS**2


def dense_cost(model: nn.Module, example_inputs: object) -> DenseCost:
    """Cost of the plain (float) ``model`` on one example."""
    report = model_report(model, example_inputs)
    return DenseCost(
        macs=report.macs, layer_macs={row.name: row.macs for row in report.layers},
        widths={row.name: row.out_width for row in report.layers}, params=report.params, size_bits=report.size_bits,
    )


def model_report(
    model: nn.Module, example_inputs: object, reasons: dict[str, str] | None = None, group_sparsity: float = 0.0
) -> Report:
    """The geta report of any model as it is (its MACs, its quantizers' bits), on one example."""
    layers = model_layers(model, reasons)
    macs = count_macs(model, ExampleInputs.from_user(example_inputs), layers)
    return build_report(model, layers, macs, group_sparsity=group_sparsity)


def layer_rows(report: Report, dense: DenseCost) -> list[dict]:
    """Per-layer rows of a compressed model's report with the dense width and MACs beside them."""
    rows = []
    for layer in report.layers:
        row = {
            "name": layer.name, "kind": layer.kind, "weight_bits": layer.weight_bits, "act_bits": layer.act_bits,
            "weight_bits_learned": layer.weight_bits_learned, "act_bits_learned": layer.act_bits_learned,
            "out_width": layer.out_width, "dense_width": dense.widths.get(layer.name, layer.out_width),
            "macs": layer.macs, "dense_macs": dense.layer_macs.get(layer.name, layer.macs), "params": layer.params,
            "full_precision_reason": layer.full_precision_reason,
        }
        rows.append(row)
    return rows
