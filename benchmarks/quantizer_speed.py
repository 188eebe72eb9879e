"""Speed of the geta quantizer's forward + backward pass, against the plain op ``x * 1``.

What is measured, for two tensors:

* activation: float32 input of shape 128x64x32x32 (``requires_grad=True``), quantized by
  ``geta.Quantizer(bits=8, signed=True)`` with its range set by ``init_range_(x.abs().max())``;
* weight: float32 ``nn.Parameter`` of shape 256x1024, quantized by the same kind of quantizer
  initialized with ``init_from_weights_([w])``;

and for each, three candidates:

* ``fused``: the quantizer's default path, the kernel compiled with ``torch.compile``;
* ``reference``: the same quantizer inside ``geta.quant.kernel.reference_kernel()``, i.e. the
  chain of plain torch ops;
* ``x*1``: the cheapest differentiable elementwise op on the same tensor, the baseline.

One sample is ``fn(x).backward(grad_out)`` timed with ``time.perf_counter``, with the same
upstream gradient for every candidate. Before each sample the gradients of the input and of the
quantizer's parameters (d, q_m, t, all requiring grad) are set to None, outside the timed region,
so no candidate pays for accumulation. Warm-up iterations come first; the first fused call
compiles the kernel (several seconds) and is excluded. Machines are noisy, so the measurements
are interleaved: every round takes one sample of each (tensor, candidate) pair, in an order
shuffled each round, and the table reports the median over all rounds and the ratio of
each median to the ``x*1`` median of the same tensor. The minimum is shown too: contention from
other processes only ever adds time, and hits the small weight tensor hardest (a descheduled
worker thread stalls every parallel region). Target: the fused activation quantizer costs at
most 3x ``x*1``.

Run from the repository root (``--repeats`` sets the number of rounds; the default takes about
a minute on two CPU threads):

    .venv/bin/python benchmarks/quantizer_speed.py [--repeats N] [--warmup N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import geta
from geta.quant.kernel import reference_kernel
from geta.run.latency import shuffled_rounds

TARGET_RATIO = 3.0
BASELINE = "x*1"


@dataclass
class Case:
    """One input tensor, its upstream gradient, its quantizer and the candidates timed on it."""

    name: str
    x: Tensor
    grad_out: Tensor
    quantizer: geta.Quantizer
    candidates: dict[str, Callable[[Tensor], Tensor]] = field(init=False)

    def __post_init__(self) -> None:
        self.candidates = {
            "fused": self.quantizer,
            "reference": self._reference,
            BASELINE: lambda x: x * 1,
        }

    def _reference(self, x: Tensor) -> Tensor:
        with reference_kernel():
            return self.quantizer(x)

    def time_step(self, candidate: str) -> float:
        """Seconds for one forward + backward of ``candidate``, starting from cleared gradients."""
        self.x.grad = None
        self.quantizer.zero_grad(set_to_none=True)
        fn = self.candidates[candidate]
        start = time.perf_counter()
        fn(self.x).backward(self.grad_out)
        return time.perf_counter() - start


def make_cases() -> list[Case]:
    torch.manual_seed(0)
    x = torch.randn(128, 64, 32, 32, requires_grad=True)
    activation_quantizer = geta.Quantizer(bits=8, signed=True)
    activation_quantizer.init_range_(x.detach().abs().max())

    w = nn.Parameter(torch.randn(256, 1024) * 0.02)
    weight_quantizer = geta.Quantizer(bits=8, signed=True)
    weight_quantizer.init_from_weights_([w])

    return [
        Case("activation 128x64x32x32", x, torch.randn_like(x), activation_quantizer),
        Case("weight 256x1024", w, torch.randn_like(w), weight_quantizer),
    ]


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def warm_up(cases: list[Case], iterations: int) -> None:
    """Run every candidate ``iterations`` times; report the compile time and any fallback.

    A failed compilation makes geta warn (RuntimeWarning) and run the reference ops, in which
    case ``fused`` measures those; other warnings raised while compiling are torch's own noise.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        first_call = cases[0].time_step("fused")
    print(f"first fused call (compilation, excluded): {first_call:.1f} s")
    for warning in caught:
        if issubclass(warning.category, RuntimeWarning):
            print(f"WARNING: {warning.message}")
    for case in cases:
        for candidate in case.candidates:
            for _ in range(iterations):
                case.time_step(candidate)


def measure(cases: list[Case], repeats: int) -> dict[tuple[str, str], list[float]]:
    """Interleaved rounds: one sample per (case, candidate), in an order shuffled each round."""
    pairs = [(case, candidate) for case in cases for candidate in case.candidates]
    samples: dict[tuple[str, str], list[float]] = {(case.name, candidate): [] for case, candidate in pairs}
    for order in shuffled_rounds(pairs, repeats):
        for case, candidate in order:
            samples[case.name, candidate].append(case.time_step(candidate))
    return samples


def report(cases: list[Case], samples: dict[tuple[str, str], list[float]], repeats: int) -> None:
    medians = {key: statistics.median(times) * 1e3 for key, times in samples.items()}
    print(f"\nforward + backward over {repeats} interleaved repetitions (ratio of medians)")
    print(f"{'tensor':<24} {'candidate':<10} {'median ms':>10} {'min ms':>10} {'/ x*1':>7}")
    for case in cases:
        baseline = medians[case.name, BASELINE]
        for candidate in case.candidates:
            median = medians[case.name, candidate]
            fastest = min(samples[case.name, candidate]) * 1e3
            print(f"{case.name:<24} {candidate:<10} {median:>10.3f} {fastest:>10.3f} {median / baseline:>6.2f}x")

    activation = cases[0].name
    ratio = medians[activation, "fused"] / medians[activation, BASELINE]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"\ntarget: activation quantizer fused <= {TARGET_RATIO:g}x of x*1: {ratio:.2f}x, {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100, help="interleaved rounds (default: 100, about a minute)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up iterations per candidate (default: 3)")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")

    cases = make_cases()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {cases[0].x.device} ({cpu_name()})")
    warm_up(cases, args.warmup)
    samples = measure(cases, args.repeats)
    report(cases, samples, args.repeats)


if __name__ == "__main__":
    main()
