"""The quantization mapping of GETA (paper Sec. 3, docs/design.md Sec. 1) as plain torch ops.

    c   = min(|x|, q_m)
    n   = q_m^t / d                         (the largest level, in steps)
    x^Q = sign(x) * d * min(round(c^t / d), floor(n))
    b   = log2(n + 1) + 1                   (signed; unsigned drops the sign bit)

The cap at floor(n) matters only when the fractional part of n is at least 0.5: without it the top
level would be round(n) > n, an output beyond q_m^t that b bits cannot hold. With it a tensor has
exactly 2 * floor(n) + 1 levels, and a capped element behaves as clipped (gradient as |x| > q_m).

Two's complement (``twos_complement=True``, signed, for t = 1): negative inputs are clipped one step
further, at q_m + d, and capped at floor(n) + 1, so the levels are -(floor(n) + 1) .. floor(n): the whole
range of a b-bit two's-complement integer (-128 .. 127 at 8 bits) in the same b bits. An integer runtime
then needs no clip of its own between its saturating QuantizeLinear and the next kernel (see
``geta.export.onnx``). A negative input clipped there behaves as capped at that level: x^Q =
-(q_m + d (floor(n) + 1 - n)), with the straight-through gradients of the capped case.

The straight-through round (and floor) make autograd produce exactly the closed-form gradients of
docs/design.md Sec. 1 for d, q_m, t and x. This is the reference implementation: the fused kernel in
``kernel.py`` must agree with it, and it is what graph capture and ``torch.compile`` see.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.errors import ConfigError

MIN_CLIP = 1e-30  # q_m floor
MIN_EXPONENT = 1e-3  # t floor
MAX_BITS = 32  # d floor: d >= d(32 bits), relative to q_m^t, so tiny ranges still reach any bit width


def constrain(d: Tensor, q_m: Tensor, t: Tensor, signed: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """d, q_m, t kept positive (q_m >= 1e-30, t >= 1e-3, d >= d(32 bits)); where a value is at or
    above its floor it passes through with its gradient, below it the floor takes over."""
    q_m = torch.where(q_m >= MIN_CLIP, q_m, torch.full_like(q_m, MIN_CLIP))
    t = torch.where(t >= MIN_EXPONENT, t, torch.full_like(t, MIN_EXPONENT))
    floor = step_for_bits(float(MAX_BITS), q_m, t, signed).detach()
    return torch.where(d >= floor, d, floor), q_m, t


def round_ste(u: Tensor) -> Tensor:
    """Round to nearest in the forward pass, identity in the backward pass."""
    return u + (torch.round(u) - u).detach()


def quantize_reference(
    x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, signed: bool = True, twos_complement: bool = False
) -> Tensor:
    """Quantize ``x`` with step ``d``, clip ``q_m`` and exponent ``t`` (broadcast against ``x``).

    In unsigned mode negative inputs map to 0 (levels 0 .. floor(q_m^t / d)). At ``c == 0`` the
    power and its logarithm are guarded so that no gradient is NaN; every gradient there is 0.
    At ``|x| == q_m`` the gradient goes to x (inside the clip), none to q_m. ``twos_complement``
    (signed only): one more level below zero, as the module docstring says.
    """
    s = torch.sign(x) if signed else (x > 0).to(x.dtype)
    a = x.abs()
    extra = (x < 0).to(x.dtype) if twos_complement and signed else None
    bound = q_m if extra is None else q_m + extra * d
    c = torch.where(a <= bound, a, bound)
    positive = c > 0
    safe_c = torch.where(positive, c, torch.ones_like(c))
    c_t = torch.where(positive, safe_c**t, torch.zeros_like(c))
    u = c_t / d
    n = levels_ratio(d, q_m, t)
    top = n + (top_level(n) - n).detach()
    top = top if extra is None else top + extra
    level = torch.where(torch.round(u) > top.detach(), top, round_ste(u))
    return s * d * level


def levels_ratio(d: Tensor, q_m: Tensor, t: Tensor) -> Tensor:
    """n = q_m^t / d: the largest quantization level, in steps."""
    return q_m**t / d


def top_level(n: Tensor) -> Tensor:
    """floor(n), forgiving the rounding error of computing n: d = d(b) must give n = 2^(b-1) - 1."""
    return torch.floor(n * (1 + 8 * torch.finfo(n.dtype).eps))


def bit_width(d: Tensor, q_m: Tensor, t: Tensor, signed: bool = True) -> Tensor:
    """Learned (continuous) bit width, Eq. 3: log2(q_m^t / d + 1) + 1 for signed quantizers."""
    b = torch.log2(levels_ratio(d, q_m, t) + 1)
    return b + 1 if signed else b


def step_for_bits(bits: float | Tensor, q_m: Tensor, t: Tensor, signed: bool = True) -> Tensor:
    """Inverse of :func:`bit_width`: the step d that gives ``bits`` bits for this q_m and t."""
    exponent = bits - 1 if signed else bits
    return q_m**t / (2.0**exponent - 1)


def integer_bits(d: Tensor, q_m: Tensor, t: Tensor, signed: bool = True) -> Tensor:
    """Bits an integer format needs to hold every level the quantizer can produce.

    Signed: levels -n..n with n = floor(q_m^t / d), i.e. 2n + 1 of them, in ceil(log2(2n + 2)) bits.
    Unsigned: levels 0..n in ceil(log2(n + 1)) bits. This is Eq. 3 rounded to the width a
    deployed integer tensor has, and is what BOPs and model size are computed from.
    """
    n = top_level(levels_ratio(d, q_m, t))
    count = 2 * n + 2 if signed else n + 1
    return torch.ceil(torch.log2(torch.clamp(count, min=2)))


def check_bits(bits: object, name: str) -> int:
    """Validate one bit width given by a user: an integer of at least 2 (one sign bit plus one)."""
    if isinstance(bits, bool) or (not isinstance(bits, int) and not (isinstance(bits, float) and bits.is_integer())):
        raise ConfigError(f"{name}={bits!r} is not an integer bit width; pass an int such as 8")
    if bits < 2 or bits > 32:
        raise ConfigError(f"{name}={bits} is outside [2, 32]; pass an integer bit width in that range")
    return int(bits)


def check_bit_range(bit_range: object, name: str) -> tuple[int, int]:
    """Validate a (low, high) bit range: integers, low <= high, both in [2, 32]."""
    if not isinstance(bit_range, (tuple, list)) or len(bit_range) != 2:
        raise ConfigError(f"{name}={bit_range!r} is not a (low, high) pair; pass e.g. {name}=(4, 8)")
    low = check_bits(bit_range[0], f"{name}[0]")
    high = check_bits(bit_range[1], f"{name}[1]")
    if low > high:
        raise ConfigError(f"{name}=({low}, {high}) is inverted; pass the lower bound first: ({high}, {low})")
    return low, high
