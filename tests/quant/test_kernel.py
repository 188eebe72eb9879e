"""Tests for ``geta.quant.kernel``: the fused (torch.compile) kernel agrees with the reference ops.

Shapes and dtypes are kept to a few combinations, since each new (per-tensor vs per-channel,
dtype) pair compiles new graphs on first use.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from geta.quant import kernel
from geta.quant.functional import quantize_reference, step_for_bits
from geta.quant.kernel import quantize, reference_kernel, set_fused_kernel

TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}

# (shape, axis): per tensor, per output channel of a conv weight, per column of an (in, out) weight.
LAYOUTS = {
    "per-tensor": ((4, 3, 3, 3), None),
    "conv-axis0": ((4, 3, 3, 3), 0),
    "linear-axis1": ((5, 6), 1),
    "linear-axis-1": ((5, 6), -1),
}


def _fused_quantize(x, d, q_m, t, signed=True, axis=None):
    """``quantize`` with the fused kernel, failing if it fell back to the reference ops."""
    kernel.set_fused_kernel(True)  # re-arm: a fallback earlier would otherwise be silent here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = quantize(x, d, q_m, t, signed=signed, axis=axis)
    fallbacks = [w for w in caught if "fused quantization kernel" in str(w.message)]
    assert not fallbacks, f"fused kernel fell back to the reference ops: {fallbacks[0].message}"
    return out


def _reference_quantize(x, d, q_m, t, signed=True, axis=None):
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        d, q_m, t = (p.reshape(shape) for p in (d, q_m, t))
    return quantize_reference(x, d, q_m, t, signed=signed)


def _case(shape, axis, dtype, seed):
    """A random input with exact zeros and clipped values, and parameters at 3..7 bits."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    x.view(-1)[::7] = 0.0
    channels = () if axis is None else (shape[axis],)
    t = 0.6 + 0.9 * torch.rand(channels, generator=generator, dtype=torch.float64)
    amax = x.abs().max() if axis is None else x.abs().movedim(axis, 0).reshape(shape[axis], -1).amax(1)
    q_m = amax * (0.5 + 0.4 * torch.rand(channels, generator=generator, dtype=torch.float64))
    bits = 3 + 4 * torch.rand(channels, generator=generator, dtype=torch.float64)
    d = step_for_bits(bits, q_m, t)
    return tuple(v.to(dtype) for v in (x, d, q_m, t))


def _forward_and_grads(fn, x, d, q_m, t, signed, axis, upstream):
    leaves = [v.detach().clone().requires_grad_(True) for v in (x, d, q_m, t)]
    out = fn(*leaves, signed=signed, axis=axis)
    grads = torch.autograd.grad(out, leaves, upstream)
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_matches_reference(layout, signed, dtype, seed):
    shape, axis = LAYOUTS[layout]
    x, d, q_m, t = _case(shape, axis, dtype, seed)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(100 + seed), dtype=dtype)

    fused_out, fused_grads = _forward_and_grads(_fused_quantize, x, d, q_m, t, signed, axis, upstream)
    ref_out, ref_grads = _forward_and_grads(_reference_quantize, x, d, q_m, t, signed, axis, upstream)

    assert fused_out.dtype == dtype and fused_out.shape == x.shape
    torch.testing.assert_close(fused_out, ref_out, **TOLERANCES[dtype])
    for name, fused_grad, ref_grad, param in zip(["x", "d", "q_m", "t"], fused_grads, ref_grads, (x, d, q_m, t)):
        assert fused_grad.shape == param.shape, name
        assert not torch.isnan(fused_grad).any(), name
        tolerance = dict(TOLERANCES[dtype])
        if name == "d":
            # sum g * (round(u) - u) cancels terms of size |g| * u: its rounding error scales with them.
            tolerance["atol"] = tolerance["atol"] * _sum_per_channel(upstream.abs() * _ratio(x, d, q_m, t, axis), axis)
        torch.testing.assert_close(fused_grad, ref_grad, **tolerance, msg=lambda m, n=name: f"grad {n}: {m}")
    if dtype == torch.float32:
        # And the fused float32 gradient of d is within that same bound of the float64 one.
        leaves64 = (v.double() for v in (x, d, q_m, t))
        truth = _forward_and_grads(_reference_quantize, *leaves64, signed, axis, upstream.double())[1][1]
        scale = _sum_per_channel(upstream.abs() * _ratio(x, d, q_m, t, axis), axis)
        torch.testing.assert_close(fused_grads[1].double(), truth, rtol=1e-5, atol=1e-6 * scale)

