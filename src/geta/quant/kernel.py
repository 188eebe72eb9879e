"""The quantizer as one custom op, ``geta::quantize``, with fused forward and backward kernels.

The reference mapping in ``functional.py`` is a chain of a dozen elementwise ops whose forward and
backward each read and write the whole tensor several times (about 20x the cost of ``x * 1``).
Here the forward is one pass, and the backward one pass that produces the gradient of ``x`` and
the three parameter reductions together (the closed forms of docs/design.md Sec. 1). Both are compiled with
``torch.compile`` on first use; if compilation is unavailable (no C++ compiler, an unsupported
device) geta warns once and runs the same kernels as eager torch ops, with identical results.

Being a registered custom op (with a fake implementation and an autograd formula) it is a single
node under ``torch.export`` and an opaque call under ``torch.compile``, and its backward is never
dropped by tracing. ``GETA_QUANT_KERNEL=reference`` (or :func:`set_fused_kernel`) selects the plain
reference ops instead; :func:`reference_kernel` does so for a block.

Inside the op tensors are viewed as (channels, elements), detached from their base so that the
compiled graphs do not specialize on the layout of whatever tensor they were viewed from: per-tensor
quantizers use one channel, so every layer shares the same two compiled graphs. ``neg`` is -1 for
signed and 0 for unsigned quantizers, which keeps the sign mode a tensor rather than a recompilation;
``extra`` is 1 for a two's-complement quantizer (one more level below zero, see ``functional.py``) and 0
otherwise, for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

from geta.quant.functional import constrain, quantize_reference, top_level

_SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_state = {"fused": os.environ.get("GETA_QUANT_KERNEL", "fused") != "reference", "compile": True, "forced_reference": 0}


def signs(x: Tensor, neg: Tensor) -> Tensor:
    """The sign the quantizer gives ``x``: 1 above 0, ``neg`` below (-1 signed, 0 unsigned), 0 at 0."""
    return torch.where(x > 0, 1.0, torch.where(x < 0, neg, 0.0))


def clipped_power(x: Tensor, q_m: Tensor, t: Tensor) -> Tensor:
    """c^t with c = min(|x|, q_m), as exp(t ln c), and 0 where c = 0."""
    c = torch.minimum(x.abs(), q_m)
    return torch.where(c > 0, torch.exp(t * torch.log(c)), 0.0)


def extra_levels(x: Tensor, extra: Tensor) -> Tensor:
    """The levels a two's-complement quantizer (``extra`` = 1) adds below zero: 1 where ``x`` < 0, else 0."""
    return torch.where(x < 0, extra, 0.0)


def quantized_values(
    x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, top: Tensor, neg: Tensor, extra: Tensor
) -> Tensor:
    """x^Q for constrained d, q_m, t (broadcast against ``x``), ``top`` = floor(q_m^t / d), ``neg`` as in
    :func:`signs` and ``extra`` as in :func:`extra_levels`: the forward kernel."""
    e = extra_levels(x, extra)
    return signs(x, neg) * d * torch.minimum(torch.round(clipped_power(x, q_m + e * d, t) / d), top + e)


