"""A user-written MobileNetV3-style net through the integer-runtime API, beside onnxruntime's own int8 PTQ.

The net (written here, as a user would: not torchvision's) is a conv-bn-``--act`` stem, four inverted-residual
blocks (1x1 expansion, 3x3 depthwise, squeeze-excitation with a ``--gate`` module, 1x1 projection, a residual
add where the shapes allow) and a conv-``--act`` head into a linear classifier. It goes through
``geta.GETA(..., quantize="weights+activations", exponent="fixed", quantize_residuals=True)`` at 8 bits, one
training step on random images, 30% of the groups zeroed, ``construct_subnet`` and ``geta.export_onnx``
(``geta.onnx``); the float compact model (``float-compact.onnx``, geta's quantizers taken off) and
onnxruntime's ``quantize_static`` of it (``ort-ptq.onnx``, as ``deploy_speed.py`` makes it) are written
beside it, and the op counts of each optimized graph are printed. Time the three files with
``onnx_latency.py``:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/excitation_export.py --gate sigmoid --act relu --out D
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_latency.py D/float-compact.onnx D/geta.onnx \\
        D/ort-ptq.onnx --batch 1 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from deploy_speed import float_compact, optimized_ops, ort_ptq
from torch import Tensor, nn

import geta

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hardswish": nn.Hardswish}
GATES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}
SIZE = 64


class Excitation(nn.Module):
    """Squeeze-excitation: average pool, conv, ReLU, conv, the gate module, and the product with the input."""

    def __init__(self, channels: int, gate: type[nn.Module]) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(torch.relu(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1)))))


class Block(nn.Module):
    """An inverted residual block with squeeze-excitation before its projection."""

    def __init__(self, cin: int, cout: int, stride: int, gate: type[nn.Module], act: type[nn.Module]) -> None:
        super().__init__()
        mid = 4 * cin
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), act())
        self.excite = Excitation(mid, gate)
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.excite(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class ExcitationNet(nn.Module):
    """The stem, four blocks, the head conv and the classifier."""

    def __init__(self, gate: type[nn.Module], act: type[nn.Module], classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), act())
        self.blocks = nn.Sequential(Block(16, 24, 2, gate, act), Block(24, 24, 1, gate, act),
                                    Block(24, 40, 2, gate, act), Block(40, 40, 1, gate, act))
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1), act())
        self.classifier = nn.Linear(96, classes)

    def forward(self, x: Tensor) -> Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1)
        return self.classifier(torch.flatten(pooled, 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gate", choices=sorted(GATES), default="sigmoid", help="the excitation's gate module")
    parser.add_argument("--act", choices=sorted(ACTIVATIONS), default="relu", help="the convs' activation")
    parser.add_argument("--out", type=Path, required=True, help="folder the three ONNX files are written to")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    g = geta.GETA(ExcitationNet(GATES[args.gate], ACTIVATIONS[args.act]), x, quantize="weights+activations",
                  exponent="fixed", quantize_residuals=True, initial_weight_bits=8, initial_act_bits=8,
                  calibration_data=[torch.rand(8, 3, SIZE, SIZE)])
    g.model.train()
    g.model(torch.rand(8, 3, SIZE, SIZE)).square().mean().backward()
    g.model.eval()
    g.zero_random_groups(0.3, seed=0)
    compact = g.construct_subnet().eval()
    geta.export_onnx(compact, x, args.out / "geta.onnx")
    geta.export_onnx(float_compact(compact), x, args.out / "float-compact.onnx")
    _, note = ort_ptq(args.out / "float-compact.onnx", torch.rand(64, 3, SIZE, SIZE), args.out)
    print(f"output quantizers: {', '.join(sorted(g.output_quantizers))}" + (f"; {note}" if note else ""))
    for name in ("float-compact", "geta", "ort-ptq"):
        ops = optimized_ops(args.out / f"{name}.onnx", args.out / f"{name}.optimized.onnx")
        print(f"{name}: " + ", ".join(f"{op} {count}" for op, count in sorted(ops.items())))


if __name__ == "__main__":
    main()
