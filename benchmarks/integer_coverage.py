"""How much of each torchvision model onnxruntime runs on integer kernels after geta's export.

Each model (``torchvision.models.get_model(name, num_classes=10)``, random initialization) goes through the
public API as a user targeting an integer runtime would take it: ``geta.GETA(model, x,
quantize="weights+activations", exponent="fixed", quantize_residuals=True)`` at 8-bit weights and activations,
calibrated on random images; one training step (so batch norms and quantizers move); ``zero_random_groups``
(``--sparsity`` of the groups, a stand-in for QASSO's removal); ``construct_subnet``; ``geta.export_onnx``;
an onnxruntime CPU session at its default optimizations, whose optimized graph
(``SessionOptions.optimized_model_filepath``) is counted: integer kernels (QLinear*, QGemm, MatMulInteger*),
convolutions and gemms left float, float concatenations, layout Transposes and Clips. The largest difference
between onnxruntime's output and torch's on 4 random images is given relative to the largest torch output
(level flips add up over depth in untrained nets, so this is a check that the export computes the model, not
an accuracy). A model that fails anywhere gets its error in the table, and the others go on.

Needs torchvision (``make .venv-vision/.installed``), e.g.:

    OMP_NUM_THREADS=1 .venv-vision/bin/python benchmarks/integer_coverage.py --models resnet18 googlenet
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

import geta

DEFAULT_MODELS = (
    "resnet18", "resnet50", "resnext50_32x4d", "regnet_x_400mf", "mobilenet_v2", "mnasnet0_5", "mobilenet_v3_small",
    "efficientnet_b0", "shufflenet_v2_x0_5", "densenet121", "squeezenet1_1", "googlenet", "convnext_tiny",
)
# models whose auxiliary classifiers would make the training-mode output a tuple
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}
FLOAT_LAYERS = {"Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "ConvTranspose"}


def _is_integer(op: str) -> bool:
    return op.startswith("QLinear") or op in ("QGemm", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger")


def measure(name: str, size: int, sparsity: float, folder: Path) -> dict[str, object]:
    """The optimized graph's op counts and the output difference for one model (see the module docstring)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **NO_AUX.get(name, {}))
    x = torch.randn(2, 3, size, size)
    g = geta.GETA(model, x, quantize="weights+activations", exponent="fixed", quantize_residuals=True,
                  initial_weight_bits=8, initial_act_bits=8, calibration_data=[torch.randn(4, 3, size, size)])
    g.model.train()
    g.model(torch.randn(4, 3, size, size)).square().mean().backward()
    g.model.eval()
    g.zero_random_groups(sparsity, seed=0)
    compact = g.construct_subnet().eval()
    path = geta.export_onnx(compact, x, folder / f"{name}.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the warning that a fully optimized graph is hardware specific
    options.optimized_model_filepath = str(folder / f"{name}.optimized.onnx")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = compact(batch).numpy()
    (output,) = session.run(None, {"input_0": batch.numpy()})
    ops = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    scale = float(np.abs(reference).max())
    return {
        "output quantizers": len(g.output_quantizers),
        "integer ops": sum(count for op, count in ops.items() if _is_integer(op)),
        "float convs/gemms": sum(ops[op] for op in FLOAT_LAYERS),
        "QLinearConcat / Concat": f"{ops['QLinearConcat']} / {ops['Concat']}",
        "Transposes": ops["Transpose"],
        "Clips": ops["Clip"],
        "max diff / max output": f"{float(np.abs(output - reference).max()) / scale:.4f}" if scale > 0 else "n/a (0)",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="torchvision model names")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--sparsity", type=float, default=0.3, help="fraction of the groups zeroed before compacting")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the ONNX files in (default: none)")
    args = parser.parse_args(argv)
    if not 0 <= args.sparsity < 1:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.size < 32:
        parser.error(f"--size must be at least 32 (torchvision's downsampling), got {args.size}")
    try:
        import torchvision
    except ImportError as error:
        parser.error(f"torchvision is needed ({error}); run it in .venv-vision (make .venv-vision/.installed)")
    unknown = sorted(set(args.models) - set(torchvision.models.list_models()))
    if unknown:
        parser.error(f"not torchvision models: {', '.join(unknown)}")
    columns = ["output quantizers", "integer ops", "float convs/gemms", "QLinearConcat / Concat", "Transposes",
               "Clips", "max diff / max output"]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"inputs 3x{args.size}x{args.size}, {args.sparsity:.0%} of the groups zeroed")
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            try:
                row = measure(name, args.size, args.sparsity, folder)
            except Exception as error:  # a report row, not a crash: the other models still run
                print(f"| {name} | failed: {type(error).__name__}: {str(error).splitlines()[0][:200]} |", flush=True)
                continue
            print(f"| {name} | " + " | ".join(str(row[column]) for column in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
