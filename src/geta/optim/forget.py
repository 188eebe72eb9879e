"""The joint stage's update of the redundant groups (paper Eq. 6, 13 and 14).

A *forget unit* is one weight quantizer with the tensors it quantizes (a layer; tied weights share
one), or one trainable tensor without a quantizer (a bias, a norm's scale). For each unit, after
the base optimizer has taken its step ``s`` on every position:

    redundant positions:  x <- x_old + s - gamma * x^Q(x_old)     (Eq. 6)

with gamma from Eq. 13 measured over the unit's redundant positions and, for a quantized unit, its
step d set by Eq. 14 (per channel for a per-channel quantizer) before x^Q is computed. A unit
without a quantizer forgets x itself (x^Q = x, no rounding residual).

:class:`Forgetting` gathers the period's redundant positions of every unit into one flat vector
(each position knows its quantizer *row*: the quantizer's channel, or its only row), so a step
costs two fused kernels plus a gather and a scatter per tensor, whatever the number of layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from geta.optim.equations import cosine, forget_rate, step_size
from geta.quant.functional import levels_ratio, step_for_bits, top_level
from geta.quant.kernel import clipped_power, fused, quantized_values
from geta.quant.quantizer import Quantizer

# Columns of the per-row sums: ||s||^2, ||c||^2, sum c, <s, sign(x) c>, <s, sign(x) R>, ||R||^2
_STEP_SQ, _CLIP_SQ, _CLIP, _STEP_CLIP, _STEP_RESIDUAL, _RESIDUAL_SQ = range(6)


def _clipped(x: Tensor, q_m: Tensor, t: Tensor, quantized: Tensor) -> Tensor:
    """c = clip^t(|x|) (Eq. 10) where quantized, |x| elsewhere."""
    return torch.where(quantized, clipped_power(x, q_m, t), x.abs())


def _terms(x: Tensor, now: Tensor, row_of: Tensor, d_rows: Tensor, q_rows: Tensor, t_rows: Tensor,
           top_rows: Tensor, quantized_rows: Tensor) -> Tensor:
    """Per redundant position, the six terms summed per row for Eq. 13 and 14 (a (positions, 6) tensor)."""
    d, top, quantized = d_rows[row_of], top_rows[row_of], quantized_rows[row_of]
    step = now - x
    sign = torch.sign(x)
    clipped = _clipped(x, q_rows[row_of], t_rows[row_of], quantized)
    u = clipped / d
    residual = torch.where(quantized, torch.minimum(torch.round(u), top) - u, 0.0)
    return torch.stack([step * step, clipped * clipped, clipped, step * sign * clipped,
                        step * sign * residual, residual * residual], dim=1)


def _forgotten(x: Tensor, now: Tensor, row_of: Tensor, d_rows: Tensor, q_rows: Tensor, t_rows: Tensor,
               top_rows: Tensor, quantized_rows: Tensor, neg_rows: Tensor, gamma_rows: Tensor) -> Tensor:
    """Eq. 6: the new values of the redundant positions (exactly 0 where the unit's gamma is 0)."""
    quantized, gamma = quantized_rows[row_of], gamma_rows[row_of]
    neg = neg_rows[row_of]  # weight quantizers: symmetric levels, no two's-complement extra level
    x_q = quantized_values(x, d_rows[row_of], q_rows[row_of], t_rows[row_of], top_rows[row_of], neg, 0 * neg)
    return torch.where(gamma == 0, 0.0, now - gamma * torch.where(quantized, x_q, x))


_terms_kernel = fused("forget_terms", _terms)  # the sums stay eager: a compiled scatter-add is slower
_forgotten_kernel = fused("forget_values", _forgotten)


@dataclass(frozen=True)
class _Slot:
    """One tensor's redundant positions: flat (row-major) indices, and their place in the flat vector."""

    tensor: Tensor
    index: Tensor
    span: slice


class Forgetting:
    """The redundant positions of one pruning period, ready to be forgotten step by step.

    Args:
        masks: (tensor, bool mask of its redundant positions, its weight quantizer or None). Tensors
            that share a quantizer form one unit; a tensor without one is a unit of its own.
    """

    def __init__(self, masks: list[tuple[Tensor, Tensor, Quantizer | None]]) -> None:
        self.quantizers: list[Quantizer | None] = []
        unit_of_key: dict[int, int] = {}
        first_row: list[int] = []
        self.slots: list[_Slot] = []
        row_of: list[Tensor] = []
        slot_unit: list[int] = []
        rows = start = 0
        for tensor, mask, quantizer in masks:
            key = id(quantizer) if quantizer is not None else id(tensor)
            if key not in unit_of_key:
                unit_of_key[key] = len(self.quantizers)
                self.quantizers.append(quantizer)
                first_row.append(rows)
                rows += _row_count(quantizer)
            index = mask.reshape(-1).nonzero().squeeze(1)
            self.slots.append(_Slot(tensor, index, slice(start, start + len(index))))
            slot_unit.append(unit_of_key[key])
            start += len(index)
            row = torch.zeros_like(index) + first_row[unit_of_key[key]]
            if quantizer is not None and quantizer.axis is not None:
                inner = tensor.shape[quantizer.axis + 1:].numel()
                row += index // inner % tensor.shape[quantizer.axis]
            row_of.append(row)
        device = masks[0][0].device if masks else torch.device("cpu")
        self.dtype = masks[0][0].dtype if masks else torch.get_default_dtype()
        self.slot_unit = torch.tensor(slot_unit, dtype=torch.long, device=device)
        self.per_channel = rows > len(self.quantizers)
        self.row_of = torch.cat(row_of).to(device) if row_of else torch.zeros(0, dtype=torch.long)
        row_units = [u for u, q in enumerate(self.quantizers) for _ in range(_row_count(q))]
        self.row_unit = torch.tensor(row_units, dtype=torch.long, device=device)
        row_quantizers = [self.quantizers[u] for u in row_units]
        self.quantized_rows = torch.tensor([q is not None for q in row_quantizers], dtype=torch.bool, device=device)
        self.signed_rows = torch.tensor([q is None or q.signed for q in row_quantizers], dtype=torch.bool,
                                        device=device)
        self.neg_rows = torch.where(self.signed_rows, -1.0, 0.0).to(self.dtype)  # see quant.kernel.signs
        ones = torch.ones(len(self.row_of), device=device)
        self.row_count = torch.zeros(rows, device=device).index_add_(0, self.row_of, ones)
        self.unit_count = torch.zeros(len(self.quantizers), device=device).index_add_(0, self.row_unit, self.row_count)
        self.before: Tensor | None = None

    def __bool__(self) -> bool:
        return bool(self.slots)

    def _gather(self) -> Tensor:
        return torch.cat([torch.take(slot.tensor.detach(), slot.index) for slot in self.slots])

    def snapshot(self) -> None:
        """Remember the redundant positions' values before the base optimizer's step."""
        self.before = self._gather()

    def _rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """d, q_m, t of every row (1 for units without a quantizer), as the quantizers use them."""
        columns: list[list[Tensor]] = [[], [], []]
        one = torch.ones(1, dtype=self.dtype, device=self.row_of.device)
        for quantizer in self.quantizers:
            values = quantizer.constrained_parameters() if quantizer is not None else (one, one, one)
            for column, value in zip(columns, values):
                column.append(value.detach().reshape(-1))
        return torch.cat(columns[0]), torch.cat(columns[1]), torch.cat(columns[2])

    @torch.no_grad()
    def forget_(self, *, steps_left: int, eps: float, eta: float, xi: float, bits: tuple[int, int]) -> Tensor:
        """Apply Eq. 6 to every unit's redundant positions (setting d by Eq. 14 first); returns gamma per unit."""
        x = self.before
        if x is None:
            raise RuntimeError("Forgetting.snapshot() must run before the base optimizer's step")
        self.before = None
        now = self._gather()
        d_rows, q_rows, t_rows = self._rows()
        top_rows = top_level(levels_ratio(d_rows, q_rows, t_rows))
        terms = _terms_kernel(x, now, self.row_of, d_rows, q_rows, t_rows, top_rows, self.quantized_rows)
        slot_sums = torch.stack([terms[slot.span].sum(0) for slot in self.slots])
        units = torch.zeros(len(self.quantizers), 6, dtype=terms.dtype, device=terms.device)
        units.index_add_(0, self.slot_unit, slot_sums)
        if self.per_channel:  # a scatter by row, needed only when some row is a channel
            sums = torch.zeros(len(d_rows), 6, dtype=terms.dtype, device=terms.device).index_add_(0, self.row_of, terms)
        else:
            sums = units
        step_norm, clip_norm = units[:, _STEP_SQ].sqrt(), units[:, _CLIP_SQ].sqrt()
        gamma = forget_rate(
            units[:, _CLIP] / self.unit_count.clamp_min(1), cosine(-units[:, _STEP_CLIP], step_norm, clip_norm),
            step_norm, clip_norm, steps_left=steps_left, eps=eps, eta=eta,
        )
        gamma_rows = gamma[self.row_unit]
        d_rows = self._set_steps(d_rows, q_rows, t_rows, sums, gamma_rows, bits=bits, eta=eta, xi=xi)
        top_rows = top_level(levels_ratio(d_rows, q_rows, t_rows))  # with the new d
        values = _forgotten_kernel(x, now, self.row_of, d_rows, q_rows, t_rows, top_rows,
                                   self.quantized_rows, self.neg_rows, gamma_rows)
        for slot in self.slots:
            slot.tensor.put_(slot.index, values[slot.span].to(slot.tensor.dtype))
        return gamma

    def _set_steps(self, d_rows: Tensor, q_rows: Tensor, t_rows: Tensor, sums: Tensor, gamma_rows: Tensor, *,
                   bits: tuple[int, int], eta: float, xi: float) -> Tensor:
        """Eq. 14 per quantizer row with redundant positions (unit gamma > 0), kept inside [d(b_u), d(b_l)];
        writes d back into the quantizers and returns every row's d."""
        low, high = bits
        # a signed quantizer's step at b bits is an unsigned one's at b - 1 (one bit holds the sign)
        sign_bit = self.signed_rows.to(q_rows.dtype)
        d_low = step_for_bits(low - sign_bit, q_rows, t_rows, signed=False)
        d_high = step_for_bits(high - sign_bit, q_rows, t_rows, signed=False)
        rows_step = sums[:, _STEP_SQ].sqrt()
        rows_residual = sums[:, _RESIDUAL_SQ].sqrt()
        new = step_size(
            cosine(-sums[:, _STEP_RESIDUAL], rows_step, rows_residual), rows_step, rows_residual, gamma_rows,
            low_bits_step=d_low, eta=eta, xi=xi,
        )
        new = torch.minimum(torch.maximum(new, d_high), d_low)
        d_rows = torch.where(self.quantized_rows & (gamma_rows > 0) & (self.row_count > 0), new, d_rows)
        start = 0
        for quantizer in self.quantizers:
            if quantizer is not None:
                quantizer.d.copy_(d_rows[start:start + quantizer.d.numel()].reshape(quantizer.d.shape))
            start += _row_count(quantizer)
        return d_rows


def _row_count(quantizer: Quantizer | None) -> int:
    return quantizer.d.numel() if quantizer is not None else 1
