"""The digits split is deterministic, disjoint and complete."""

import torch

from geta.data.digits import load_digits


def test_split_is_deterministic_and_complete() -> None:
    a, b = load_digits(seed=3), load_digits(seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert len(a.train_y) + len(a.test_y) == 1797
    assert a.train_x.shape[1:] == (1, 8, 8) and a.train_x.min() >= 0 and a.train_x.max() <= 1
    assert not torch.equal(load_digits(seed=4).test_y, a.test_y)


def test_batches_cover_the_training_set_once() -> None:
    split = load_digits()
    batches = split.train_batches(100, torch.Generator().manual_seed(0))
    assert sum(len(y) for _, y in batches) == len(split.train_y)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(split.train_y.tolist())
