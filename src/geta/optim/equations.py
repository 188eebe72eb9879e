"""The joint stage's two selection rules (paper Eq. 13 and 14), as plain functions of measured quantities.

Both are stated in terms of the base optimizer's step ``s = -alpha * g`` (whatever SGD with
momentum, Adam or AdamW would do), so ``alpha * ||g||`` is ``||s||``:

Eq. 13, forget rate gamma (``clip`` is the mean clipped magnitude in the redundant groups):

    gamma = 0                                            if clip <= eps
          = 1 / (K_p - k)                                if cos(theta_gamma) >= 0
          = min(1, -(1 - eta) ||s|| / (cos(theta_gamma) ||c||))  otherwise

The cap at 1 is geta's: Eq. 6 subtracts gamma x^Q, so gamma > 1 would carry the redundant weights past
zero and make them larger, with the opposite sign, than they were. Where cos(theta_gamma) is a tiny
negative number the uncapped formula gives exactly that: on VGG7 it once gave gamma near 6 for a layer,
whose weight norm went from 7 to 37 in one step and the network never recovered. A smaller gamma keeps
the direction a descent direction (the bound of Proposition 5.1 is an upper bound).

Eq. 14, quantization step d (kept inside [d(b_u), d(b_l)] by the caller):

    d = d(b_l)                                           if cos(theta_d) >= 0
      = -xi * eta * ||s|| / (gamma cos(theta_d) ||R||)   otherwise

theta_gamma is the angle between s and -sign(x) * c (c = clip^t(|x|), Eq. 10), theta_d the angle
between s and -sign(x) * R (R the rounding residual, Eq. 11). With these choices the search
direction of the redundant groups stays a descent direction (Proposition 5.1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cosine(dot: Tensor, norm_a: Tensor, norm_b: Tensor) -> Tensor:
    """dot / (norm_a * norm_b), defined as 0 where either norm is 0."""
    denominator = norm_a * norm_b
    return torch.where(denominator > 0, dot / torch.where(denominator > 0, denominator, 1), torch.zeros_like(dot))


def forget_rate(
    mean_clip: Tensor, cos_gamma: Tensor, step_norm: Tensor, clip_norm: Tensor, *, steps_left: int, eps: float,
    eta: float,
) -> Tensor:
    """gamma of Eq. 13; ``steps_left`` is K_p - k (1 on the period's last step)."""
    if steps_left < 1:
        raise ValueError(f"steps_left={steps_left} must be at least 1")
    uniform = torch.full_like(mean_clip, 1.0 / steps_left)
    safe = torch.where(cos_gamma < 0, cos_gamma * clip_norm, -torch.ones_like(cos_gamma))
    descent = (-(1 - eta) * step_norm / safe).clamp(max=1.0)
    gamma = torch.where(cos_gamma >= 0, uniform, descent)
    return torch.where(mean_clip <= eps, torch.zeros_like(gamma), gamma)


def step_size(
    cos_d: Tensor, step_norm: Tensor, residual_norm: Tensor, gamma: Tensor, *, low_bits_step: Tensor, eta: float,
    xi: float,
) -> Tensor:
    """d of Eq. 14 (before it is kept inside the bit range); ``low_bits_step`` is d(b_l).

    Needs gamma > 0: with gamma = 0 nothing is forgotten and d keeps its gradient step instead.
    """
    safe = torch.where(cos_d < 0, gamma * cos_d * residual_norm, -torch.ones_like(cos_d))
    descent = -xi * eta * step_norm / safe
    return torch.where(cos_d >= 0, low_bits_step, descent)
