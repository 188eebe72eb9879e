"""Graph capture: quantizers traced as one call each (or left out), their parameters left as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import geta
from geta.core.inputs import ExampleInputs
from geta.graph.capture import capture
from geta.graph.dependency import DependencyAnalysis
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


def test_quantizers_left_out_leave_no_node_and_the_weights_read_as_their_original_tensors() -> None:
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights+activations")
    quantizers = [m for m in g.model.modules() if isinstance(m, Quantizer)]
    program = capture(g.model, ExampleInputs.from_user(x), leave_out=quantizers[:2])
    calls = [n for n in program.graph.nodes if n.target == torch.ops.geta.quantizer_call.default]
    assert len(calls) == len(quantizers) - 2
    program = capture(g.model, ExampleInputs.from_user(x), leave_out=quantizers)
    assert not any(n.target == torch.ops.geta.quantizer_call.default for n in program.graph.nodes)
    convs = [n for n in program.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    weights = {program.graph_signature.inputs_to_parameters[n.args[1].name] for n in convs}
    assert weights == {"0.parametrizations.weight.original", "3.parametrizations.weight.original"}
    assert not any(q.passed_through for q in quantizers)


@pytest.mark.parametrize("per_channel", [False, True])
def test_per_tensor_quantizers_left_out_give_the_same_structures(per_channel: bool) -> None:
    # what lets GETA capture the model without them (and reuse the constructor's capture)
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights+activations", per_channel=per_channel)
    per_tensor = [m for m in g.model.modules() if isinstance(m, Quantizer) and m.axis is None]
    inputs = ExampleInputs.from_user(x)
    table, unprunable = DependencyAnalysis(capture(g.model, inputs), g.model).run()
    left_out, left_out_unprunable = DependencyAnalysis(capture(g.model, inputs, leave_out=per_tensor), g.model).run()
    assert (left_out.names, left_out.dims, left_out.count) == (table.names, table.dims, table.count)
    for field in ("slot", "position", "group"):
        np.testing.assert_array_equal(getattr(left_out, field), getattr(table, field))
    assert left_out_unprunable == unprunable
    assert any(s.is_quantizer for group in g.groups for s in group.slices) == per_channel


def test_unprunable_structures_name_tensors_by_state_dict_key() -> None:
    x = torch.randn(2, 3, 10, 10)
    g = geta.GETA(_net(), x, quantize="weights+activations", per_channel=True)
    names = {s.name for structure in g.unprunable() for s in structure.slices}
    # the last conv's output channels touch the model output; its weight and per-channel quantizer go with them
    assert {"3.weight", "3.bias", "3.weight_quantizer.d"} <= names
    assert names <= set(g.model.state_dict())


class _ValuePadded(nn.Module):
    """Pads by an amount computed from a tensor's value, as audio codecs do: export meets a guard on
    a data-dependent value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 3)
        self.conv2 = nn.Conv1d(8, 4, 3)
        self.register_buffer("stride", torch.tensor(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        extra = int((self.stride - h.shape[-1] % self.stride) % self.stride)
        if extra > 0:
            h = nn.functional.pad(h, (0, extra))
        return self.conv2(h)


def test_a_forward_that_branches_on_a_tensor_value_is_captured_for_the_example() -> None:
    torch.manual_seed(0)
    model, x = _ValuePadded().eval(), torch.randn(2, 3, 13)
    with pytest.raises(Exception, match="data-dependent"):
        torch.export.export(model, (x,), strict=False)
    program = capture(model, ExampleInputs.from_user(x))
    assert any(n.target == torch.ops.aten.conv1d.default for n in program.graph.nodes)
    g = geta.GETA(model, x)
    assert len(g.groups) == 8
    g.groups.zero_(torch.arange(len(g.groups)) % 2 == 0)
    compact = g.construct_subnet()
    torch.testing.assert_close(compact(x), g.model(x))
    assert compact.conv1.out_channels == 4


def test_an_untraceable_forward_is_a_model_error_naming_the_fix() -> None:
    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(x.numpy() * 2)

    with pytest.raises(geta.ModelError, match=r"could not trace the model.*traceable"):
        capture(Untraceable(), ExampleInputs.from_user(torch.randn(3, 2)))
