"""The supervised training loop and accuracy, shared by the demo, the harness behind ``geta compress``
and the tests: shuffled batches, the loop, a learning-rate schedule and top-1 accuracy, for image or
tokenized-text inputs (``geta.data.split``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geta.core.modes import eval_mode
from geta.data.split import Inputs, Split, call, select


def logits(model: nn.Module, inputs: Inputs) -> Tensor:
    """The model's logits for ``inputs`` (``.logits`` of a transformers output)."""
    out = call(model, inputs)
    return out.logits if hasattr(out, "logits") else out


def batches_per_epoch(labels: Tensor, batch_size: int, limit: int | None = None) -> int:
    """Number of batches one epoch over ``labels`` takes (at most ``limit``)."""
    count = -(-len(labels) // batch_size)
    return count if limit is None else min(count, limit)


def shuffled_batches(
    inputs: Inputs, labels: Tensor, batch_size: int, generator: torch.Generator, limit: int | None = None
) -> Iterator[tuple[Inputs, Tensor]]:
    """Endless shuffled batches, epoch after epoch, each epoch cut after ``limit`` batches."""
    per_epoch = batches_per_epoch(labels, batch_size, limit)
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for index in order.split(batch_size)[:per_epoch]:
            yield select(inputs, index), labels[index]


def constant_then_cosine(
    optimizer: torch.optim.Optimizer, decay_start: int, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Keep the learning rate until step ``decay_start``, then decay it to zero along a cosine by step ``steps``.

    The compression methods share it: GETA decays only in QASSO's cool-down (its structure and bit
    widths are final there), and the baselines get the same learning rates step for step."""
    span = max(steps - decay_start, 1)

    def factor(step: int) -> float:
        if step < decay_start:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step - decay_start, span) / span))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a frozen ``teacher`` (Hinton et al., 2015): the training loss becomes
    ``(1 - weight) x cross-entropy + weight x T^2 x KL(teacher || student)`` on logits softened by the
    temperature T. The teacher runs in eval mode without gradients and is never changed."""

    teacher: nn.Module
    weight: float
    temperature: float = 4.0

    def loss(self, student_logits: Tensor, inputs: Inputs, labels: Tensor) -> Tensor:
        """The mixed loss of ``student_logits`` for one batch of ``inputs`` and ``labels``."""
        with torch.no_grad(), eval_mode(self.teacher):
            teacher_logits = logits(self.teacher, inputs)
        t = self.temperature
        student = nn.functional.log_softmax(student_logits / t, dim=-1)
        teacher = nn.functional.log_softmax(teacher_logits / t, dim=-1)
        divergence = nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True)
        hard = nn.functional.cross_entropy(student_logits, labels)
        return (1.0 - self.weight) * hard + self.weight * t * t * divergence


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[Inputs, Tensor]],
    steps: int,
    *,
    scheduler: Any = None,
    on_step: Callable[[int, float], None] | None = None,
    distillation: Distillation | None = None,
) -> None:
    """``steps`` steps of cross-entropy (or of ``distillation``'s loss); ``on_step(step, loss)`` after
    each (steps counted from 1). The model is left in training mode."""
    model.train()
    for step in range(1, steps + 1):
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        out = logits(model, x)
        loss = nn.functional.cross_entropy(out, y) if distillation is None else distillation.loss(out, x, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, *, steps: int, batch_size: int = 64, seed: int = 0
) -> None:
    """:func:`train` for ``steps`` steps on ``split``'s training set, shuffled by ``seed`` (epochs as needed)."""
    batches = shuffled_batches(split.train_inputs, split.train_y, batch_size, torch.Generator().manual_seed(seed))
    train(model, optimizer, batches, steps)


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Inputs, labels: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` in eval mode (each submodule's mode is restored afterwards)."""
    correct = 0
    with eval_mode(model):
        for start in range(0, len(labels), batch_size):
            index = slice(start, start + batch_size)
            correct += int((logits(model, select(inputs, index)).argmax(-1) == labels[index]).sum())
    return correct / len(labels)
