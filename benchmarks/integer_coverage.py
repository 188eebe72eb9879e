"""How much of each torchvision model onnxruntime runs on integer kernels after geta's export.

Each model (``torchvision.models.get_model(name, num_classes=10)``, random initialization) goes through the
public API as a user targeting an integer runtime would take it: ``geta.GETA(model, x,
quantize="weights+activations", exponent="fixed", quantize_residuals=True)`` at 8-bit weights and activations,
calibrated on random images; one training step (so batch norms and quantizers move); ``zero_random_groups``
(``--sparsity`` of the groups, a stand-in for QASSO's removal); ``construct_subnet``; ``geta.export_onnx``;
an onnxruntime CPU session at its default optimizations, whose optimized graph
(``SessionOptions.optimized_model_filepath``) is counted: integer kernels (QLinear*, QGemm, MatMulInteger*),
convolutions and gemms left float, float concatenations, layout Transposes and Clips. Before GETA the batch
norms get random eval statistics and affine parameters (means 0.1 N(0, 1), variances and gammas in [0.5, 1.5),
betas 0.1 N(0, 1)), so that the untrained net's output is not about 0. The largest difference between
onnxruntime's output and torch's on ``--images`` random images is given relative to the largest torch output twice:
``unfused`` with onnxruntime's graph optimizations off (``ORT_DISABLE_ALL``: every QuantizeLinear and
DequantizeLinear runs as written, so this checks that the export computes the torch model, to float
rounding, except where a different summation order or a batch norm onnxruntime computes as one multiply-add
puts a value on the other side of a rounding boundary: a level flip, which later layers carry to the output)
and ``integer`` at the default optimizations (the fused integer kernels round their float bias
and requantize, which moves some activations by one level; flips add up over depth in untrained nets, so
this is not an accuracy); ``images off`` counts the images whose unfused outputs differ by more than 1e-5
of it (a wrong export moves every image; so can many flips, hence ``--weights-only``, which quantizes weights
alone: float activations, so no level can flip, and unfused every image should match). A model that fails
anywhere gets its error in the table, and the others go on.

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


def measure(name: str, size: int, sparsity: float, folder: Path, images: int = 16,
            weights_only: bool = False) -> dict[str, object]:
    """The optimized graph's op counts and the output difference for one model (see the module docstring)."""
    import torchvision

    torch.manual_seed(0)
    model = _with_statistics(torchvision.models.get_model(name, num_classes=10, **NO_AUX.get(name, {})))
    x = torch.randn(2, 3, size, size)
    quantize = "weights" if weights_only else "weights+activations"
    g = geta.GETA(model, x, quantize=quantize, exponent="fixed", quantize_residuals=not weights_only,
                  initial_weight_bits=8, initial_act_bits=8, calibration_data=[torch.randn(4, 3, size, size)])
    g.model.train()
    g.model(torch.randn(4, 3, size, size)).square().mean().backward()
    g.model.eval()
    g.zero_random_groups(sparsity, seed=0)
    compact = g.construct_subnet().eval()
    path = geta.export_onnx(compact, x, folder / f"{name}.onnx")
    batch = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = compact(batch).numpy()
    unfused = onnxruntime.SessionOptions()
    unfused.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused.intra_op_num_threads = 1
    (plain,) = onnxruntime.InferenceSession(str(path), unfused, providers=["CPUExecutionProvider"]).run(
        None, {"input_0": batch.numpy()})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the warning that a fully optimized graph is hardware specific
    options.optimized_model_filepath = str(folder / f"{name}.optimized.onnx")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
        "max diff / max output, unfused": _relative(plain, reference, scale),
        "images off, unfused": f"{_images_off(plain, reference, scale)} of {images}",
        "integer": _relative(output, reference, scale),
    }


def _images_off(output: np.ndarray, reference: np.ndarray, scale: float) -> int:
    """How many images' outputs differ from torch's by more than 1e-5 of the largest torch output."""
    difference = np.abs(output - reference).reshape(len(output), -1).max(1)
    return int((difference > 1e-5 * scale).sum())


def _relative(output: np.ndarray, reference: np.ndarray, scale: float) -> str:
    return f"{float(np.abs(output - reference).max()) / scale:.2g}" if scale > 0 else "n/a (0)"


def _with_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with random batch-norm statistics and affine parameters (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                channels = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="torchvision model names")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--sparsity", type=float, default=0.3, help="fraction of the groups zeroed before compacting")
    parser.add_argument("--images", type=int, default=16, help="random images the outputs are compared on")
    parser.add_argument("--weights-only", action="store_true",
                        help="quantize weights alone (float activations: no level can flip), to check the export")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the ONNX files in (default: none)")
    args = parser.parse_args(argv)
    if not 0 <= args.sparsity < 1:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
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
               "Clips", "max diff / max output, unfused", "images off, unfused", "integer"]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"inputs 3x{args.size}x{args.size}, {args.sparsity:.0%} of the groups zeroed")
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            try:
                row = measure(name, args.size, args.sparsity, folder, args.images, args.weights_only)
            except Exception as error:  # a report row, not a crash: the other models still run
                print(f"| {name} | failed: {type(error).__name__}: {str(error).splitlines()[0][:200]} |", flush=True)
                continue
            print(f"| {name} | " + " | ".join(str(row[column]) for column in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
