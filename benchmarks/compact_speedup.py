"""Measured speedup of compact models over the dense model, beside their MACs ratio.

For ResNet20 and VGG7 (batch norm, 3x32x32 inputs, random weights) the compact models remove 30%,
50% and 70% of the pruning groups (``GETA(..., quantize="none").zero_random_groups``, then
``construct_subnet``): plain float models, so that what is timed is the effect of the removed
channels. ``--round-to N`` removes groups in whole chunks so that every width that is a multiple of N
stays one (``zero_random_groups(..., round_to=N)``); then up to 30/50/70% are removed and the table
gives the share actually removed. Each model is timed in torch eager mode (``torch.no_grad``, eval) at batch 1
and 64, at batch 64 also with model and input in channels-last memory format, and in onnxruntime
(``geta.export_onnx``, CPU provider) at batch 64. Candidates are interleaved: every round
runs each of them ``--calls`` times, in an order shuffled each round, after one untimed
warm-up call; the table gives the median over rounds of the time per call.

speedup = dense time / compact time (same runtime and batch); MACs ratio = dense MACs / compact MACs
(``geta.metrics.cost.count_macs``). The target is a batch-64 speedup of at least 0.7 x the MACs ratio.

Run from the repository root with one thread (torch and onnxruntime are both set to one intra-op
thread here; OMP_NUM_THREADS=1 keeps other pools at one too):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compact_speedup.py [--rounds N] [--calls N] [--round-to N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import geta
from geta.core.inputs import ExampleInputs
from geta.export.onnx import inference_session
from geta.metrics.cost import count_macs
from geta.models.cifar import ResNet20, vgg7_bn
from geta.quant.prepare import find_layers
from geta.run.latency import shuffled_rounds

MODELS: dict[str, Callable[[], nn.Module]] = {"resnet20": ResNet20, "vgg7": vgg7_bn}
SPARSITIES = (0.3, 0.5, 0.7)
SETTINGS = ("eager b1", "eager b64", "eager-cl b64", "ort b64")
BATCH64 = ("eager b64", "eager-cl b64", "ort b64")
TARGET = 0.7


def build(name: str, folder: Path, round_to: int = 1) -> dict[str, dict]:
    """The dense model and its compact versions, each with MACs and its three timed callables."""
    torch.manual_seed(0)
    dense = MODELS[name]().eval()
    example = torch.randn(1, 3, 32, 32)
    variants = {"dense": dense}
    for sparsity in SPARSITIES:
        g = geta.GETA(dense, example, quantize="none")
        removed = len(g.zero_random_groups(sparsity, seed=0, round_to=round_to)) / len(g.groups)
        label = f"{sparsity:.0%}" if round_to == 1 else f"{removed:.0%} (asked {sparsity:.0%})"
        variants[label] = g.construct_subnet().eval()
    built = {}
    for number, (label, model) in enumerate(variants.items()):
        macs = count_macs(model, ExampleInputs.from_user(example), find_layers(model)).total
        path = geta.export_onnx(model, torch.randn(2, 3, 32, 32), folder / f"{name}-{number}.onnx")
        built[label] = {"macs": macs, "calls": _callables(model, path)}
    return built


def _callables(model: nn.Module, path: Path) -> dict[str, Callable[[], object]]:
    one, batch = torch.randn(1, 3, 32, 32), torch.randn(64, 3, 32, 32)
    session = inference_session(path, threads=1)
    batch_np = batch.numpy()
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def eager(net: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return net(x)
        return call

    return {"eager b1": eager(model, one), "eager b64": eager(model, batch),
            "eager-cl b64": eager(channels_last, batch.to(memory_format=torch.channels_last)),
            "ort b64": lambda: session.run(None, {"input_0": batch_np})}


def measure(built: dict[str, dict[str, dict]], rounds: int, calls: int) -> dict[tuple[str, str, str], float]:
    """Median seconds per call of every (model, variant, setting), interleaved over rounds."""
    candidates = [(m, v, s) for m in built for v in built[m] for s in SETTINGS]
    for m, v, s in candidates:
        built[m][v]["calls"][s]()  # warm-up
    times: dict[tuple[str, str, str], list[float]] = {c: [] for c in candidates}
    for order in shuffled_rounds(candidates, rounds):
        for m, v, s in order:
            call = built[m][v]["calls"][s]
            start = time.perf_counter()
            for _ in range(calls):
                call()
            times[(m, v, s)].append((time.perf_counter() - start) / calls)
    return {c: statistics.median(t) for c, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2, help="calls per candidate per round")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--round-to", type=int, default=1, help="keep widths that are multiples of N so")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        built = {name: build(name, Path(folder), args.round_to) for name in args.models}
        medians = measure(built, args.rounds, args.calls)
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} interleaved rounds x {args.calls} calls, "
          f"median per call, round_to {args.round_to}")
    print("| model | groups removed | MACs (M) | MACs ratio | eager b1 ms (speedup) | eager b64 ms (speedup) "
          "| eager channels-last b64 ms (speedup) | ort b64 ms (speedup) "
          "| b64 speedup / MACs ratio (eager, channels-last, ort) |")
    print("|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for model, variants in built.items():
        dense_macs = variants["dense"]["macs"]
        for label, entry in variants.items():
            ratio = dense_macs / entry["macs"]
            cells = []
            for setting in SETTINGS:
                ms = medians[(model, label, setting)] * 1e3
                speedup = medians[(model, "dense", setting)] / medians[(model, label, setting)]
                cells.append(f"{ms:.2f} ({speedup:.2f}x)")
            fractions = [medians[(model, "dense", s)] / medians[(model, label, s)] / ratio for s in BATCH64]
            if label != "dense":
                verdicts += [f >= TARGET for f in fractions]
            print(f"| {model} | {label if label != 'dense' else 'dense'} | {entry['macs'] / 1e6:.2f} | {ratio:.2f}x | "
                  + " | ".join(cells) + " | " + ", ".join(f"{f:.2f}" for f in fractions) + " |")
    print(f"target: batch-64 speedup >= {TARGET} x MACs ratio: {sum(verdicts)} of {len(verdicts)} met; "
          f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
