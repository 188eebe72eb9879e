"""Step time of QASSO in each stage against the base optimizer on the plain model.

One step is forward + cross-entropy backward + ``optimizer.step()`` on a CIFAR-shaped batch
(128 x 3 x 32 x 32, random data and labels), timed with ``time.perf_counter``. For each model
(ResNet20, VGG7 with batch norm) the candidates are:

* ``base``: SGD (momentum 0.9) on the plain model, no quantizers;
* ``<stage>/weights``: QASSO (SGD, momentum 0.9) on the model with weight quantizers, held in
  that stage (warm-up, projection, joint, cool-down);
* ``<stage>/weights+activations``: the same with input quantizers on every layer too.

Each QASSO candidate gets stages of 10^6 steps so that timing never leaves the stage; a joint
candidate first takes one untimed step at the period start, where it ranks the groups and chooses
the redundant ones (50% target sparsity), so timed steps forget them. Machines are noisy, so the
candidates are interleaved: each round times ``--steps`` steps of every candidate, in an order
shuffled each round, after untimed warm-up steps (the first call compiles the quantizer
kernels). The table gives each candidate's median and minimum step time and their ratios to
``base``'s (contention from other processes only adds time, so the minimum ratio is the more
robust one on a shared machine); the verdict uses the median ratio. Targets: at most 1.15x with
weights only and 2x with activations, in every stage.

Denormal floats are flushed to zero for every candidate (``torch.set_flush_denormal(True)``). On random
labels the quantizer of VGG7's last layer drives its clip q_m to its floor within a dozen warm-up
steps; the near-zero outputs then fill the backward pass with denormals, which x86 CPUs process far
more slowly: without flushing, the backward pass of a VGG7 warm-up step grew from 0.6 s to 2.3 s over
12 steps (one thread). That is a property of this synthetic task, not of the arithmetic of a step,
which is what is compared here.

Run from the repository root (the default takes several minutes on two CPU threads):

    .venv/bin/python benchmarks/qasso_overhead.py [--rounds N] [--steps N] [--models resnet20 vgg7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import geta
from geta.models.cifar import ResNet20, vgg7_bn
from geta.optim.schedule import Stage
from geta.run.latency import shuffled_rounds

BATCH = 128
LONG = 10**6
TARGETS = {"weights": 1.15, "weights+activations": 2.0}
MODELS: dict[str, Callable[[], nn.Module]] = {"resnet20": ResNet20, "vgg7": vgg7_bn}


@dataclass
class Candidate:
    """A model, its optimizer and the batch it trains on; ``times`` collects step times in seconds."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        return time.perf_counter() - start


def candidates(model_name: str, x: torch.Tensor) -> list[Candidate]:
    torch.manual_seed(0)
    plain = MODELS[model_name]()
    found = [Candidate("base", plain, torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9))]
    stage_start = {Stage.WARMUP: 0, Stage.PROJECTION: LONG, Stage.JOINT: 2 * LONG, Stage.COOLDOWN: 3 * LONG}
    for mode in ("weights", "weights+activations"):
        for stage, start in stage_start.items():
            g = geta.GETA(plain, x[:8], quantize=mode, calibration_data=[x[:32]])
            opt = g.qasso("sgd", lr=0.01, momentum=0.9, lr_quant=1e-4, target_sparsity=0.5, total_steps=4 * LONG,
                          warmup_steps=LONG, projection_periods=1, projection_steps=LONG, pruning_periods=1,
                          pruning_steps=LONG)
            opt.steps_done = start
            found.append(Candidate(f"{stage.value}/{mode}", g.model, opt))
    return found


def run(model_name: str, rounds: int, steps: int, warmup: int) -> list[Candidate]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    found = candidates(model_name, x)
    for candidate in found:
        candidate.model.train()
        for _ in range(warmup):
            candidate.step(x, y)
    for order in shuffled_rounds(found, rounds):
        for candidate in order:
            candidate.times += [candidate.step(x, y) for _ in range(steps)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_flush_denormal(True)
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}; "
          f"batch {BATCH}, {args.rounds} rounds x {args.steps} steps per candidate; denormals flushed")
    for model_name in args.models:
        found = run(model_name, args.rounds, args.steps, args.warmup)
        base = statistics.median(found[0].times)
        base_min = min(found[0].times)
        print(f"\n{model_name}: base optimizer on the plain model {1000 * base:.1f} ms/step (median)")
        print(f"  {'candidate':<34}{'median ms':>10}{'min ms':>9}{'ratio':>8}{'min ratio':>10}  target")
        for candidate in found:
            median = statistics.median(candidate.times)
            mode = candidate.name.split("/")[-1]
            target = TARGETS.get(mode)
            verdict = "" if target is None else f"<= {target}x {'ok' if median / base <= target else 'MISSED'}"
            print(f"  {candidate.name:<34}{1000 * median:>10.1f}{1000 * min(candidate.times):>9.1f}"
                  f"{median / base:>8.3f}{min(candidate.times) / base_min:>10.3f}  {verdict}")


if __name__ == "__main__":
    main()