def _ratio(x, d, q_m, t, axis):
    """u = min(|x|, q_m)^t / d, elementwise, in float64."""
    x, d, q_m, t = (v.double() for v in (x, d, q_m, t))
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        d, q_m, t = (p.reshape(shape) for p in (d, q_m, t))
    return torch.minimum(x.abs(), q_m) ** t / d


def _sum_per_channel(values, axis):
    if axis is None:
        return values.sum().item()
    return values.movedim(axis, 0).reshape(values.shape[axis], -1).sum(1).max().item()


def test_fused_output_is_on_the_quantization_grid():
    x, d, q_m, t = _case((4, 3, 3, 3), 0, torch.float64, seed=3)
    out = _fused_quantize(x, d, q_m, t, axis=0)
    steps = out / d.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-9)
    limit = (q_m**t / d).round().reshape(-1, 1, 1, 1)
    assert torch.all(steps.abs() <= limit + 1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_input_keeps_dtype(dtype):
    x32, d, q_m, t = _case((4, 3, 3, 3), None, torch.float32, seed=4)
    x = x32.to(dtype).requires_grad_(True)
    params = [p.clone().requires_grad_(True) for p in (d, q_m, t)]
    out = _fused_quantize(x, *params)
    assert out.dtype == dtype and out.shape == x.shape
    # The levels are those of the float32 mapping of the same values, stored in ``dtype``.
    expected = _reference_quantize(x.detach().float(), d, q_m, t).to(dtype)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_input_keeps_dtype_under_reference(dtype):
    # float32 parameters, as a Quantizer holds them, with low-precision activations.
    x, d, q_m, t = _case((5, 6), 1, torch.float32, seed=5)
    with reference_kernel():
        out = quantize(x.to(dtype), d, q_m, t, axis=1)
        same_dtype = quantize(x.to(dtype), d.to(dtype), q_m.to(dtype), t.to(dtype), axis=1)
    assert out.dtype == dtype and same_dtype.dtype == dtype


@pytest.mark.parametrize("layout", ["per-tensor", "conv-axis0"])
def test_fused_under_no_grad(layout):
    shape, axis = LAYOUTS[layout]
    x, d, q_m, t = _case(shape, axis, torch.float32, seed=6)
    leaves = [v.clone().requires_grad_(True) for v in (x, d, q_m, t)]
    with torch.no_grad():
        out = _fused_quantize(*leaves, axis=axis)
    assert out.grad_fn is None and not out.requires_grad
    with_grad = _fused_quantize(*leaves, axis=axis)
    torch.testing.assert_close(out, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out, _reference_quantize(x, d, q_m, t, axis=axis), **TOLERANCES[torch.float32])


def test_fused_without_any_grad_requirement_builds_no_graph():
    x, d, q_m, t = _case((4, 3, 3, 3), None, torch.float32, seed=7)
    out = _fused_quantize(x, d, q_m, t)
    assert out.grad_fn is None and not out.requires_grad


def test_fused_gradient_only_for_parameters():
    x, d, q_m, t = _case((4, 3, 3, 3), None, torch.float32, seed=8)
    d.requires_grad_(True)
    out = _fused_quantize(x, d, q_m, t)
    out.sum().backward()
    assert d.grad is not None and d.grad.shape == d.shape
    assert x.grad is None and q_m.grad is None


def _assert_reference_used(x, d, q_m, t, axis=None):
    """Output and gradients bit-identical to the reference ops, and twice differentiable like them."""
    leaves = [v.clone().requires_grad_(True) for v in (x, d, q_m, t)]
    out = quantize(*leaves, axis=axis)
    ref_leaves = [v.clone().requires_grad_(True) for v in (x, d, q_m, t)]
    ref = _reference_quantize(*ref_leaves, axis=axis)
    assert torch.equal(out.detach(), ref.detach())
    grads = torch.autograd.grad((out**2).sum(), leaves, create_graph=True)
    ref_grads = torch.autograd.grad((ref**2).sum(), ref_leaves, create_graph=True)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.equal(grad, ref_grad)
    # A second-order gradient exists (the fused kernel's backward is once-differentiable).
    (second,) = torch.autograd.grad(grads[1].sum(), leaves[3])
    assert torch.isfinite(second).all()


def _fused_is_once_differentiable(x, d, q_m, t) -> bool:
    leaves = [v.clone().requires_grad_(True) for v in (x, d, q_m, t)]
    grads = torch.autograd.grad((quantize(*leaves) ** 2).sum(), leaves, create_graph=True)
    try:
        torch.autograd.grad(grads[1].sum(), leaves[3])
    except RuntimeError:
        return True
    return False


@pytest.mark.parametrize(("layout", "dtype"), [("per-tensor", torch.float32), ("conv-axis0", torch.float64)])
def test_reference_kernel_context_uses_reference(layout, dtype):
    shape, axis = LAYOUTS[layout]
    x, d, q_m, t = _case(shape, axis, dtype, seed=9)
    with reference_kernel():
        _assert_reference_used(x, d, q_m, t, axis)
        with reference_kernel():  # nesting is allowed
            _assert_reference_used(x, d, q_m, t, axis)
        _assert_reference_used(x, d, q_m, t, axis)


def test_reference_kernel_context_restores_fused_path():
    x, d, q_m, t = _case((4, 3, 3, 3), None, torch.float32, seed=10)
    assert _fused_is_once_differentiable(x, d, q_m, t)
    with pytest.raises(KeyError), reference_kernel():
        raise KeyError("boom")
    assert _fused_is_once_differentiable(x, d, q_m, t)


def test_set_fused_kernel_off_uses_reference():
    x, d, q_m, t = _case((4, 3, 3, 3), None, torch.float32, seed=11)
    set_fused_kernel(False)
    try:
        _assert_reference_used(x, d, q_m, t)
    finally:
        set_fused_kernel(True)
    assert _fused_is_once_differentiable(x, d, q_m, t)


def test_fused_falls_back_to_eager_kernels_with_warning(monkeypatch):
    def broken(name):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(kernel, "_kernel", broken)
    monkeypatch.setitem(kernel._state, "compile", True)
    x, d, q_m, t = (v.clone().requires_grad_(True) for v in _case((5, 6), 1, torch.float64, seed=12))
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        out = quantize(x, d, q_m, t, axis=1)
    assert torch.equal(out, _reference_quantize(x, d, q_m, t, axis=1))
    grads = torch.autograd.grad(out.square().sum(), (x, d, q_m, t))
    expected = torch.autograd.grad(_reference_quantize(x, d, q_m, t, axis=1).square().sum(), (x, d, q_m, t))
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["per-tensor", "conv-axis0"])
def test_twos_complement_fused_kernel_matches_the_reference(layout: str) -> None:
    """Two's-complement levels (t = 1): the fused kernel's output and its gradients of x, d and q_m equal the
    reference ops', on inputs below -q_m - d (clipped at the extra level), between -q_m - d and -q_m (inside, on
    the extra level), and capped ones."""
    shape, axis = LAYOUTS[layout]
    x, d, q_m, _ = _case(shape, axis, torch.float64, seed=11)
    t = torch.ones_like(q_m)
    leaves = [v.clone().requires_grad_(True) for v in (x, d, q_m)]
    kernel.set_fused_kernel(True)
    out = quantize(*leaves[:3], t, signed=True, axis=axis, twos_complement=True)
    ref_leaves = [v.clone().requires_grad_(True) for v in (x, d, q_m)]
    view = [1] * x.dim()
    if axis is not None:
        view[axis] = -1
    ref = quantize_reference(ref_leaves[0], *(p.reshape(view if axis is not None else ()) for p in
                                              (ref_leaves[1], ref_leaves[2], t)), twos_complement=True)
    torch.testing.assert_close(out, ref, **TOLERANCES[torch.float64])
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * weights).sum(), ref_leaves)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_twos_complement_levels_fill_the_integer_range(impl: str) -> None:
    """At 8 bits, levels -128..127: the negative side reaches one level further, the positive side is unchanged."""
    d = step_for_bits(8, torch.tensor(1.0), torch.tensor(1.0))
    x = torch.linspace(-3, 3, 2001)
    with reference_kernel() if impl == "reference" else warnings.catch_warnings():
        out = quantize(x, d, torch.tensor(1.0), torch.tensor(1.0), twos_complement=True)
        symmetric = quantize(x, d, torch.tensor(1.0), torch.tensor(1.0))
    levels = torch.round(out / d)
    assert levels.min() == -128 and levels.max() == 127 and len(levels.unique()) == 256
    assert torch.equal(out[x >= 0], symmetric[x >= 0])
    assert torch.equal(out[x > -1], symmetric[x > -1])  # within the clip, the same function
