"""A small CNN for 8x8 single-channel images (sklearn digits)."""

from __future__ import annotations

from torch import nn


def digits_cnn(width: int = 16, classes: int = 10) -> nn.Sequential:
    """conv-BN-ReLU x2, max-pool, conv-ReLU, global average pool, linear: about 20k parameters at width 16."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * width, classes),
    )
