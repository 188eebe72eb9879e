"""The cost of a model in training is that of its compact model: zeroed groups removed, bits kept.

``g.report()`` and ``QassoMetrics.rel_bops`` must give what ``geta.report`` gives on
``g.construct_subnet()`` against the dense model, on convolutions with batch norm and residuals,
depthwise convolutions, an MLP and transformer encoders (whose attention products shrink with
their heads).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import pytest
import torch
from tests.optim.test_qasso import mlp
from tests.zoo import DepthwiseNet, GroupedNet, TinyEncoder, TorchEncoder
from torch import Tensor, nn

import geta
from geta.metrics import report as report_module
from geta.models.cifar import ResNet20

MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "resnet": (lambda: ResNet20(width=4), lambda: torch.randn(2, 3, 16, 16)),
    "depthwise": (DepthwiseNet, lambda: torch.randn(2, 3, 8, 8)),
    "grouped": (GroupedNet, lambda: torch.randn(2, 3, 8, 8)),
    "mlp": (lambda: mlp([6, 16, 12, 3], norm=True), lambda: torch.randn(4, 6)),
    "encoder": (TinyEncoder, lambda: torch.randint(0, 30, (2, 7))),
    "torch_encoder": (TorchEncoder, lambda: torch.randint(0, 30, (2, 7))),
}
SUMMARY = ("macs", "bops", "rel_bops", "params", "size_bits", "avg_weight_bits")


@torch.no_grad()
def _random_bits(g: geta.GETA) -> None:
    """Weight bits drawn per channel, activation bits per layer, all in [3, 8]."""
    for layer in g.layers:
        weights, inputs = layer.weight_quantizer, layer.input_quantizer
        if weights is not None:
            weights.d.copy_(weights.step_for_bits(torch.randint(3, 9, weights.d.shape).float()))
        if inputs is not None:
            inputs.set_bits_(int(torch.randint(3, 9, ())))


def _rows(report: geta.Report) -> list[geta.LayerReport]:
    """The layer rows without their full-precision reasons (a model on its own does not know them)."""
    return [dataclasses.replace(row, full_precision_reason="") for row in report.layers]


@pytest.mark.parametrize("name", list(MODELS))
def test_report_is_the_compact_models_against_the_dense_one(name: str) -> None:
    build, inputs = MODELS[name]
    model, x = build(), inputs()
    g = geta.GETA(model, x, quantize="weights+activations", per_channel=True)
    _random_bits(g)
    dense = g.report()
    g.zero_random_groups(0.3)
    ours = g.report()
    compact = geta.report(g.construct_subnet(), x, dense=model)
    assert {key: getattr(ours, key) for key in SUMMARY} == {key: getattr(compact, key) for key in SUMMARY}
    assert _rows(ours) == _rows(compact)
    assert ours.macs < dense.macs and ours.params < dense.params and ours.rel_bops < dense.rel_bops
    assert ours.group_sparsity == g.group_sparsity() > 0
    assert ours.rel_bops == ours.bops / (dense.macs * 32 * 32)


def test_rel_bops_falls_as_more_groups_are_zeroed() -> None:
    model, x = DepthwiseNet(), torch.randn(2, 3, 8, 8)
    g = geta.GETA(model, x, initial_weight_bits=8)
    assert g.report().rel_bops == 8 / 32
    figures = []
    for fraction in (0.1, 0.2, 0.3, 0.4, 0.5):
        g.zero_random_groups(fraction)
        figures.append(g.report().rel_bops)
        assert figures[-1] == geta.report(g.construct_subnet(), x, dense=model).rel_bops
    assert all(later < earlier for earlier, later in zip([8 / 32, *figures], figures))


def _qasso_run(g: geta.GETA, x: Tensor, steps: int, callback: Callable[[geta.QassoMetrics], None]) -> None:
    targets = torch.randint(0, 5, (x.shape[0],))
    opt = g.qasso("sgd", lr=0.01, target_sparsity=0.4, total_steps=steps, callback=callback)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(g.model(x), targets).backward()
        opt.step()


def test_qasso_metrics_rel_bops_is_the_reports() -> None:
    model, x = DepthwiseNet(), torch.randn(4, 3, 8, 8)
    g = geta.GETA(model, x, quantize="weights+activations", per_channel=True)
    seen: list[tuple[float, float, float]] = []

    def compare(metrics: geta.QassoMetrics) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the report warns until the schedule ends
            seen.append((metrics.rel_bops, g.report().rel_bops, metrics.group_sparsity))

    _qasso_run(g, x, 40, compare)
    assert [ours for ours, _, _ in seen] == [report for _, report, _ in seen]
    assert seen[-1][2] > 0 and seen[-1][0] < seen[0][0]
    assert seen[-1][0] == geta.report(g.construct_subnet(), x, dense=model).rel_bops


def test_qasso_metrics_count_the_compact_model_only_when_the_zeroed_groups_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Tensor] = []

    def counted(model: nn.Module, space: object, removed: Tensor, **options: bool) -> nn.Module:
        built.append(removed.clone())
        return construct(model, space, removed, **options)

    construct = report_module.construct_subnet
    monkeypatch.setattr(report_module, "construct_subnet", counted)
    g = geta.GETA(DepthwiseNet(), torch.randn(4, 3, 8, 8))
    masks: list[Tensor] = []
    _qasso_run(g, torch.randn(4, 3, 8, 8), 40, lambda _metrics: masks.append(g.groups.zero_mask()))
    changes = [mask for before, mask in zip([torch.zeros_like(masks[0]), *masks], masks)
               if not torch.equal(before, mask)]
    assert len(changes) >= 2
    assert len(built) == len(changes) and all(torch.equal(a, b) for a, b in zip(built, changes))


def test_top_level_report_of_any_model() -> None:
    x = torch.randn(3, 6)
    model = mlp([6, 16, 3])
    plain = geta.report(model, x)
    assert plain.macs == 6 * 16 + 16 * 3 and plain.rel_bops == 1.0 and plain.bops == plain.macs * 32 * 32
    g = geta.GETA(model, x, quantize="none")
    g.groups.zero_(torch.arange(len(g.groups)) < 4)
    compact = geta.report(g.construct_subnet(), x, dense=model)
    assert compact.macs == 6 * 12 + 12 * 3 and compact.rel_bops == compact.macs / plain.macs
    assert "report" in geta.__all__
