"""sklearn's bundled handwritten digits (1,797 8x8 images, 10 classes): no download needed."""

from __future__ import annotations

import torch

from geta.data.split import Split
from geta.errors import GetaError

__all__ = ["Split", "load_digits"]


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
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return Split(images[train], labels[train], images[test], labels[test])
