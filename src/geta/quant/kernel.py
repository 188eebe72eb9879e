"""Fused forward and backward kernels for the quantization mapping.

The reference mapping in ``functional.py`` is a chain of a dozen elementwise ops whose forward and
backward each read and write the whole tensor several times (about 20x the cost of ``x * 1``).
Here the forward is one pass and the backward one pass that produces the gradient of ``x`` and
the three parameter reductions together. Both passes are compiled with ``torch.compile`` on first
use; if compilation is unavailable (no C++ compiler, an unsupported device) geta warns once and
runs the reference ops instead, with identical results.

Tensors are viewed as (channels, elements), detached from their base so that the compiled graphs
do not specialize on the layout of whatever tensor they were viewed from: per-tensor quantizers use
one channel, so every layer shares the same two compiled graphs. ``neg`` is -1 for signed and 0 for unsigned quantizers,
which keeps the sign mode a tensor rather than a recompilation.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from geta.quant.functional import quantize_reference, top_level

_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_state = {"enabled": os.environ.get("GETA_QUANT_KERNEL", "fused") != "reference", "forced_reference": 0}


def _forward(x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, top: Tensor, neg: Tensor) -> Tensor:
    s = torch.where(x > 0, 1.0, torch.where(x < 0, neg, 0.0))
    c = torch.minimum(x.abs(), q_m)
    c_t = torch.where(c > 0, torch.exp(t * torch.log(c)), 0.0)
    return s * d * torch.minimum(torch.round(c_t / d), top)


def _backward(
    grad: Tensor, x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, n: Tensor, top: Tensor, capped_t: Tensor, neg: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad_x and the per-channel sums behind the gradients of d, q_m (before its t q_m^(t-1)) and t.

    An element whose level is capped at floor(n) behaves as clipped (see functional.py); ``capped_t``
    is q_m^t ln(q_m), its derivative w.r.t. t.
    """
    s = torch.where(x > 0, 1.0, torch.where(x < 0, neg, 0.0))
    a = x.abs()
    c = torch.minimum(a, q_m)
    log_c = torch.log(c)
    positive = c > 0
    c_t = torch.where(positive, torch.exp(t * log_c), 0.0)
    u = c_t / d
    capped = torch.round(u) > top
    inside = (a <= q_m) & ~capped
    g_s = grad * s
    grad_x = torch.where(inside & positive, g_s * s * t * c_t / c, 0.0)
    sum_d = (g_s * torch.where(capped, top - n, torch.round(u) - u)).sum(dim=1, keepdim=True)
    sum_q_m = torch.where(inside, 0.0, g_s).sum(dim=1, keepdim=True)
    sum_t = (g_s * torch.where(capped, capped_t, torch.where(positive, c_t * log_c, 0.0))).sum(dim=1, keepdim=True)
    return grad_x, sum_d, sum_q_m, sum_t


_compiled: dict[str, object] = {}


def _compiled_fn(name: str):
    if name not in _compiled:
        fn = _forward if name == "forward" else _backward
        # dynamic_threads: parallelize loops whose length is symbolic (off by default for dynamic shapes)
        _compiled[name] = torch.compile(fn, dynamic=True, options={"cpp.dynamic_threads": True})
    return _compiled[name]


def _top_level(d: Tensor, q_m: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel n = q_m^t / d and its floor, computed once here rather than per element."""
    n = q_m**t / d
    return n, top_level(n)


class _FusedQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, neg: Tensor) -> Tensor:  # noqa: D102
        x, d, q_m, t = (v.detach() for v in (x, d, q_m, t))
        ctx.save_for_backward(x, d, q_m, t, neg)
        return _compiled_fn("forward")(x, d, q_m, t, _top_level(d, q_m, t)[1], neg)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, d, q_m, t, neg = ctx.saved_tensors
        n, top = _top_level(d, q_m, t)
        capped_t = q_m**t * torch.log(q_m)
        grad_x, sum_d, sum_q_m, sum_t = _compiled_fn("backward")(grad.detach(), x, d, q_m, t, n, top, capped_t, neg)
        return grad_x, sum_d, sum_q_m * t * q_m ** (t - 1), sum_t, None


def _fused_usable(x: Tensor) -> bool:
    return (
        _state["enabled"]
        and not _state["forced_reference"]
        and type(x) in (torch.Tensor, torch.nn.Parameter)
        and x.device.type in ("cpu", "cuda")
        and x.dtype in _FUSED_DTYPES
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
    )


def quantize(x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, signed: bool = True, axis: int | None = None) -> Tensor:
    """Quantize ``x`` per tensor (``axis=None``, scalar parameters) or per channel along ``axis``.

    Parameters ``d``, ``q_m`` and ``t`` are 0-dim tensors per tensor, or 1-dim of length
    ``x.shape[axis]`` per channel. Gradients flow to all four inputs.
    """
    if not _fused_usable(x):
        return quantize_reference(x, *_broadcast(x, (d, q_m, t), axis), signed=signed).to(x.dtype)
    try:
        return _quantize_fused(x, d, q_m, t, signed, axis)
    except Exception as error:  # compilation failed: keep training on the reference ops
        _state["enabled"] = False
        warnings.warn(
            f"geta: the fused quantization kernel could not be compiled ({type(error).__name__}: {error}); "
            "using the reference torch ops instead (same results, slower). "
            "Set GETA_QUANT_KERNEL=reference to skip this attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return quantize_reference(x, *_broadcast(x, (d, q_m, t), axis), signed=signed).to(x.dtype)


def _quantize_fused(x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, signed: bool, axis: int | None) -> Tensor:
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    moved = x if axis is None or axis == 0 else x.movedim(axis, 0)
    channels = 1 if axis is None else moved.shape[0]
    flat = moved.reshape(channels, -1).to(compute_dtype)
    params = [p.reshape(channels, 1).to(compute_dtype) for p in (d, q_m, t)]
    neg = torch.tensor(-1.0 if signed else 0.0, dtype=compute_dtype, device=x.device)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in (d, q_m, t))):
        out = _FusedQuantize.apply(flat, *params, neg)
    else:
        d, q_m, t = (p.detach() for p in params)
        out = _compiled_fn("forward")(flat.detach(), d, q_m, t, _top_level(d, q_m, t)[1], neg)
    out = out.reshape(moved.shape).to(x.dtype)
    return out if axis is None or axis == 0 else out.movedim(0, axis)


def _broadcast(x: Tensor, params: tuple[Tensor, ...], axis: int | None) -> tuple[Tensor, ...]:
    if axis is None:
        return params
    shape = [1] * x.dim()
    shape[axis] = -1
    return tuple(p.reshape(shape) for p in params)


@contextlib.contextmanager
def reference_kernel() -> Iterator[None]:
    """Run quantizers on the reference torch ops inside this block (for tracing and op counting)."""
    _state["forced_reference"] += 1
    try:
        yield
    finally:
        _state["forced_reference"] -= 1


def set_fused_kernel(enabled: bool) -> None:
    """Turn the fused kernel on or off for this process (``GETA_QUANT_KERNEL=reference`` at start-up)."""
    _state["enabled"] = bool(enabled)
