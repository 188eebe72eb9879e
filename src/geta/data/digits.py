"""sklearn's bundled handwritten digits (1,797 8x8 images, 10 classes): no download needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geta.errors import GetaError


@dataclass(frozen=True)
class Split:
    """Train and test tensors of one data set: images (N, C, H, W) in [0, 1] and integer labels."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def train_batches(self, batch_size: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        """The training set shuffled by ``generator`` and cut into batches."""
        order = torch.randperm(len(self.train_y), generator=generator)
        return [(self.train_x[i], self.train_y[i]) for i in order.split(batch_size)]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The digits split into train and test, the same for every call with the same seed."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise GetaError("the digits data set needs scikit-learn: pip install scikit-learn") from error
    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return Split(images[train], labels[train], images[test], labels[test])
