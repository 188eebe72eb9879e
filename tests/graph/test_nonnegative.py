"""Provable non-negativity over exported graphs: one test per pattern."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geta.core.inputs import ExampleInputs
from geta.graph.capture import capture
from geta.graph.nonnegative import layer_inputs, nonnegative_nodes


class Probe(nn.Module):
    """Applies ``op`` to the input, then a linear layer whose input we classify."""

    def __init__(self, op) -> None:
        super().__init__()
        self.op = op
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.op(x))


def _head_input_nonnegative(op) -> bool:
    program = capture(Probe(op), ExampleInputs.from_user(torch.randn(3, 8)))
    signature = program.graph_signature
    state = set(signature.inputs_to_parameters) | set(signature.inputs_to_buffers)
    inputs = layer_inputs(program.graph, "head", state)
    assert inputs, "the head must have an input node"
    known = nonnegative_nodes(program.graph)
    return all(node in known for node in inputs)


@pytest.mark.parametrize(
    "op",
    [
        torch.relu,
        F.relu6,
        torch.sigmoid,
        lambda x: torch.softmax(x, -1),
        lambda x: F.hardtanh(x, 0.0, 2.0),
        lambda x: x.clamp(min=0.5),
        lambda x: torch.relu(x).view(3, 2, 4).flatten(1),
        lambda x: torch.relu(x) * 2 + torch.sigmoid(x),
        lambda x: torch.cat([torch.relu(x[:, :4]), torch.exp(x[:, 4:])], 1),
        lambda x: F.dropout(torch.relu(x), 0.1, training=False),
        lambda x: F.max_pool1d(torch.relu(x).unsqueeze(1), 1).squeeze(1),
        lambda x: x.abs().transpose(0, 1).transpose(0, 1),
        nn.ReLU(inplace=True),
        nn.ReLU6(inplace=True),
        nn.Hardtanh(0.0, 2.0, inplace=True),
        lambda x: F.relu(x.clone(), inplace=True),
        lambda x: x.clone().clamp_(min=0.0),
        lambda x: F.threshold(x.clone(), 0.0, 0.0, inplace=True),
    ],
)
def test_nonnegative_patterns(op) -> None:
    assert _head_input_nonnegative(op)


@pytest.mark.parametrize(
    "op",
    [
        lambda x: x,
        F.gelu,
        torch.tanh,
        lambda x: torch.relu(x) - 1,
        lambda x: torch.relu(x) * -2,
        lambda x: torch.relu(x) * x,
        lambda x: F.hardtanh(x),
        lambda x: F.layer_norm(torch.relu(x), (8,)),
        lambda x: torch.cat([torch.relu(x[:, :4]), x[:, 4:]], 1),
        nn.Hardtanh(inplace=True),
        nn.LeakyReLU(inplace=True),
        lambda x: torch.relu(x).sub_(1),
    ],
)
def test_signed_patterns(op) -> None:
    assert not _head_input_nonnegative(op)
