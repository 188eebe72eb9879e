"""The joint stage's update of the redundant groups (paper Eq. 6, 13 and 14).

A *forget unit* is one weight quantizer with the tensors it quantizes (a layer; tied weights share
one), or one trainable tensor without a quantizer (a bias, a norm's scale). For each unit, after
the base optimizer has taken its step ``s`` on every position:

    redundant positions:  x <- x_old + s - gamma * x^Q(x_old)     (Eq. 6)

with gamma from Eq. 13 measured over the unit's redundant positions and, for a quantized unit, its
step d set by Eq. 14 (per channel for a per-channel quantizer) before x^Q is computed. A unit
without a quantizer forgets x itself (x^Q = x, no rounding residual).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geta.optim.rules import cosine, forget_rate, step_size
from geta.quant.functional import top_level
from geta.quant.quantizer import Quantizer


@dataclass
class Redundant:
    """One tensor with redundant positions: ``mask`` marks them; ``before`` is the tensor before the step."""

    tensor: Tensor
    mask: Tensor
    before: Tensor | None = None


@dataclass
class ForgetUnit:
    """A weight quantizer (or None) and its tensors that hold redundant positions."""

    quantizer: Quantizer | None
    tensors: list[Redundant]

    def snapshot(self) -> None:
        """Remember every tensor's value before the base optimizer's step."""
        for item in self.tensors:
            item.before = item.tensor.detach().clone()

    @torch.no_grad()
    def forget_(self, *, steps_left: int, eps: float, eta: float, xi: float, bits: tuple[int, int]) -> Tensor:
        """Apply Eq. 6 to the redundant positions (setting d by Eq. 14 first); returns gamma."""
        quantizer = self.quantizer
        sums = _Sums()
        for item in self.tensors:
            sums.add(item, quantizer)
        step_norm = sums.step_sq.sqrt()
        clip_norm = sums.clip_sq.sqrt()
        mean_clip = sums.clip / sums.count.clamp_min(1)
        gamma = forget_rate(
            mean_clip, cosine(sums.dot_clip, step_norm, clip_norm), step_norm, clip_norm,
            steps_left=steps_left, eps=eps, eta=eta,
        )
        if quantizer is not None and gamma > 0:
            self._set_step(quantizer, sums, gamma, eta=eta, xi=xi, bits=bits)
        for item in self.tensors:
            if gamma == 0:
                item.tensor.masked_fill_(item.mask, 0.0)
            else:
                quantized = quantizer(item.before) if quantizer is not None else item.before
                item.tensor.sub_(gamma * torch.where(item.mask, quantized, 0.0))
            item.before = None
        return gamma

    @staticmethod
    def _set_step(quantizer: Quantizer, sums: _Sums, gamma: Tensor, *, eta: float, xi: float, bits: tuple[int, int]) -> None:
        """Eq. 14 per channel row with redundant positions, kept inside [d(b_u), d(b_l)]."""
        low, high = bits
        d_low = quantizer.step_for_bits(low).reshape(-1)
        d_high = quantizer.step_for_bits(high).reshape(-1)
        rows_step = sums.row_step_sq.sqrt()
        rows_residual = sums.row_residual_sq.sqrt()
        new = step_size(
            cosine(sums.row_dot_residual, rows_step, rows_residual), rows_step, rows_residual, gamma,
            low_bits_step=d_low, eta=eta, xi=xi,
        )
        new = torch.minimum(torch.maximum(new, d_high), d_low)
        current = quantizer.d.detach().reshape(-1).expand_as(new)
        updated = torch.where(sums.row_count > 0, new, current)
        quantizer.d.copy_(updated.reshape(quantizer.d.shape))


class _Sums:
    """Running sums over a unit's redundant positions (per unit, and per quantizer channel row)."""

    def __init__(self) -> None:
        zero = torch.zeros(())
        self.clip = self.count = self.dot_clip = self.step_sq = self.clip_sq = zero
        self.row_dot_residual = self.row_step_sq = self.row_residual_sq = self.row_count = zero

    def add(self, item: Redundant, quantizer: Quantizer | None) -> None:
        x, mask = item.before, item.mask
        step = torch.where(mask, item.tensor - x, 0.0)
        sign = torch.sign(x)
        magnitude = x.abs()
        if quantizer is None:
            clipped = magnitude
            residual = torch.zeros_like(x)
        else:
            d, q_m, t = (_broadcast(p.detach(), quantizer.axis, x.dim()) for p in quantizer.constrained_parameters())
            c = torch.minimum(magnitude, q_m)
            clipped = torch.where(c > 0, torch.where(c > 0, c, 1.0) ** t, 0.0)
            u = clipped / d
            residual = torch.minimum(torch.round(u), top_level(q_m**t / d)) - u
        clipped = torch.where(mask, clipped, 0.0)
        residual = torch.where(mask, residual, 0.0)
        self.clip = self.clip + clipped.sum()
        self.count = self.count + mask.sum()
        self.dot_clip = self.dot_clip - (step * sign * clipped).sum()
        self.step_sq = self.step_sq + (step * step).sum()
        self.clip_sq = self.clip_sq + (clipped * clipped).sum()
        axis = None if quantizer is None else quantizer.axis
        self.row_dot_residual = self.row_dot_residual - _rows(step * sign * residual, axis)
        self.row_step_sq = self.row_step_sq + _rows(step * step, axis)
        self.row_residual_sq = self.row_residual_sq + _rows(residual * residual, axis)
        self.row_count = self.row_count + _rows(mask.to(x.dtype), axis)


def _rows(values: Tensor, axis: int | None) -> Tensor:
    """Sum per channel along ``axis`` (one row for a per-tensor quantizer)."""
    if axis is None:
        return values.sum().reshape(1)
    return values.movedim(axis, 0).reshape(values.shape[axis], -1).sum(1)


def _broadcast(parameter: Tensor, axis: int | None, ndim: int) -> Tensor:
    if axis is None:
        return parameter
    shape = [1] * ndim
    shape[axis] = -1
    return parameter.reshape(shape)
