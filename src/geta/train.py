"""A plain supervised training loop and accuracy, shared by the demo and the recipes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geta.data.digits import Split


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
            nn.functional.cross_entropy(model(x), y).backward()
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
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                return


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x``, ``y``."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(y)
