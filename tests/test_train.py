"""The one training loop and accuracy: batches as the split shuffles them, modes restored."""

import torch
from torch import nn

from geta.data.split import Split
from geta.train import accuracy, train_steps


def _split() -> Split:
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return Split(train_x=x[:30], train_y=y[:30], test_x=x[30:], test_y=y[30:])


def test_accuracy_restores_each_submodules_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[1].eval()
    split = _split()
    assert accuracy(model, split.test_x, split.test_y) == accuracy(model, split.test_x, split.test_y)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_train_steps_takes_the_splits_shuffled_batches_epoch_after_epoch() -> None:
    split = _split()
    seen: list[torch.Tensor] = []
    model = nn.Linear(3, 2)
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), split, steps=5, batch_size=8, seed=3)
    generator = torch.Generator().manual_seed(3)
    expected = [x for _ in range(2) for x, _ in split.train_batches(8, generator)][:5]
    assert len(seen) == 5 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert model.training
