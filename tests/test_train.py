"""The one training loop and accuracy: batches as the split shuffles them, modes restored."""

import pytest
import torch
from torch import nn

from geta.data.split import Split
from geta.train import Distillation, accuracy, shuffled_batches, train, train_steps


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


def test_distillation_without_its_weight_is_cross_entropy_and_at_full_weight_is_least_at_the_teacher() -> None:
    teacher = nn.Linear(3, 4)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(2))
    target = teacher(x).detach()
    other = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(Distillation(teacher, 0.0).loss(other, x, y), nn.functional.cross_entropy(other, y))
    full = Distillation(teacher, 1.0, temperature=2.0)
    assert float(full.loss(target, x, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(full.loss(target + 5.0, x, y)) == pytest.approx(0.0, abs=1e-5)  # a shift of every logit is no change
    assert float(full.loss(other, x, y)) > 0.01
    half = Distillation(teacher, 0.5, temperature=2.0)
    assert float(half.loss(target, x, y)) == pytest.approx(0.5 * float(nn.functional.cross_entropy(target, y)))


def test_training_with_distillation_moves_the_student_toward_a_frozen_teacher_left_as_it_was() -> None:
    split = _split()
    teacher = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Linear(3, 2)
    distillation = Distillation(teacher, 1.0)

    def gap() -> float:
        with torch.no_grad():
            teacher.eval()
            out = float(distillation.loss(student(split.train_x), split.train_x, split.train_y))
            teacher.train()
            return out

    start = gap()
    batches = shuffled_batches(split.train_x, split.train_y, 8, torch.Generator().manual_seed(0))
    train(student, torch.optim.SGD(student.parameters(), lr=0.5), batches, 40, distillation=distillation)
    assert gap() < 0.5 * start
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert [m.training for m in teacher.modules()] == [True, True, True, True]
