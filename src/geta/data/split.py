"""A data set cut into a training and a test part, for images and for tokenized text."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

Inputs = Tensor | dict[str, Tensor]
"""What a model takes: one tensor (images), or keyword tensors (``input_ids``, ``attention_mask``)."""


def select(inputs: Inputs, index: Tensor | slice) -> Inputs:
    """The rows ``index`` of a tensor, or of every tensor of a dict of inputs."""
    if isinstance(inputs, dict):
        return {name: value[index] for name, value in inputs.items()}
    return inputs[index]


def call(model: nn.Module, inputs: Inputs) -> Tensor:
    """``model`` applied to ``inputs``: positionally for a tensor, as keyword arguments for a dict."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


@dataclass(frozen=True)
class Split:
    """Train and test tensors of one data set with integer labels.

    Images: ``train_x``/``test_x`` are (N, C, H, W) in [0, 1] and the masks are None. Text:
    ``train_x``/``test_x`` are token ids (N, L) and ``train_mask``/``test_mask`` their attention
    masks; the inputs are then the dict ``{"input_ids": ..., "attention_mask": ...}``.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_mask: Tensor | None = None
    test_mask: Tensor | None = None

    @property
    def train_inputs(self) -> Inputs:
        """The whole training set as model inputs (a tensor, or a dict for text)."""
        return _inputs(self.train_x, self.train_mask)

    @property
    def test_inputs(self) -> Inputs:
        """The whole test set as model inputs (a tensor, or a dict for text)."""
        return _inputs(self.test_x, self.test_mask)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> list[tuple[Inputs, Tensor]]:
        """The training set shuffled by ``generator`` and cut into (inputs, labels) batches."""
        order = torch.randperm(len(self.train_y), generator=generator)
        inputs = self.train_inputs
        return [(select(inputs, i), self.train_y[i]) for i in order.split(batch_size)]


def _inputs(ids: Tensor, mask: Tensor | None) -> Inputs:
    return ids if mask is None else {"input_ids": ids, "attention_mask": mask}
