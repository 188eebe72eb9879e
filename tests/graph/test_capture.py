"""Graph capture: quantizers traced as one call each, their parameters left as they were."""

from __future__ import annotations

import torch
from torch import nn

import geta
from geta.graph.capture import capture
from geta.graph.inputs import ExampleInputs
from geta.quant.quantizer import Quantizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()


def test_each_quantizer_call_is_one_node_and_its_parameters_are_not_lifted() -> None:
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights+activations")
    quantizers = [m for m in g.model.modules() if isinstance(m, Quantizer)]
    program = capture(g.model, ExampleInputs.from_user(x))
    calls = [n for n in program.graph.nodes if n.target == torch.ops.geta.quantizer_call.default]
    assert len(calls) == len(quantizers) == 4
    lifted = set(program.graph_signature.inputs_to_parameters.values())
    assert not any(".d" in name or ".q_m" in name or name.endswith(".t") for name in lifted)
    assert {"0.parametrizations.weight.original", "3.parametrizations.weight.original"} <= lifted


def test_capture_puts_the_same_parameters_back_and_the_model_computes_as_before() -> None:
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights+activations")
    before = list(g.model.named_parameters())
    expected = g.model(x)
    capture(g.model, ExampleInputs.from_user(x))
    after = list(g.model.named_parameters())
    assert [name for name, _ in after] == [name for name, _ in before]
    assert all(a is b for (_, a), (_, b) in zip(after, before))
    assert not any(q.traced_as_call for q in g.model.modules() if isinstance(q, Quantizer))
    torch.testing.assert_close(g.model(x), expected)


def test_per_channel_quantizer_parameters_go_with_their_output_channel() -> None:
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights", per_channel=True)
    for group in g.groups:
        weight = [s for s in group.slices if s.name == "0.weight"]
        if not weight:
            continue
        quantizer_slices = {s.name: s.indices for s in group.slices if s.is_quantizer}
        assert quantizer_slices == {f"0.weight_quantizer.{p}": weight[0].indices for p in ("d", "q_m", "t")}


def test_unprunable_structures_name_tensors_by_state_dict_key() -> None:
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights+activations", per_channel=True)
    names = {s.name for structure in g.unprunable() for s in structure.slices}
    # the last conv's output channels touch the model output; its weight and per-channel quantizer go with them
    assert {"3.weight", "3.bias", "3.weight_quantizer.d"} <= names
    assert names <= set(g.model.state_dict())
