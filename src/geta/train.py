"""A plain supervised training loop and accuracy, shared by the demo and the recipes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geta.data.split import Inputs, Split, call, select


def train_epochs(
    model: nn.Module, split: Split, *, epochs: int, lr: float, batch_size: int = 64, seed: int = 0
) -> None:
    """Train ``model`` with Adam and cross-entropy for ``epochs`` passes over the training set."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for x, y in split.train_batches(batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(call(model, x), y).backward()
            optimizer.step()


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, *, steps: int, batch_size: int = 64, seed: int = 0
) -> None:
    """Take ``steps`` optimizer steps of cross-entropy on shuffled training batches (epochs as needed)."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        for x, y in split.train_batches(batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(call(model, x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                return


@torch.no_grad()
def accuracy(model: nn.Module, x: Inputs, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on inputs ``x`` (a tensor or a dict of them) and labels ``y``."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        rows = slice(start, start + batch_size)
        correct += int((call(model, select(x, rows)).argmax(1) == y[rows]).sum())
    return correct / len(y)
