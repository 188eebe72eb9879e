"""Tests for ``geta.optim.forget``: the vectorized update equals Eq. 6, 13 and 14 computed unit by unit."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from geta.optim.equations import cosine, forget_rate, step_size
from geta.optim.forget import Forgetting
from geta.quant.functional import quantize_reference, top_level
from geta.quant.quantizer import Quantizer

SETTINGS = {"steps_left": 3, "eps": 1e-8, "eta": 0.5, "xi": 0.5}
BITS = (4, 8)


def _reference(
    units: list[tuple[Quantizer | None, list[tuple[Tensor, Tensor, Tensor]]]]
) -> tuple[list[Tensor], list[Tensor]]:
    """Eq. 6/13/14 unit by unit on full tensors: (x_old, x_after_base_step, mask) per tensor.

    Returns the new tensors and each quantizer's new d (written straight from the paper's formulas)."""
    new_tensors, new_d = [], []
    for quantizer, items in units:
        step_terms, clip_terms, dots, residual_rows, step_rows, dot_rows = [], [], [], [], [], []
        for old, now, mask in items:
            step = torch.where(mask, now - old, 0.0)
            if quantizer is None:
                clipped, residual = old.abs(), torch.zeros_like(old)
            else:
                d, q_m, t = (_broadcast(p.detach(), quantizer.axis, old.dim())
                             for p in quantizer.constrained_parameters())
                c = torch.minimum(old.abs(), q_m)
                clipped = torch.where(c > 0, c.clamp_min(1e-30) ** t, 0.0)
                residual = torch.minimum(torch.round(clipped / d), top_level(q_m**t / d)) - clipped / d
            clipped, residual = torch.where(mask, clipped, 0.0), torch.where(mask, residual, 0.0)
            step_terms.append(step)
            clip_terms.append((clipped, mask))
            dots.append((step * old.sign() * clipped).sum())
            axis = quantizer.axis if quantizer is not None else None
            residual_rows.append(_rows(residual * residual, axis))
            step_rows.append(_rows(step * step, axis))
            dot_rows.append(-_rows(step * old.sign() * residual, axis))
        step_norm = torch.sqrt(sum((s * s).sum() for s in step_terms))
        clip_norm = torch.sqrt(sum((c * c).sum() for c, _ in clip_terms))
        mean_clip = sum(c.sum() for c, _ in clip_terms) / sum(m.sum() for _, m in clip_terms)
        gamma = forget_rate(mean_clip, cosine(-sum(dots), step_norm, clip_norm), step_norm, clip_norm,
                            steps_left=SETTINGS["steps_left"], eps=SETTINGS["eps"], eta=SETTINGS["eta"])
        if quantizer is not None:
            rows_step, rows_residual = torch.sqrt(sum(step_rows)), torch.sqrt(sum(residual_rows))
            d_new = step_size(cosine(sum(dot_rows), rows_step, rows_residual), rows_step, rows_residual, gamma,
                              low_bits_step=quantizer.step_for_bits(BITS[0]).reshape(-1), eta=SETTINGS["eta"],
                              xi=SETTINGS["xi"])
            d_new = d_new.clamp(quantizer.step_for_bits(BITS[1]).reshape(-1),
                                quantizer.step_for_bits(BITS[0]).reshape(-1))
            counts = sum(_rows(m.to(torch.float64), quantizer.axis) for _, _, m in items)
            d_new = torch.where((counts > 0) & (gamma > 0), d_new,
                                quantizer.d.detach().reshape(-1)).reshape(quantizer.d.shape)
            new_d.append(d_new)
        for old, now, mask in items:
            if quantizer is None:
                x_q = old
            else:
                q_d, q_m, t = (_broadcast(p, quantizer.axis, old.dim())
                               for p in (d_new, *quantizer.constrained_parameters()[1:]))
                x_q = quantize_reference(old, q_d.detach(), q_m.detach(), t.detach())
            new_tensors.append(torch.where(mask, torch.zeros_like(now) if gamma == 0 else now - gamma * x_q, now))
    return new_tensors, new_d


def _rows(values: Tensor, axis: int | None) -> Tensor:
    return values.sum().reshape(1) if axis is None else values.movedim(axis, 0).reshape(values.shape[axis], -1).sum(1)


def _broadcast(p: Tensor, axis: int | None, ndim: int) -> Tensor:
    return p if axis is None else p.reshape([-1 if i == axis else 1 for i in range(ndim)])


def _quantizer(weight: Tensor, axis: int | None, bits: int) -> Quantizer:
    quantizer = Quantizer(bits, axis=axis, channels=weight.shape[axis] if axis is not None else 1).double()
    quantizer.init_from_weights_([weight])
    return quantizer


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_forgetting_equals_unit_by_unit_formulas(axis):
    generator = torch.Generator().manual_seed(3)
    conv = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)
    tied = torch.randn(6, 4, 3, 3, generator=generator, dtype=torch.float64)  # a second tensor of the same quantizer
    bias = torch.randn(6, generator=generator, dtype=torch.float64)
    linear = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    quantizer = _quantizer(conv, axis, 6)
    linear_quantizer = _quantizer(linear, None, 7)
    masks = {
        "conv": torch.zeros_like(conv, dtype=torch.bool).index_fill_(0, torch.tensor([1, 4]), True),
        "tied": torch.zeros_like(tied, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True),
        "bias": torch.zeros_like(bias, dtype=torch.bool).index_fill_(0, torch.tensor([1, 4]), True),
        "linear": torch.zeros_like(linear, dtype=torch.bool).index_fill_(1, torch.tensor([1, 4]), True),
    }
    tensors = {"conv": conv, "tied": tied, "bias": bias, "linear": linear}
    owners = {"conv": quantizer, "tied": quantizer, "bias": None, "linear": linear_quantizer}
    old = {k: v.clone() for k, v in tensors.items()}
    steps = {k: 0.05 * torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in tensors.items()}

    forgetting = Forgetting([(tensors[k], masks[k], owners[k]) for k in tensors])
    forgetting.snapshot()
    for k in tensors:
        tensors[k].add_(steps[k])
    now = {k: v.clone() for k, v in tensors.items()}
    expected, expected_d = _reference([
        (quantizer, [(old[k], now[k], masks[k]) for k in ("conv", "tied")]),
        (None, [(old["bias"], now["bias"], masks["bias"])]),
        (linear_quantizer, [(old["linear"], now["linear"], masks["linear"])]),
    ])
    forgetting.forget_(bits=BITS, **SETTINGS)

    for key, want in zip(("conv", "tied", "bias", "linear"), expected):
        torch.testing.assert_close(tensors[key], want, rtol=1e-9, atol=1e-12)
        assert torch.equal(tensors[key][~masks[key]], now[key][~masks[key]])  # nothing outside the mask moves
    torch.testing.assert_close(quantizer.d.detach(), expected_d[0], rtol=1e-9, atol=0)
    torch.testing.assert_close(linear_quantizer.d.detach(), expected_d[1], rtol=1e-9, atol=0)


def test_forget_needs_a_snapshot():
    weight = torch.randn(3, 3)
    forgetting = Forgetting([(weight, torch.ones(3, 3, dtype=torch.bool), None)])
    with pytest.raises(RuntimeError, match="snapshot"):
        forgetting.forget_(bits=BITS, **SETTINGS)


def test_no_redundant_positions_is_empty():
    assert not Forgetting([])
