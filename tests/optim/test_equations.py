"""Eq. 13 (forget rate) and Eq. 14 (quantization step) on hand-computed cases, one per branch."""

from __future__ import annotations

import pytest
import torch

from geta.optim.equations import cosine, forget_rate, step_size


def t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def test_cosine_is_zero_when_a_vector_vanishes() -> None:
    assert cosine(t(3.0), t(0.0), t(2.0)) == 0
    assert cosine(t(-2.0), t(2.0), t(2.0)) == -0.5


def test_forget_rate_is_zero_when_little_is_left() -> None:
    gamma = forget_rate(t(1e-9), t(0.5), t(1.0), t(1.0), steps_left=4, eps=1e-8, eta=0.5)
    assert gamma == 0


def test_forget_rate_is_uniform_when_the_step_already_forgets() -> None:
    # cos >= 0: gamma = 1 - (K_p - k - 1) / (K_p - k) = 1 / (K_p - k); K_p = 10, k = 6
    gamma = forget_rate(t(0.3), t(0.2), t(1.0), t(2.0), steps_left=4, eps=1e-8, eta=0.5)
    assert gamma == pytest.approx(1 - 3 / 4)
    assert forget_rate(t(0.3), t(0.0), t(1.0), t(2.0), steps_left=1, eps=1e-8, eta=0.5) == 1


def test_forget_rate_keeps_descent_when_the_step_opposes_forgetting() -> None:
    # cos < 0: gamma = -(1 - eta) * ||s|| / (cos * ||clip||) = -(0.75 * 2) / (-0.5 * 3) = 1
    gamma = forget_rate(t(0.3), t(-0.5), t(2.0), t(3.0), steps_left=4, eps=1e-8, eta=0.25)
    assert gamma == pytest.approx(1.0)


def test_forget_rate_never_carries_weights_past_zero() -> None:
    # cos slightly below 0: the formula gives -(0.5 * 2) / (-1e-4 * 3) = 3333; Eq. 6 with gamma > 1 would
    # make the redundant weights larger, with the opposite sign
    gamma = forget_rate(t(0.3), t(-1e-4), t(2.0), t(3.0), steps_left=4, eps=1e-8, eta=0.5)
    assert gamma == 1.0
    assert forget_rate(t(0.3), t(-0.5), t(0.5), t(3.0), steps_left=4, eps=1e-8, eta=0.5) == pytest.approx(1 / 6)


def test_step_size_takes_the_low_bit_step_when_rounding_helps() -> None:
    d = step_size(t(0.1), t(1.0), t(1.0), t(0.5), low_bits_step=t(0.125), eta=0.5, xi=0.5)
    assert d == 0.125


def test_step_size_keeps_descent_when_rounding_opposes_the_step() -> None:
    # cos < 0: d = -xi * eta * ||s|| / (gamma * cos * ||R||) = -(0.5 * 0.5 * 2) / (0.25 * -0.5 * 4) = 1
    d = step_size(t(-0.5), t(2.0), t(4.0), t(0.25), low_bits_step=t(0.125), eta=0.5, xi=0.5)
    assert d == pytest.approx(1.0)


def test_equations_work_per_channel() -> None:
    cos = torch.tensor([0.5, -0.5], dtype=torch.float64)
    d = step_size(cos, t(2.0), torch.tensor([1.0, 4.0], dtype=torch.float64), t(0.25),
                  low_bits_step=torch.tensor([0.1, 0.2], dtype=torch.float64), eta=0.5, xi=0.5)
    torch.testing.assert_close(d, torch.tensor([0.1, 1.0], dtype=torch.float64))


def test_forget_rate_needs_a_step_left() -> None:
    with pytest.raises(ValueError, match="steps_left"):
        forget_rate(t(1.0), t(1.0), t(1.0), t(1.0), steps_left=0, eps=0.0, eta=0.5)