def _backward(
    grad: Tensor, x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, n: Tensor, top: Tensor, capped_t: Tensor,
    neg: Tensor, extra: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad_x and the per-channel sums behind the gradients of d, q_m (before its t q_m^(t-1)) and t.

    An element whose level is capped at floor(n) (plus its extra level) behaves as clipped (see
    functional.py); ``capped_t`` is q_m^t ln(q_m), its derivative w.r.t. t.
    """
    s = signs(x, neg)
    e = extra_levels(x, extra)
    bound = q_m + e * d
    top_x = top + e
    a = x.abs()
    c = torch.minimum(a, bound)
    log_c = torch.log(c)
    positive = c > 0
    c_t = torch.where(positive, torch.exp(t * log_c), 0.0)
    u = c_t / d
    capped = torch.round(u) > top_x
    inside = (a <= bound) & ~capped
    beyond = (e > 0) & (a > bound)  # clipped at the extra level: its value depends on d, as a capped one's
    g_s = grad * s
    grad_x = torch.where(inside & positive, g_s * s * t * c_t / c, 0.0)
    sum_d = (g_s * torch.where(capped | beyond, top_x - n, torch.round(u) - u)).sum(dim=1, keepdim=True)
    sum_q_m = torch.where(inside, 0.0, g_s).sum(dim=1, keepdim=True)
    sum_t = (g_s * torch.where(capped, capped_t, torch.where(positive, c_t * log_c, 0.0))).sum(dim=1, keepdim=True)
    return grad_x, sum_d, sum_q_m, sum_t


_functions: dict[str, Callable[..., object]] = {"forward": quantized_values, "backward": _backward}
_compiled: dict[str, Callable[..., Any]] = {}
R = TypeVar("R")


def _kernel(name: str) -> Callable[..., Any]:
    """The compiled kernel ``name`` (see ``_functions``), compiled on first use."""
    if name not in _compiled:
        # dynamic_threads: parallelize loops whose length is symbolic (off by default for dynamic shapes)
        _compiled[name] = torch.compile(_functions[name], dynamic=True, options={"cpp.dynamic_threads": True})
    return _compiled[name]


def _run(name: str, *args: object) -> Any:
    if _state["compile"]:
        try:
            return _kernel(name)(*args)
        except Exception as error:  # compilation failed: the same kernels as eager ops
            _state["compile"] = False
            warnings.warn(
                f"geta: the fused kernel {name!r} could not be compiled ({type(error).__name__}: {error}); "
                "running geta's fused kernels as eager torch ops instead (same results, slower).",
                RuntimeWarning,
                stacklevel=3,
            )
    return _functions[name](*args)


def fused(name: str, fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` (torch code over whole tensors) run as one compiled kernel, like the quantizer's: compiled
    on first use with dynamic shapes, falling back to eager ops with one warning where compilation fails."""
    _functions[name] = fn
    return lambda *args: _run(name, *args)


def _as_channels(x: Tensor, axis: int | None) -> tuple[Tensor, torch.Size]:
    """``x`` as a detached (channels, elements) tensor in its compute dtype, and its moved shape."""
    moved = x if axis is None or axis == 0 else x.movedim(axis, 0)
    channels = 1 if axis is None else moved.shape[0]
    return moved.reshape(channels, -1).detach().to(_compute_dtype(x)), moved.shape


def _from_channels(flat: Tensor, moved_shape: torch.Size, axis: int | None, dtype: torch.dtype) -> Tensor:
    out = flat.reshape(moved_shape).to(dtype)
    return out if axis is None or axis == 0 else out.movedim(0, axis)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _channel_params(
    d: Tensor, q_m: Tensor, t: Tensor, signed: bool, channels: int, dtype: torch.dtype
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Constrained (channels, 1) parameters, and where each raw parameter passed its gradient through."""
    raw_d, raw_q_m, raw_t = (p.detach().reshape(channels, 1).to(dtype) for p in (d, q_m, t))
    constrained = constrain(raw_d, raw_q_m, raw_t, signed=signed)
    return constrained, (constrained[0] == raw_d, constrained[1] == raw_q_m, constrained[2] == raw_t)


def _neg(signed: bool, like: Tensor) -> Tensor:
    return torch.tensor(-1.0 if signed else 0.0, dtype=like.dtype, device=like.device)


def _extra(twos_complement: bool, like: Tensor) -> Tensor:
    return torch.tensor(1.0 if twos_complement else 0.0, dtype=like.dtype, device=like.device)


@torch.library.custom_op("geta::quantize", mutates_args=())
def quantize_op(
    x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, signed: bool, axis: int | None, twos_complement: bool
) -> Tensor:
    """x^Q for raw parameters d, q_m, t (0-dim per tensor, 1-dim per channel along ``axis``),
    constrained inside (see ``functional.constrain``)."""
    flat, moved_shape = _as_channels(x, axis)
    (d2, q2, t2), _ = _channel_params(d, q_m, t, signed, flat.shape[0], flat.dtype)
    out = _run("forward", flat, d2, q2, t2, top_level(q2**t2 / d2), _neg(signed, flat), _extra(twos_complement, flat))
    # not a view of the kernel's flat output: a model may add to a quantized tensor in place (``out +=
    # identity`` after a batch norm with an output quantizer), which autograd forbids on a view an op returns
    return _from_channels(out, moved_shape, axis, x.dtype).contiguous().detach()


@quantize_op.register_fake
def _quantize_fake(
    x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, signed: bool, axis: int | None, twos_complement: bool
) -> Tensor:
    return torch.empty_like(x)


def _save_for_backward(ctx, inputs: tuple, output: Tensor) -> None:
    x, d, q_m, t, signed, axis, twos_complement = inputs
    ctx.save_for_backward(x, d, q_m, t)
    ctx.signed, ctx.axis, ctx.twos_complement = signed, axis, twos_complement


def _quantize_backward(ctx, grad: Tensor):
    x, d, q_m, t = ctx.saved_tensors
    flat, moved_shape = _as_channels(x, ctx.axis)
    flat_grad, _ = _as_channels(grad, ctx.axis)
    (d2, q2, t2), passed = _channel_params(d, q_m, t, ctx.signed, flat.shape[0], flat.dtype)
    n = q2**t2 / d2
    capped_t = q2**t2 * torch.log(q2)
    grad_x, sum_d, sum_q_m, sum_t = _run(
        "backward", flat_grad, flat, d2, q2, t2, n, top_level(n), capped_t, _neg(ctx.signed, flat),
        _extra(ctx.twos_complement, flat),
    )
    grads = (sum_d, sum_q_m * t2 * q2 ** (t2 - 1), sum_t)
    grad_d, grad_q_m, grad_t = (
        (g * ok).reshape(p.shape).to(p.dtype) for g, ok, p in zip(grads, passed, (d, q_m, t))
    )
    return _from_channels(grad_x, moved_shape, ctx.axis, x.dtype), grad_d, grad_q_m, grad_t, None, None, None


quantize_op.register_autograd(_quantize_backward, setup_context=_save_for_backward)


def quantize(
    x: Tensor, d: Tensor, q_m: Tensor, t: Tensor, signed: bool = True, axis: int | None = None,
    twos_complement: bool = False,
) -> Tensor:
    """Quantize ``x`` per tensor (``axis=None``, scalar parameters) or per channel along ``axis``.

    Parameters ``d``, ``q_m`` and ``t`` are 0-dim tensors per tensor, or 1-dim of length
    ``x.shape[axis]`` per channel, kept positive by ``functional.constrain``. Gradients flow to all
    four inputs. ``twos_complement``: one more level below zero (see ``functional.quantize_reference``).
    """
    if _state["fused"] and not _state["forced_reference"] and x.dtype in _SUPPORTED_DTYPES:
        return quantize_op(x, d, q_m, t, signed, axis, twos_complement)
    d_b, q_m_b, t_b = _broadcast(x, constrain(d, q_m, t, signed), axis)
    return quantize_reference(x, d_b, q_m_b, t_b, signed=signed, twos_complement=twos_complement).to(x.dtype)


def _broadcast(x: Tensor, params: tuple[Tensor, Tensor, Tensor], axis: int | None) -> tuple[Tensor, Tensor, Tensor]:
    if axis is None:
        return params
    shape = [1] * x.dim()
    shape[axis] = -1
    d, q_m, t = params
    return d.reshape(shape), q_m.reshape(shape), t.reshape(shape)


@contextlib.contextmanager
def reference_kernel() -> Iterator[None]:
    """Run quantizers on the plain reference torch ops inside this block."""
    _state["forced_reference"] += 1
    try:
        yield
    finally:
        _state["forced_reference"] -= 1


def set_fused_kernel(enabled: bool) -> None:
    """Use the fused custom op (True) or the plain reference ops (False) for this process
    (``GETA_QUANT_KERNEL=reference`` at start-up does the latter)."""
    _state["fused"] = bool(enabled)
    _state["compile"] = _state["compile"] or bool(enabled)
