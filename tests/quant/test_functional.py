"""Tests for ``geta.quant.functional``: the quantization mapping, its gradients and bit-width algebra.

The closed-form gradients of the design (straight-through round) are checked against autograd for
both the reference ops and the fused kernel, in signed and unsigned mode, including x = 0.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geta.errors import ConfigError
from geta.quant import kernel
from geta.quant.functional import (
    bit_width,
    check_bit_range,
    check_bits,
    constrain,
    integer_bits,
    quantize_reference,
    step_for_bits,
)

F64 = torch.float64
PROPERTY = settings(max_examples=50, deadline=None)


def _fused(x, d, q_m, t, signed):
    """The fused kernel, asserting it really ran fused (it warns when it falls back)."""
    kernel.set_fused_kernel(True)  # re-arm: a fallback earlier would otherwise be silent here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kernel.quantize(x, d, q_m, t, signed=signed)
    fallbacks = [w for w in caught if "fused quantization kernel" in str(w.message)]
    assert not fallbacks, f"fused kernel fell back to the reference ops: {fallbacks[0].message}"
    return out


IMPLEMENTATIONS = {"reference": quantize_reference, "fused": _fused}


def _scalar(value: float, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(value, dtype=F64, requires_grad=requires_grad)


def _closed_form(x, d, q_m, t, signed):
    """Per-element x^Q and its derivatives w.r.t. d, q_m, t and x (docs/design.md Sec. 1).

    The top level is capped at floor(q_m^t / d) (see ``functional``); a capped element takes the
    gradients of a clipped one, with round(n) - n replaced by floor(n) - n for d.
    """
    s = torch.sign(x) if signed else (x > 0).to(x.dtype)
    a = x.abs()
    c = torch.minimum(a, q_m)
    positive = c > 0
    safe_c = torch.where(positive, c, torch.ones_like(c))
    c_t = torch.where(positive, safe_c**t, torch.zeros_like(c))
    u = c_t / d
    n = q_m**t / d
    top = torch.floor(n)
    capped = torch.round(u) > top
    clipped = (a > q_m) | capped
    out = s * d * torch.minimum(torch.round(u), top)
    grad_d = s * torch.where(capped, top - n, torch.round(u) - u)
    grad_q_m = torch.where(clipped, s * t * q_m ** (t - 1), torch.zeros_like(x))
    grad_t = torch.where(capped, s * q_m**t * torch.log(q_m), torch.where(positive, s * c_t * torch.log(safe_c), 0.0))
    # dx^Q/dx = s * sign(x) * t |x|^(t-1): t |x|^(t-1) when signed, and 0 for x < 0 when unsigned.
    grad_x = torch.where(positive & ~clipped, s * torch.sign(x) * t * safe_c ** (t - 1), torch.zeros_like(x))
    return out, grad_d, grad_q_m, grad_t, grad_x


def _test_input(q_m: float) -> torch.Tensor:
    """Values inside the clip, outside it (both signs), and exact zeros; none exactly at |x| = q_m."""
    generator = torch.Generator().manual_seed(0)
    inside = (torch.rand(40, generator=generator, dtype=F64) * 2 - 1) * q_m * 0.999
    outside = torch.tensor([-3.0, -1.5, -1.01, 1.01, 1.5, 3.0], dtype=F64) * q_m
    special = torch.tensor([0.0, 0.0, -0.0, 1e-6, -1e-6, 0.999 * q_m, -0.999 * q_m], dtype=F64)
    return torch.cat([inside, outside, special])


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("t_value", [0.7, 1.0, 1.3])
def test_gradients_match_closed_form(impl, signed, t_value):
    q_m_value, d_value = 0.9, 0.0737
    x = _test_input(q_m_value).requires_grad_(True)
    d, q_m, t = _scalar(d_value, True), _scalar(q_m_value, True), _scalar(t_value, True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)

    out = IMPLEMENTATIONS[impl](x, d, q_m, t, signed)
    grad_x, grad_d, grad_q_m, grad_t = torch.autograd.grad(out, (x, d, q_m, t), g)

    with torch.no_grad():
        expected_out, cf_d, cf_q_m, cf_t, cf_x = _closed_form(x, d, q_m, t, signed)
    for value in (out, grad_x, grad_d, grad_q_m, grad_t):
        assert not torch.isnan(value).any()
    torch.testing.assert_close(out.detach(), expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_x, g * cf_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_d, (g * cf_d).sum(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_q_m, (g * cf_q_m).sum(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_t, (g * cf_t).sum(), rtol=1e-6, atol=1e-6)

    # Exact zeros quantize to 0 and receive exactly zero gradient (no NaN from 0^(t-1) or log 0).
    zeros = x.detach() == 0
    assert torch.all(out.detach()[zeros] == 0)
    assert torch.all(grad_x[zeros] == 0)
    if not signed:
        assert torch.all(out.detach()[x.detach() < 0] == 0)
        assert torch.all(grad_x[x.detach() < 0] == 0)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("t_value", [0.7, 1.3])
def test_all_zero_input_has_zero_gradients(impl, t_value):
    x = torch.zeros(8, dtype=F64, requires_grad=True)
    d, q_m, t = _scalar(0.1, True), _scalar(1.0, True), _scalar(t_value, True)
    out = IMPLEMENTATIONS[impl](x, d, q_m, t, True)
    grads = torch.autograd.grad(out.sum(), (x, d, q_m, t))
    assert torch.all(out == 0)
    for grad in grads:
        assert torch.all(grad == 0)


@pytest.mark.parametrize("t_value", [1.0, 1.3])
def test_reference_gradient_at_clip_boundary(t_value):
    # |x| == q_m happens in practice: init_from_weights_ sets q_m = max|W| exactly.
    x = torch.tensor([-1.0, 1.0, 0.5], dtype=F64, requires_grad=True)
    d, q_m, t = _scalar(0.1, True), _scalar(1.0, True), _scalar(t_value, True)
    out = quantize_reference(x, d, q_m, t)
    grad_x, grad_q_m = torch.autograd.grad(out.sum(), (x, q_m))
    expected_x = t_value * x.detach().abs() ** (t_value - 1)
    torch.testing.assert_close(grad_x, expected_x)
    torch.testing.assert_close(grad_q_m, _scalar(0.0))


# --- number of levels -------------------------------------------------------------------------


def _distinct_levels(impl, d, q_m, t, signed) -> int:
    q = q_m.item()
    x = torch.linspace(-2 * q, 2 * q, 200_001, dtype=F64)
    with torch.no_grad():
        out = IMPLEMENTATIONS[impl](x, d, q_m, t, signed)
    return torch.unique(out).numel()


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize(
    ("q_m_value", "t_value", "ratio"),
    # ratio = q_m^t / d, with fractional parts below and above 0.5 (the top level is capped at floor)
    [(1.0, 1.0, 5.3), (0.7, 0.7, 12.2), (1.6, 1.3, 3.1), (0.9, 1.3, 40.45), (1.2, 0.7, 0.3), (1.0, 1.0, 127.6)],
)
def test_level_count_for_fractional_ratio(impl, signed, q_m_value, t_value, ratio):
    q_m, t = _scalar(q_m_value), _scalar(t_value)
    d = q_m**t / ratio
    n = math.floor(ratio)
    levels = _distinct_levels(impl, d, q_m, t, signed)
    assert levels == (2 * n + 1 if signed else n + 1)

    b = bit_width(d, q_m, t, signed).item()
    if signed:
        assert levels == 2 * math.floor(2 ** (b - 1)) - 1
        assert integer_bits(d, q_m, t, signed).item() == max(1, math.ceil(math.log2(levels + 1)))
    else:
        assert levels == math.floor(2**b)
        # levels 0..n: n + 1 codes, so ceil(log2(levels)) bits (at least one).
        assert integer_bits(d, q_m, t, signed).item() == max(1, math.ceil(math.log2(levels)))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("ratio", [2.7, 12.5001, 127.6])
def test_level_count_is_capped_for_ratio_with_large_fraction(signed, ratio):
    q_m, t = _scalar(1.0), _scalar(1.0)
    d = q_m**t / ratio
    n = math.floor(ratio)
    assert _distinct_levels("reference", d, q_m, t, signed) == (2 * n + 1 if signed else n + 1)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize(("q_m_value", "t_value"), [(1.0, 1.0), (0.8, 0.7), (1.5, 1.3)])
def test_level_count_for_integer_bits(impl, signed, bits, q_m_value, t_value):
    q_m, t = _scalar(q_m_value), _scalar(t_value)
    d = step_for_bits(bits, q_m, t, signed)
    levels = _distinct_levels(impl, d, q_m, t, signed)
    assert levels == (2**bits - 1 if signed else 2**bits)
    assert integer_bits(d, q_m, t, signed).item() == bits


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("ratio", [3.5, 127.6, 255.5])
def test_integer_bits_hold_every_produced_level(signed, ratio):
    q_m, t = _scalar(1.0), _scalar(1.0)
    d = q_m**t / ratio
    x = torch.linspace(-2, 2, 200_001, dtype=F64)
    top_level = round((quantize_reference(x, d, q_m, t, signed).abs().max() / d).item())
    bits = int(integer_bits(d, q_m, t, signed).item())
    largest_code = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert top_level <= largest_code


# --- bit width algebra ------------------------------------------------------------------------

q_ms = st.floats(1e-3, 1e3)
ts = st.floats(0.5, 2.0)


@PROPERTY
@given(q_m=q_ms, t=ts, bits=st.floats(1.01, 24.0), signed=st.booleans())
def test_bit_width_of_step_for_bits_is_identity(q_m, t, bits, signed):
    if not signed:
        bits -= 1.0  # unsigned widths start at 0
    d = step_for_bits(bits, _scalar(q_m), _scalar(t), signed)
    assert d.item() > 0
    assert bit_width(d, _scalar(q_m), _scalar(t), signed).item() == pytest.approx(bits, abs=1e-9)


@PROPERTY
@given(q_m=q_ms, t=ts, ratio=st.floats(1e-3, 1e6), signed=st.booleans())
def test_step_for_bits_of_bit_width_is_identity(q_m, t, ratio, signed):
    q_m_t, t_t = _scalar(q_m), _scalar(t)
    d = q_m_t**t_t / ratio
    bits = bit_width(d, q_m_t, t_t, signed)
    assert step_for_bits(bits, q_m_t, t_t, signed).item() == pytest.approx(d.item(), rel=1e-9)


@PROPERTY
@given(q_m=q_ms, t=ts, bits=st.integers(2, 32), signed=st.booleans())
def test_integer_bits_equal_integer_bit_width(q_m, t, bits, signed):
    q_m_t, t_t = _scalar(q_m), _scalar(t)
    d = step_for_bits(bits, q_m_t, t_t, signed)
    assert integer_bits(d, q_m_t, t_t, signed).item() == bits


@PROPERTY
@given(q_m=q_ms, t=ts, n=st.integers(0, 10_000), frac=st.floats(0.01, 0.49), signed=st.booleans())
def test_integer_bits_cover_level_count(q_m, t, n, frac, signed):
    q_m_t, t_t = _scalar(q_m), _scalar(t)
    d = q_m_t**t_t / (n + frac)
    levels = 2 * n + 1 if signed else n + 1
    # A signed grid -n..n needs a two's-complement width holding n, i.e. levels + 1 codes.
    codes = levels + 1 if signed else levels
    assert integer_bits(d, q_m_t, t_t, signed).item() == max(1, math.ceil(math.log2(codes)))


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8.5, "8", True, False, None, 1, 0, -4, 33, 64, float("nan"), float("inf")])
def test_check_bits_rejects(bits):
    with pytest.raises(ConfigError):
        check_bits(bits, "bits")


@pytest.mark.parametrize(("bits", "expected"), [(8, 8), (8.0, 8), (2, 2), (32, 32), (4.0, 4)])
def test_check_bits_accepts(bits, expected):
    result = check_bits(bits, "bits")
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "bit_range",
    [(8, 4), (1, 8), (4, 33), (4.5, 8), ("4", "8"), (True, 8), (4,), (4, 8, 16), [], 8, "48", None, {4, 8}],
)
def test_check_bit_range_rejects(bit_range):
    with pytest.raises(ConfigError):
        check_bit_range(bit_range, "bit_range")


@pytest.mark.parametrize(("bit_range", "expected"),
                         [((4, 8), (4, 8)), ([4, 8], (4, 8)), ((8, 8), (8, 8)), ((2.0, 32), (2, 32))])
def test_check_bit_range_accepts(bit_range, expected):
    assert check_bit_range(bit_range, "bit_range") == expected


def test_config_error_names_the_setting():
    with pytest.raises(ConfigError, match="weight_bits"):
        check_bits(8.5, "weight_bits")
    with pytest.raises(ConfigError, match="inverted"):
        check_bit_range((8, 4), "bit_range")


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_parameters_below_their_floor_are_held_there_without_gradient(impl):
    x = torch.linspace(-1, 1, 11, dtype=F64, requires_grad=True)
    d, q_m, t = _scalar(-0.5, True), _scalar(0.8, True), _scalar(-2.0, True)
    out = quantize_reference(x, *constrain(d, q_m, t)) if impl == "reference" else _fused(x, d, q_m, t, True)
    grad_d, grad_q_m, grad_t = torch.autograd.grad(out.square().sum(), (d, q_m, t))
    assert grad_d == 0 and grad_t == 0 and grad_q_m != 0
    d_floor, q_floor, t_floor = constrain(d, q_m, t)
    assert d_floor > 0 and t_floor == 1e-3 and q_floor == 0.8
    assert torch.isfinite(out).all()
