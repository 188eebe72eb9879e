"""Tests for ``geta.quant.quantizer.Quantizer``: positivity, bit-width setting and projection,
range initialization, observation mode, near-lossless behaviour at 16 bits, and the fixed exponent
(t = 1 through QASSO)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import geta
from geta.errors import ConfigError
from geta.quant.quantizer import Quantizer

PROPERTY = settings(max_examples=50, deadline=None)


def _set(quantizer: Quantizer, d=None, q_m=None, t=None) -> None:
    with torch.no_grad():
        for name, value in (("d", d), ("q_m", q_m), ("t", t)):
            if value is not None:
                target = getattr(quantizer, name)
                target.copy_(torch.as_tensor(value, dtype=torch.float32).expand_as(target))


@pytest.mark.parametrize("axis", [None, 0])
def test_constrain_keeps_parameters_positive(axis):
    quantizer = Quantizer(8, axis=axis, channels=3)
    _set(quantizer, d=-0.5, q_m=-2.0, t=0.0)
    quantizer.constrain_()
    for p in (quantizer.d, quantizer.q_m, quantizer.t):
        assert torch.all(p > 0)
    # Positive values are left alone.
    _set(quantizer, d=0.25, q_m=3.0, t=1.2)
    quantizer.constrain_()
    assert torch.all(quantizer.d == 0.25) and torch.all(quantizer.q_m == 3.0)
    assert torch.allclose(quantizer.t, torch.tensor(1.2))


def test_forward_with_negative_parameters_is_finite():
    quantizer = Quantizer(8)
    _set(quantizer, d=-0.5, q_m=-2.0, t=-1.0)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = quantizer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(quantizer.bit_width()).all()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("bits", [2, 3.5, 4, 8, 12.25, 16])
def test_set_bits_gives_that_bit_width(bits, axis, signed):
    quantizer = Quantizer(8, signed=signed, axis=axis, channels=4)
    with torch.no_grad():
        quantizer.q_m.copy_(torch.linspace(0.3, 3.0, quantizer.q_m.numel()).reshape(quantizer.q_m.shape))
        quantizer.t.fill_(1.3)
    quantizer.set_bits_(bits)
    torch.testing.assert_close(quantizer.bit_width(), torch.full_like(quantizer.d, float(bits)), rtol=0, atol=1e-5)
    if float(bits).is_integer():
        assert torch.all(quantizer.integer_bits() == bits)


def test_new_quantizer_has_requested_bits():
    for bits in (2, 4, 8, 16):
        assert Quantizer(bits).bit_width().item() == pytest.approx(bits, abs=1e-5)
        assert Quantizer(bits, signed=False, axis=0, channels=3).integer_bits().tolist() == [bits] * 3


@pytest.mark.parametrize("bad", [8.5, 1, 33, "8", True])
def test_constructor_rejects_bad_bits(bad):
    with pytest.raises(ConfigError):
        Quantizer(bad)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_project_bits_clamps_from_both_sides(signed):
    quantizer = Quantizer(8, signed=signed, axis=0, channels=3)
    with torch.no_grad():
        quantizer.q_m.copy_(torch.tensor([0.5, 1.0, 2.0]))
        quantizer.t.copy_(torch.tensor([0.8, 1.0, 1.4]))
        bits = torch.tensor([12.0, 2.5, 6.3])  # too many, too few, in range
        quantizer.d.copy_(torch.stack([quantizer.step_for_bits(b)[i] for i, b in enumerate(bits)]))
    quantizer.project_bits_(4, 8)
    torch.testing.assert_close(quantizer.bit_width(), torch.tensor([8.0, 4.0, 6.3]), rtol=0, atol=1e-5)


def test_project_bits_extreme_steps():
    quantizer = Quantizer(8)
    _set(quantizer, d=1e-7)  # ~25 bits
    quantizer.project_bits_(4, 8)
    assert quantizer.bit_width().item() == pytest.approx(8, abs=1e-5)
    _set(quantizer, d=1e3)  # ~1 bit
    quantizer.project_bits_(4, 8)
    assert quantizer.bit_width().item() == pytest.approx(4, abs=1e-5)


@pytest.mark.parametrize("bit_range", [(8, 4), (1, 8), (4, 40), (4.5, 8)])
def test_project_bits_rejects_bad_ranges(bit_range):
    quantizer = Quantizer(8)
    before = quantizer.d.detach().clone()
    with pytest.raises(ConfigError):
        quantizer.project_bits_(*bit_range)
    assert torch.equal(quantizer.d.detach(), before)


@PROPERTY
@given(
    low=st.integers(2, 16),
    span=st.integers(0, 14),
    d=st.floats(1e-6, 1e3),
    q_m=st.floats(5e-2, 1e2),
    t=st.floats(0.5, 2.0),
    signed=st.booleans(),
)
def test_project_bits_property(low, span, d, q_m, t, signed):
    high = min(low + span, 16)
    quantizer = Quantizer(8, signed=signed)
    _set(quantizer, d=d, q_m=q_m, t=t)
    quantizer.project_bits_(low, high)
    bits = quantizer.bit_width().item()
    assert low - 1e-6 <= bits <= high + 1e-6


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_small_range_reaches_requested_bits(signed):
    quantizer = Quantizer(16, signed=signed)
    quantizer.init_from_weights_([torch.tensor([1e-4, -5e-5])])
    assert quantizer.bit_width().item() == pytest.approx(16, abs=1e-4)


def test_init_from_weights_per_tensor():
    generator = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(6, 5, generator=generator), 3 * torch.randn(6, 5, generator=generator)
    quantizer = Quantizer(6)
    _set(quantizer, t=1.4)
    quantizer.init_from_weights_([w1, w2])
    assert quantizer.q_m.item() == torch.cat([w1, w2]).abs().max().item()
    assert quantizer.t.item() == 1.0
    assert quantizer.bit_width().item() == pytest.approx(6, abs=1e-5)


@pytest.mark.parametrize(("shape", "axis"), [((4, 3, 3, 3), 0), ((5, 6), 1), ((5, 6), -1)])
def test_init_from_weights_per_channel(shape, axis):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    channels = shape[axis]
    quantizer = Quantizer(8, axis=axis, channels=channels)
    quantizer.init_from_weights_([w])
    reduce_dims = [i for i in range(len(shape)) if i != axis % len(shape)]
    torch.testing.assert_close(quantizer.q_m.detach(), w.abs().amax(dim=reduce_dims), rtol=0, atol=0)
    torch.testing.assert_close(quantizer.bit_width(), torch.full((channels,), 8.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_observing_passes_through_and_records_max(signed):
    quantizer = Quantizer(4, signed=signed)
    quantizer.observing = True
    x1 = torch.tensor([[-5.0, 1.0], [2.0, 0.5]])
    x2 = torch.tensor([[-0.5, 3.0], [-7.0, 0.0]])
    for x in (x1, x2):
        assert torch.equal(quantizer(x), x)
    expected = 7.0 if signed else 3.0  # unsigned observes only the non-negative part
    assert quantizer.observed_max.item() == expected
    quantizer.observing = False
    assert not torch.equal(quantizer(x1), x1)  # 4 bits quantizes again


def test_observing_per_channel_records_channel_max():
    quantizer = Quantizer(8, axis=1, channels=3)
    quantizer.observing = True
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = quantizer(x)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    torch.testing.assert_close(quantizer.observed_max, x.detach().abs().amax(0), rtol=0, atol=0)


@pytest.mark.parametrize(("shape", "axis"), [((64, 32), None), ((8, 4, 3, 3), 0)])
def test_sixteen_bits_is_nearly_lossless(shape, axis):
    x = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(4))
    quantizer = Quantizer(16, axis=axis, channels=shape[0])
    quantizer.init_from_weights_([x])
    out = quantizer(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert (out - x).abs().max().item() <= 1e-4 * x.abs().max().item()
    # and the range initialized from x itself means nothing is clipped: the extremes survive
    assert out.abs().max().item() == pytest.approx(x.abs().max().item(), rel=1e-4)


def test_gradients_reach_parameters():
    quantizer = Quantizer(4, axis=0, channels=4)
    x = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(5))
    quantizer.init_from_weights_([x * 0.8])  # some values clipped
    quantizer(x).pow(2).sum().backward()
    for p in (quantizer.d, quantizer.q_m, quantizer.t):
        assert p.grad is not None and p.grad.shape == (4,) and torch.isfinite(p.grad).all()
    assert math.isfinite(quantizer.q_m.grad.abs().sum().item()) and quantizer.q_m.grad.abs().sum() > 0


def test_exponent_mode_is_checked():
    assert Quantizer(8).t.requires_grad and not Quantizer(8, exponent="fixed").t.requires_grad
    with pytest.raises(ConfigError, match="exponent='fix'"):
        Quantizer(8, exponent="fix")


def test_constrain_writes_a_fixed_exponent_back_to_one():
    quantizer = Quantizer(8, axis=0, channels=3, exponent="fixed")
    _set(quantizer, t=1.3)
    quantizer.constrain_()
    assert torch.equal(quantizer.t, torch.ones(3))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fixed_exponent_stays_one_through_qasso(optimizer):
    """QASSO collects every quantizer parameter; t (no grad) is skipped by the base optimizer and stays
    exactly 1, while d and q_m train."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=generator), torch.randn(32, 4, generator=generator)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    g = geta.GETA(model, x, quantize="weights+activations", initial_weight_bits=8, initial_act_bits=8, per_channel=True,
                  exponent="fixed")
    quantizers = [m for m in g.model.modules() if isinstance(m, Quantizer)]
    before = [(q.d.detach().clone(), q.q_m.detach().clone()) for q in quantizers]
    opt = g.qasso(optimizer, lr=1e-2, lr_quant=1e-2, target_sparsity=0.25, total_steps=10)
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(g.model(x), y).backward()
        opt.step()
    assert len(quantizers) == 4
    for quantizer in quantizers:
        assert not quantizer.t.requires_grad and torch.equal(quantizer.t, torch.ones_like(quantizer.t))
    assert any(not torch.equal(q.d, d) or not torch.equal(q.q_m, q_m) for q, (d, q_m) in zip(quantizers, before))


@pytest.mark.parametrize("options", [{"signed": False, "exponent": "fixed"}, {"signed": True, "exponent": "learned"}])
def test_twos_complement_needs_a_signed_quantizer_with_t_fixed(options: dict) -> None:
    with pytest.raises(ConfigError, match="twos_complement"):
        Quantizer(8, twos_complement=True, **options)


def test_fixed_exponent_activation_quantizers_are_twos_complement_when_signed() -> None:
    """``exponent="fixed"`` runs give signed activation quantizers two's-complement levels (-2^(b-1)..2^(b-1)-1)
    and keep weight quantizers and learned-exponent runs symmetric."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for exponent, expected in (("fixed", True), ("learned", False)):
        g = geta.GETA(model, torch.randn(16, 4), quantize="weights+activations", exponent=exponent)
        first, second = (layer.input_quantizer for layer in g.layers)
        assert first.signed and first.twos_complement is expected
        assert not second.signed and not second.twos_complement  # after the ReLU: unsigned
        assert not any(layer.weight_quantizer.twos_complement for layer in g.layers)
