"""The digits CNN learns real data: a few epochs reach high accuracy."""

import torch

from geta.data.digits import load_digits
from geta.models.cnn import digits_cnn
from geta.train import accuracy, batches_per_epoch, train_steps


def test_digits_cnn_learns() -> None:
    torch.manual_seed(0)
    split = load_digits()
    model = digits_cnn(width=16)
    assert model(split.test_x[:2]).shape == (2, 10)
    steps = 6 * batches_per_epoch(split.train_y, 64)  # six epochs
    train_steps(model, torch.optim.Adam(model.parameters(), lr=3e-3), split, steps=steps)
    assert accuracy(model, split.test_x, split.test_y) > 0.9
