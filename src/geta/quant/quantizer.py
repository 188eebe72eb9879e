"""The learnable-bit-width quantizer module: parameters d (step), q_m (clip) and t (exponent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from geta.errors import ConfigError
from geta.quant import functional as F
from geta.quant.kernel import quantize

Exponent = Literal["learned", "fixed"]
EXPONENTS = ("learned", "fixed")


@torch.library.custom_op("geta::quantizer_call", mutates_args=())
def quantizer_call(x: Tensor) -> Tensor:
    """Where a quantizer runs, as graph capture records it: one node, the quantized tensor in and
    a tensor of its shape out (a copy when run). See ``geta.graph.capture.quantizers_as_calls``."""
    return x.clone()


@quantizer_call.register_fake
def _quantizer_call_fake(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class Quantizer(nn.Module):
    """Quantizes a tensor with learnable step ``d``, clip ``q_m`` and exponent ``t`` (Sec. 3).

    ``axis=None`` quantizes per tensor (scalar parameters); an integer quantizes per channel along
    that axis. ``signed=False`` is for inputs known to be non-negative: levels 0..2^b - 1 instead of
    -(2^(b-1) - 1)..2^(b-1) - 1. Parameters are kept positive: the forward pass clamps them, and
    :meth:`constrain_` clamps the stored values after an optimizer step.

    ``exponent="fixed"`` holds t = 1: t is a parameter that does not require grad (optimizers skip it)
    and :meth:`constrain_` writes 1 back. The levels are then uniform in x, which integer runtimes need
    (see ``geta.export.onnx``). ``twos_complement=True`` (signed, t fixed) adds one level below zero:
    levels -2^(b-1)..2^(b-1) - 1, the whole range of a b-bit integer, in the same b bits (see
    ``functional``); geta gives it to the activation quantizers of ``exponent="fixed"`` runs, whose codes
    an integer runtime's QuantizeLinear then saturates exactly as the quantizer clips them.
    """

    def __init__(self, bits: int = 16, *, signed: bool = True, axis: int | None = None, channels: int = 1,
                 exponent: Exponent = "learned", twos_complement: bool = False) -> None:
        super().__init__()
        F.check_bits(bits, "bits")
        if axis is not None and channels < 1:
            raise ValueError(f"a per-channel quantizer needs channels >= 1, got {channels}")
        if exponent not in EXPONENTS:
            raise ConfigError(f"exponent={exponent!r} is not a mode; use one of {', '.join(map(repr, EXPONENTS))}")
        if twos_complement and (not signed or exponent != "fixed"):
            raise ConfigError("twos_complement=True needs a signed quantizer with exponent='fixed' (t = 1): "
                              "the extra level lies one step d below -q_m, which only uniform levels have")
        shape = () if axis is None else (channels,)
        self.signed = signed
        self.twos_complement = twos_complement
        self.axis = axis
        self.exponent = exponent
        self.initial_bits = int(bits)
        self.q_m = nn.Parameter(torch.ones(shape))
        self.t = nn.Parameter(torch.ones(shape), requires_grad=exponent == "learned")
        self.d = nn.Parameter(F.step_for_bits(float(bits), self.q_m.detach(), self.t.detach(), signed))
        self.observing = False
        self.observed_max: Tensor | None = None
        self.observed_nonfinite = 0  # values left out of the observed range (calibration warns)
        self.traced_as_call = False  # graph capture: forward is one quantizer_call node (see capture.py)
        self.passed_through = False  # forward returns its input (the search-space probe, pruning/verify.py)

    def extra_repr(self) -> str:
        granularity = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis}, channels={self.d.numel()})"
        mean_bits = self.bit_width().mean().item()
        fixed = ", t fixed at 1" if self.exponent == "fixed" else ""
        sign = "two's complement" if self.twos_complement else "signed" if self.signed else "unsigned"
        return f"{sign}, {granularity}, bits={mean_bits:.2f}{fixed}"

    def forward(self, x: Tensor) -> Tensor:
        if self.passed_through:
            return x
        if self.traced_as_call:
            return quantizer_call(x)
        if self.observing:
            self._observe(x)
            return x
        return quantize(x, self.d, self.q_m, self.t, signed=self.signed, axis=self.axis,
                        twos_complement=self.twos_complement)

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        """Widen the observed range to ``x``; non-finite values are counted and left out."""
        x = x.detach()
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            self.observed_nonfinite += int((~finite).sum())
            x = torch.where(finite, x, torch.zeros_like(x))
        current = self._max_abs(x if self.signed else x.clamp_min(0))
        self.observed_max = current if self.observed_max is None else torch.maximum(self.observed_max, current)

    def constrained_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """d, q_m, t as the quantizer uses them: kept positive (see ``functional.constrain``)."""
        return F.constrain(self.d, self.q_m, self.t, signed=self.signed)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Write the constrained values back into d, q_m, t (call after an optimizer step); t = 1 when fixed."""
        for stored, value in zip((self.d, self.q_m, self.t), self.constrained_parameters()):
            stored.copy_(value)
        if self.exponent == "fixed":
            self.t.fill_(1.0)

    def bit_width(self) -> Tensor:
        """The learned bit width, Eq. 3 (one value, or one per channel); no gradient."""
        with torch.no_grad():
            return F.bit_width(*self.constrained_parameters(), signed=self.signed)

    def integer_bits(self) -> Tensor:
        """Bits an integer format needs for the levels this quantizer produces (see ``functional``)."""
        with torch.no_grad():
            return F.integer_bits(*self.constrained_parameters(), signed=self.signed)

    def step_for_bits(self, bits: float | Tensor) -> Tensor:
        """d(b): the step giving ``bits`` bits at the current q_m and t."""
        with torch.no_grad():
            _, q_m, t = self.constrained_parameters()
            return F.step_for_bits(bits, q_m, t, signed=self.signed)

    @torch.no_grad()
    def set_bits_(self, bits: float) -> None:
        """Set d so that the bit width is exactly ``bits`` at the current q_m and t."""
        self.d.copy_(self.step_for_bits(float(bits)).expand_as(self.d))

    @torch.no_grad()
    def project_bits_(self, low: int, high: int) -> None:
        """Project d onto [d(high), d(low)] so that the bit width lies in [low, high] (PPSG)."""
        low, high = F.check_bit_range((low, high), "bit range")
        _, q_m, t = self.constrained_parameters()
        d_low = F.step_for_bits(low, q_m, t, signed=self.signed)
        d_high = F.step_for_bits(high, q_m, t, signed=self.signed)
        self.d.copy_(torch.maximum(torch.minimum(self.d, d_low), d_high))

    @torch.no_grad()
    def init_range_(self, max_abs: Tensor | float) -> None:
        """Set q_m to the observed range (t = 1) and d to keep the quantizer's initial bit width."""
        max_abs = torch.as_tensor(max_abs, dtype=self.q_m.dtype, device=self.q_m.device)
        self.q_m.copy_(max_abs.clamp_min(F.MIN_CLIP).expand_as(self.q_m))
        self.t.fill_(1.0)
        self.set_bits_(self.initial_bits)

    @torch.no_grad()
    def init_from_weights_(self, weights: Sequence[Tensor]) -> None:
        """Initialize the range from the weights it quantizes: max |W|, per tensor or per channel."""
        self.init_range_(torch.stack([self._max_abs(w.detach()) for w in weights]).amax(0))

    def _max_abs(self, x: Tensor) -> Tensor:
        if not x.numel():  # an empty weight: no range to read
            return x.new_zeros(() if self.axis is None else (x.shape[self.axis],))
        if self.axis is None:
            return x.abs().max()
        return x.abs().movedim(self.axis, 0).reshape(x.shape[self.axis], -1).amax(1)


def quantizer_parameter_ids(model: nn.Module) -> set[int]:
    """Identities of every parameter (d, q_m, t) of every :class:`Quantizer` in ``model``: what is not a
    model weight when weights are counted, grouped or optimized."""
    return {id(p) for module in model.modules() if isinstance(module, Quantizer) for p in module.parameters()}
