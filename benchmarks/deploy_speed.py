"""Deploy speed in onnxruntime: dense float, float compact, geta's quantized compact model and onnxruntime's
int8 PTQ of the float compact model, side by side, with the accuracy of each.

Models: ResNet20, VGG7 and a small MobileNetV2 on Fashion-MNIST (recipes ``resnet20-fmnist``,
``vgg7-fmnist``, ``mobilenetv2-fmnist``) and the MiniLM encoder on BBC News (``minilm-bbc``). Each is
trained by geta's own harness as ``geta compress`` does (``train_dense``, then ``compress``: QASSO and
``construct_subnet``) on a short budget. The CNN recipes run as variants with weights and activations
quantized, uniform levels (``exponent="fixed"``, t = 1) and the conv outputs that go into residual adds
quantized too, as are the block outputs that the next block's add and convs read, once, shared by those
readers (``quantize_residuals=True``; ``--no-quantize-residuals`` leaves them float), because integer
kernels (QLinearConv, QLinearAdd) need quantized activations on uniform levels. MiniLM is its recipe as it is: weights
only, so its geta artifact computes in float with integer weights (no integer speed is claimed).

For each model four ONNX files, each run in an onnxruntime CPU session with one thread
(``geta.export.onnx.inference_session(path, threads=1)``):

1. ``dense float``: the trained dense model, ``geta.export_onnx`` (a float model exports as float);
2. ``float compact``: the compact model's architecture with its latent float weights and no quantizers
   (geta's weight parametrizations taken off, keeping the originals, and its input and output quantizers
   removed, whose hooks then pass values through), exported the same way;
3. ``geta quantized``: the compact model as ``geta.export_onnx`` writes it (integer weights, Q/DQ
   activations);
4. ``ort int8 PTQ``: ``onnxruntime.quantization.quantize_static`` of the float compact model (QDQ format,
   per-channel int8 weights, uint8 activations, MinMax calibration on the first ``--calibration-examples``
   training examples), after ``quant_pre_process`` (shape inference and graph optimization; skipped, with
   a note, where it fails).

Accuracy is top-1 through each onnxruntime session on the first ``--eval-examples`` test examples
(Fashion-MNIST: the first 2,000 of the official test set by default; BBC News: its whole test split
of 444 articles); the torch accuracies of the dense model and of geta's compact QAT model on the same
examples are given beside them. Latency is the median milliseconds per ``session.run`` at batch 1 and
at ``--batch`` (64), on the first test examples: for each model and batch size the four sessions are
called in turn, in an order shuffled every round, after one untimed warm-up call each
(``geta.run.latency.interleaved_medians``), for at least
``--min-repeats`` rounds and then until ``--budget-s`` seconds have passed or ``--max-repeats`` rounds
are done; all timing happens after all training, so that training does not load the machine meanwhile.
``ratio`` is float compact ms / artifact ms (above 1: faster than the float compact model). The
integer ops are counted in the graph onnxruntime optimizes each file into (written with
``SessionOptions.optimized_model_filepath``): QLinearConv, QGemm, QLinearMatMul, MatMulInteger,
MatMulIntegerToFloat, ConvInteger, QLinearAdd and the other QLinear* / integer kernels; ``float ops``
counts the convolutions, gemms and matmuls that stayed float.

The CNN variants also put activations at 8 bits (``act_bits=(8, 8)``; the recipes' range is 4-8): codes
of fewer than 8 bits sit in UINT8 containers behind a Clip on the codes (onnxruntime runs it as a separate
pass) and buy no speed, while at 8 bits every activation uses the whole container (signed ones through
their two's-complement levels), as the PTQ's do. ``--act-bits LO HI`` overrides it. They quantize every
layer, as the PTQ does (the recipes keep the first and the last at full precision): a float first layer
leaves the first stage's residual adds in NCHW between Transposes, and a last layer at full precision
leaves the conv before it float as well, since that conv's output then feeds no quantizer. ``--skip``
(layers geta keeps at full precision, for the CNNs and MiniLM alike; ``--skip first last --act-bits 4 8``
is the recipes' setting) and ``--round-to N`` (QASSO removes groups in chunks so that widths that are
multiples of N stay so; onnxruntime's blocked NCHWc float convolutions need channel counts that are
multiples of 8 or 16) change the compression.

Targets, on each CNN: geta's quantized artifact at least 1.4x faster than the float compact model and at
least as fast as onnxruntime's int8 PTQ (judged at batch 1 and at ``--batch``, both printed), with its
onnxruntime accuracy within ``--accuracy-tolerance`` points of geta's QAT model in torch on the same
examples. MiniLM is measured and reported.

The table is printed and written, with every figure and the settings, to ``--out``/deploy_speed.md and
deploy_speed.json (each written to a temporary file, then renamed); the ONNX files and the optimized
graphs stay in ``--out``/<model>/.

Run from the repository root with one thread (the defaults took 1,294 s on the project's
shared 2-core machine):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deploy_speed.py [--models resnet20 vgg7 mobilenetv2 minilm]
        [--dense-epochs 1 --epochs 2 --limit-batches 150] [--text-dense-epochs 1 --text-epochs 2
        --text-limit-batches 25] [--out runs/deploy-speed]
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

import geta
from geta.data.split import Inputs, select
from geta.errors import GetaError
from geta.export.onnx import inference_session
from geta.quant.prepare import INPUT_QUANTIZED_BY, INPUT_QUANTIZER, OUTPUT_QUANTIZER
from geta.quant.quantizer import Quantizer
from geta.recipes.recipe import Recipe, get_recipe
from geta.run import DenseModel, Display, RunResult, Settings, compress, train_dense
from geta.run.budget import decay_start
from geta.run.harness import check_run
from geta.run.latency import interleaved_medians
from geta.train import accuracy as torch_accuracy

RECIPES = {"resnet20": "resnet20-fmnist", "vgg7": "vgg7-fmnist", "mobilenetv2": "mobilenetv2-fmnist",
           "minilm": "minilm-bbc"}
CNNS = ("resnet20", "vgg7", "mobilenetv2")
DENSE, FLOAT_COMPACT, GETA_QUANTIZED, ORT_PTQ = "dense float", "float compact", "geta quantized", "ort int8 PTQ"
ARTIFACTS = (DENSE, FLOAT_COMPACT, GETA_QUANTIZED, ORT_PTQ)
FILES = {DENSE: "dense", FLOAT_COMPACT: "float-compact", GETA_QUANTIZED: "geta", ORT_PTQ: "ort-ptq"}
SPEEDUP_TARGET = 1.4  # geta quantized vs float compact, CNNs
# the CNN variants' activations: onnxruntime's integer kernels read UINT8 codes, so codes of fewer bits buy
# no speed and cost a Clip each (ResNet20 at 4-8 bits: 1.48x / 1.85x the float compact model, at 8: 1.73x / 2.03x)
DEPLOY_ACT_BITS = (8, 8)
# and their full-precision layers: none, as the PTQ quantizes every layer. With two's-complement signed codes
# and the pooled stream quantized, geta's optimized graph is then the PTQ's own (the same kernels and two
# Transposes); a float first layer leaves the first stage's adds in NCHW between Transposes, and a float last
# layer leaves the conv before it float too (VGG7 ran 4 of 7 layers as integer kernels with (first, last))
DEPLOY_SKIP: tuple[str, ...] = ()
# onnxruntime kernels that compute on integer codes (ONNX and com.microsoft domains)
INTEGER_OPS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger",
    "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearReduceMean", "QLinearWhere",
    "QLinearConvTranspose", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul", "QOrderedAttention",
})
# float kernels of the layers that multiply by a weight (what would be integer kernels)
FLOAT_COMPUTE_OPS = frozenset({
    "Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
    "MatMulNBits", "Attention", "MultiHeadAttention",
})
ORT_THREADS = 1
EVAL_BATCH = 64


@dataclass
class Artifact:
    """One ONNX file of a model: its session, accuracy, the ops of its optimized graph and its timings."""

    name: str
    path: Path
    session: Any
    accuracy: float
    ops: Counter[str]
    note: str = ""
    ms: dict[int, float] = field(default_factory=dict)

    @property
    def integer_ops(self) -> int:
        return sum(n for op, n in self.ops.items() if op in INTEGER_OPS)

    @property
    def float_ops(self) -> int:
        return sum(n for op, n in self.ops.items() if op in FLOAT_COMPUTE_OPS)

    def op_summary(self, kinds: frozenset[str]) -> str:
        """E.g. "QLinearConv 19, QGemm 1" for the ops of ``kinds`` in the optimized graph."""
        return ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items()) if op in kinds) or "none"


@dataclass
class Measured:
    """A model's training outcome and its four artifacts."""

    model: str
    recipe: str
    result: RunResult
    eval_examples: int
    torch_dense_accuracy: float
    torch_compact_accuracy: float
    artifacts: dict[str, Artifact]
    feeds: dict[int, dict[str, np.ndarray]]
    variant: dict[str, object]
    repeats: dict[int, int] = field(default_factory=dict)


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    _validate(parser, args)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # the TorchScript exporter's and the quantizer's deprecation notices
    start = time.perf_counter()
    plans = _plans(parser, args)  # every recipe and its settings, checked before any training
    out = Path(args.out)
    measured: list[Measured] = []
    for name, (recipe, settings) in plans.items():
        with Display(mode="plain") as display:  # a line per stage and per tenth of the run, on stderr
            dense = train_dense(recipe, settings, display=display)
            result = compress(dense, display=display)
            display.message(f"{name}: exporting, quantizing with onnxruntime and evaluating the four ONNX files")
            measured.append(_artifacts(name, dense, result, out / name, args))
    with Display(mode="plain") as display:
        for entry in measured:
            display.message(f"{entry.model}: timing the four sessions interleaved at batch 1 and {args.batch}")
            _time_model(entry, args)
    wall = time.perf_counter() - start
    table = _table(measured, args.batch)
    verdicts = _verdicts(measured, args.batch, args.accuracy_tolerance)
    header = (f"onnxruntime {onnxruntime.__version__}, {ORT_THREADS} thread, CPU provider; torch {torch.__version__}; "
              f"{platform.processor() or platform.machine()}; median ms per session.run")
    print(header)
    print(table)
    print()
    for line in verdicts:
        print(line)
    print(f"wall time {wall:.0f} s")
    _write(out, header, table, verdicts, measured, args, wall)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--dense-epochs", type=int, default=1, help="CNNs: dense stage")
    parser.add_argument("--epochs", type=int, default=2, help="CNNs: compression budget (QASSO)")
    parser.add_argument("--limit-batches", type=int, default=150, help="CNNs: batches per epoch (128 examples each)")
    parser.add_argument("--text-dense-epochs", type=int, default=1, help="MiniLM: dense fine-tuning")
    parser.add_argument("--text-epochs", type=int, default=2, help="MiniLM: compression budget")
    parser.add_argument("--text-limit-batches", type=int, default=25, help="MiniLM: batches per epoch (32 articles)")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="fraction of groups removed (default: each recipe's)")
    parser.add_argument("--skip", nargs="*", default=None, metavar="LAYER",
                        help="layers geta keeps at full precision: first, last, names or globs; none given quantizes "
                             "every layer, as the PTQ does (default: none for the CNNs, the recipe's first and "
                             "last for MiniLM)")
    parser.add_argument("--round-to", type=int, default=1, help="QASSO removes groups in whole chunks so that widths "
                        "that are multiples of N stay so (1: any width, as geta compress does)")
    parser.add_argument("--act-bits", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                        help="CNNs: activation bit range (default: 8 8, every activation on the whole UINT8 range "
                             "as onnxruntime's PTQ has it, so no code Clip is left between Q and DQ; 4 8 is the "
                             "recipes')")
    parser.add_argument("--no-quantize-residuals", dest="quantize_residuals", action="store_false",
                        help="CNNs: leave the conv outputs that go into residual adds float")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-examples", type=int, default=2000, help="test examples each accuracy is measured on "
                        "(the first ones; fewer where the test split is smaller)")
    parser.add_argument("--calibration-examples", type=int, default=256, help="training examples calibrating the PTQ")
    parser.add_argument("--batch", type=int, default=64, help="the batch size timed beside batch 1")
    parser.add_argument("--min-repeats", type=int, default=10, help="interleaved rounds at least, per batch size")
    parser.add_argument("--max-repeats", type=int, default=300, help="interleaved rounds at most, per batch size")
    parser.add_argument("--budget-s", type=float, default=8.0, help="seconds of rounds per model and batch size, "
                        "once --min-repeats are done")
    parser.add_argument("--accuracy-tolerance", type=float, default=0.5,
                        help="points the quantized artifact may lose against geta's QAT model in torch")
    parser.add_argument("--out", default="runs/deploy-speed", help="folder for the table, the JSON and the ONNX files")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse errors (exit 2) for values no run could use, before anything is loaded or trained."""
    positive = ("round_to", "epochs", "limit_batches", "text_epochs", "text_limit_batches", "eval_examples",
                "calibration_examples", "batch", "min_repeats", "max_repeats")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("dense_epochs", "text_dense_epochs"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    if args.max_repeats < args.min_repeats:
        parser.error(f"--max-repeats {args.max_repeats} is below --min-repeats {args.min_repeats}")
    if not args.budget_s >= 0:
        parser.error(f"--budget-s must be a number of seconds >= 0, got {args.budget_s}")
    if not args.accuracy_tolerance >= 0:
        parser.error(f"--accuracy-tolerance must be >= 0 (points), got {args.accuracy_tolerance}")
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        parser.error(f"--sparsity must lie in [0, 1), got {args.sparsity}")
    if len(set(args.models)) != len(args.models):
        parser.error(f"--models names a model twice: {' '.join(args.models)}")
    out = Path(args.out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        parser.error(f"--out {args.out}: {existing} exists and is not a folder")
    if existing is not None and not os.access(existing, os.W_OK):
        parser.error(f"--out {args.out}: {existing} is not writable")
    cnns = [m for m in args.models if m in CNNS]
    if cnns and args.quantize_residuals and "quantize_residuals" not in inspect.signature(geta.GETA).parameters:
        parser.error("this geta has no GETA(..., quantize_residuals=...): pass --no-quantize-residuals")


def _plans(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, tuple[Recipe, Settings]]:
    """Each model's recipe (the CNNs' as integer-runtime variants) and settings, checked as ``geta compress``
    checks a run (settings, data, skip names) and for a budget that holds QASSO's stages."""
    plans = {}
    for name in args.models:
        recipe = get_recipe(RECIPES[name])
        if name in CNNS:
            recipe = replace(recipe, quantize="weights+activations", exponent="fixed",
                             quantize_residuals=args.quantize_residuals, act_bits=DEPLOY_ACT_BITS,
                             skip=DEPLOY_SKIP)
            epochs, dense_epochs, limit = args.epochs, args.dense_epochs, args.limit_batches
        else:
            epochs, dense_epochs, limit = args.text_epochs, args.text_dense_epochs, args.text_limit_batches
        settings = Settings(epochs=epochs, dense_epochs=dense_epochs, limit_batches=limit, sparsity=args.sparsity,
                            seed=args.seed, qasso={"round_to": args.round_to} if args.round_to != 1 else {},
                            skip=None if args.skip is None else tuple(args.skip),
                            act_bits=tuple(args.act_bits) if args.act_bits and name in CNNS else None)
        try:
            check_run(recipe, settings)
        except GetaError as error:
            parser.error(f"{name} ({recipe.name}): {error}")
        try:
            decay_start(settings.resolve(recipe), epochs * limit, recipe.quantize)
        except GetaError as error:
            options = "--epochs / --limit-batches" if name in CNNS else "--text-epochs / --text-limit-batches"
            parser.error(f"{name}: a compression budget of {epochs} epochs x {limit} batches = {epochs * limit} "
                         f"steps is too short for QASSO's stages ({error}); raise {options}")
        plans[name] = (recipe, settings)
    return plans


def _artifacts(name: str, dense: DenseModel, result: RunResult, folder: Path, args: argparse.Namespace) -> Measured:
    """The four ONNX files of one model, with sessions, accuracies and optimized-graph ops."""
    folder.mkdir(parents=True, exist_ok=True)
    split = dense.split
    n_eval = min(args.eval_examples, len(split.test_y))
    test_inputs, test_y = select(split.test_inputs, slice(0, n_eval)), split.test_y[:n_eval]
    compact = result.model.eval()
    plain = float_compact(compact)
    paths = {
        DENSE: geta.export_onnx(dense.model.eval(), dense.example, folder / "dense.onnx"),
        FLOAT_COMPACT: geta.export_onnx(plain, dense.example, folder / "float-compact.onnx"),
        GETA_QUANTIZED: geta.export_onnx(compact, dense.example, folder / "geta.onnx"),
    }
    calibration = select(split.train_inputs, slice(0, min(args.calibration_examples, len(split.train_y))))
    paths[ORT_PTQ], note = ort_ptq(paths[FLOAT_COMPACT], calibration, folder)
    artifacts = {}
    for artifact, path in paths.items():
        session = inference_session(path, threads=ORT_THREADS)
        artifacts[artifact] = Artifact(
            artifact, path, session, onnx_accuracy(session, test_inputs, test_y),
            optimized_ops(path, folder / f"{FILES[artifact]}.optimized.onnx"), note if artifact == ORT_PTQ else "",
        )
    feeds = {batch: _feed(artifacts[DENSE].session, select(split.test_inputs, slice(0, batch)))
             for batch in dict.fromkeys((1, args.batch))}
    recipe = dense.recipe
    variant = {"quantize": recipe.quantize, "exponent": recipe.exponent,
               "quantize_residuals": recipe.quantize_residuals, "skip": list(dense.settings.skip),
               "act_bits": list(dense.settings.act_bits)}
    return Measured(name, recipe.name, result, n_eval, torch_accuracy(dense.model, test_inputs, test_y),
                    torch_accuracy(compact, test_inputs, test_y), artifacts, feeds, variant)


def float_compact(compact: nn.Module) -> nn.Module:
    """A copy of ``compact`` with its architecture and latent float weights but none of geta's quantizers.

    Each weight parametrization chain (geta's weight quantizer) is taken off, keeping its original
    parameter (what ``parametrize.remove_parametrizations(..., leave_parametrized=False)`` keeps, done by
    hand because that function edits the parametrized class, which the copy shares with ``compact``), and
    every input and output quantizer is removed (their hooks then pass values through). Raises
    :class:`GetaError` if a quantizer or a parametrization other than geta's is left."""
    model = copy.deepcopy(compact)
    for path, module in model.named_modules():
        if "parametrizations" in module._modules:
            chains = module._modules["parametrizations"]
            foreign = [attr for attr, chain in chains.items() if not all(isinstance(p, Quantizer) for p in chain)]
            if foreign:
                raise GetaError(
                    f"{path or 'the model'}.{foreign[0]} has a parametrization that is not geta's quantizer")
            del module._modules["parametrizations"]
            module.__class__ = type(module).__bases__[0]
            for attr, chain in chains.items():
                module.register_parameter(attr, chain.original)
        for attr in (INPUT_QUANTIZER, OUTPUT_QUANTIZER):
            if isinstance(getattr(module, attr, None), Quantizer):
                delattr(module, attr)
        module.__dict__.pop(INPUT_QUANTIZED_BY, None)
    left = [path for path, module in model.named_modules() if isinstance(module, Quantizer)]
    if left:
        raise GetaError(f"the float compact model still holds quantizers: {', '.join(left[:3])}")
    return model.eval()


class _Batches(CalibrationDataReader):
    """Feeds for onnxruntime's calibration, one batch at a time."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def ort_ptq(float_model: Path, calibration: Inputs, folder: Path) -> tuple[Path, str]:
    """onnxruntime's static int8 quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax) of
    ``float_model``, calibrated on ``calibration``; returns the file and a note (empty unless the
    pre-processing failed and was skipped)."""
    names = [i.name for i in onnx.load(str(float_model), load_external_data=False).graph.input]
    rows = len(next(iter(calibration.values())) if isinstance(calibration, dict) else calibration)
    feeds = [_feed_by_names(names, select(calibration, slice(start, start + EVAL_BATCH)))
             for start in range(0, rows, EVAL_BATCH)]
    source, note = folder / "float-compact.preprocessed.onnx", ""
    target = folder / "ort-ptq.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's tools warn through the root logger (per-channel axis of 1-D weights)
    try:
        try:
            quant_pre_process(str(float_model), str(source))
        except Exception as error:
            source = float_model
            note = f"quant_pre_process failed ({type(error).__name__}: {error}); quantized as exported"
        quantize_static(str(source), str(target), _Batches(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    return target, note


def optimized_ops(path: Path, optimized: Path) -> Counter[str]:
    """Op types of the graph onnxruntime runs for ``path`` (default optimizations, the session options of
    ``inference_session``), written to ``optimized``."""
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.intra_op_num_threads, options.inter_op_num_threads = ORT_THREADS, 1
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3  # not the warning that the written graph is specific to this CPU
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node)


def onnx_accuracy(session: Any, inputs: Inputs, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the session's first output on ``inputs``, in batches of :data:`EVAL_BATCH`."""
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        logits = session.run(None, _feed(session, select(inputs, slice(start, start + EVAL_BATCH))))[0]
        correct += int((logits.argmax(-1) == labels[start:start + EVAL_BATCH].numpy()).sum())
    return correct / len(labels)


def _feed(session: Any, inputs: Inputs) -> dict[str, np.ndarray]:
    return _feed_by_names([i.name for i in session.get_inputs()], inputs)


def _feed_by_names(names: Sequence[str], inputs: Inputs) -> dict[str, np.ndarray]:
    """``inputs`` under the session's input names: a tensor as the one input, a dict by its keys."""
    if isinstance(inputs, dict):
        return {name: inputs[name].numpy() for name in names}
    (name,) = names
    return {name: inputs.numpy()}


def _time_model(entry: Measured, args: argparse.Namespace) -> None:
    """Median ms per call of each artifact at each batch size, the four sessions timed interleaved."""
    artifacts = list(entry.artifacts.values())
    for batch, feed in entry.feeds.items():
        medians, rounds = interleaved_medians([a.session for a in artifacts], feed, min_repeats=args.min_repeats,
                                              max_repeats=args.max_repeats, budget_s=args.budget_s)
        for artifact, ms in zip(artifacts, medians, strict=True):
            artifact.ms[batch] = ms
        entry.repeats[batch] = rounds


def _ratio(entry: Measured, artifact: str, batch: int) -> float:
    """float compact ms / artifact ms at ``batch`` (above 1: the artifact is faster)."""
    return entry.artifacts[FLOAT_COMPACT].ms[batch] / entry.artifacts[artifact].ms[batch]


def _table(measured: list[Measured], batch: int) -> str:
    header = (f"| model | artifact | accuracy | batch-1 ms | batch-{batch} ms | ratio vs float compact (b1 / b{batch}) "
              "| integer ops | float ops |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for entry in measured:
        for name, artifact in entry.artifacts.items():
            ratios = " / ".join(f"{_ratio(entry, name, b):.2f}x" for b in (1, batch))
            lines.append(
                f"| {entry.model} | {name} | {artifact.accuracy:.4f} | {artifact.ms[1]:.3f} | {artifact.ms[batch]:.2f} "
                f"| {ratios} | {artifact.integer_ops} | {artifact.float_ops} |"
            )
    return "\n".join(lines)


def _verdicts(measured: list[Measured], batch: int, tolerance: float) -> list[str]:
    """The target lines (PASS / FAIL on the CNNs; MiniLM measured and reported) and what each model is."""
    lines = []
    for entry in measured:
        r, a = entry.result, entry.artifacts
        lines.append(
            f"{entry.model} ({entry.recipe}): {r.settings['quantize']}, exponent {entry.variant['exponent']}, "
            f"quantize_residuals={entry.variant['quantize_residuals']}, act bits {entry.variant['act_bits']}, "
            f"skip {entry.variant['skip']}, group sparsity {r.group_sparsity:.1%}, "
            f"rel. BOPs {r.rel_bops:.2%}, MACs {r.macs / r.macs_dense:.1%} of dense; accuracy on {entry.eval_examples} "
            f"test examples: torch dense {entry.torch_dense_accuracy:.4f}, torch geta QAT "
            f"{entry.torch_compact_accuracy:.4f} (whole test split {r.accuracy:.4f}); "
            f"geta integer ops: {a[GETA_QUANTIZED].op_summary(INTEGER_OPS)}; stayed float: "
            f"{a[GETA_QUANTIZED].op_summary(FLOAT_COMPUTE_OPS)}; "
            f"ort PTQ integer ops: {a[ORT_PTQ].op_summary(INTEGER_OPS)}"
            + (f"; {a[ORT_PTQ].note}" if a[ORT_PTQ].note else "")
        )
        speed = {b: _ratio(entry, GETA_QUANTIZED, b) for b in (1, batch)}
        vs_ptq = {b: a[ORT_PTQ].ms[b] / a[GETA_QUANTIZED].ms[b] for b in (1, batch)}
        if entry.model not in CNNS:
            lines.append(
                f"{entry.model}: measured and reported (weights only: no integer speed claimed): geta quantized "
                f"vs float compact {speed[1]:.2f}x at batch 1, {speed[batch]:.2f}x at batch {batch}; "
                f"ort PTQ / geta time {vs_ptq[1]:.2f} at batch 1, {vs_ptq[batch]:.2f} at batch {batch}; accuracy geta "
                f"{a[GETA_QUANTIZED].accuracy:.4f}, ort PTQ {a[ORT_PTQ].accuracy:.4f}, float compact "
                f"{a[FLOAT_COMPACT].accuracy:.4f}"
            )
            continue
        for b in (1, batch):
            lines.append(f"{_verdict(speed[b] >= SPEEDUP_TARGET)} {entry.model} batch {b}: geta quantized "
                         f"{speed[b]:.3f}x faster than float compact (target >= {SPEEDUP_TARGET}x)")
        for b in (1, batch):
            lines.append(f"{_verdict(vs_ptq[b] >= 1)} {entry.model} batch {b}: geta quantized {vs_ptq[b]:.3f}x "
                         f"the speed of ort int8 PTQ ({a[GETA_QUANTIZED].ms[b]:.3f} vs {a[ORT_PTQ].ms[b]:.3f} ms; "
                         "target >= 1x)")
        loss = 100 * (entry.torch_compact_accuracy - a[GETA_QUANTIZED].accuracy)
        lines.append(f"{_verdict(loss <= tolerance)} {entry.model}: geta quantized accuracy in onnxruntime "
                     f"{a[GETA_QUANTIZED].accuracy:.4f} vs geta QAT in torch {entry.torch_compact_accuracy:.4f} "
                     f"({-loss:+.2f} points; target >= -{tolerance} points); ort PTQ {a[ORT_PTQ].accuracy:.4f}")
    return lines


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _write(out: Path, header: str, table: str, verdicts: list[str], measured: list[Measured],
           args: argparse.Namespace, wall: float) -> None:
    """deploy_speed.md and deploy_speed.json in ``out``, each written to a temporary file and renamed."""
    command = " ".join([Path(sys.executable).name, *sys.argv])
    markdown = "\n".join([f"# Deploy speed\n\n`{command}`\n", header, "", table, "", *verdicts,
                          f"wall time {wall:.0f} s", ""])
    data = {
        "command": command, "header": header, "wall_s": wall, "settings": vars(args),
        "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "threads": ORT_THREADS,
        "verdicts": verdicts,
        "models": [{
            "model": e.model, "recipe": e.recipe, "variant": e.variant, "run_settings": e.result.settings,
            "eval_examples": e.eval_examples,
            "group_sparsity": e.result.group_sparsity, "rel_bops": e.result.rel_bops,
            "macs": e.result.macs, "macs_dense": e.result.macs_dense,
            "torch_accuracy": {"dense": e.torch_dense_accuracy, "geta_qat": e.torch_compact_accuracy,
                               "geta_qat_whole_test": e.result.accuracy, "dense_whole_test": e.result.accuracy_dense},
            "repeats": e.repeats,
            "artifacts": [{
                "artifact": a.name, "file": str(a.path), "bytes": a.path.stat().st_size, "accuracy": a.accuracy,
                "ms": a.ms, "ratio_vs_float_compact": {b: _ratio(e, name, b) for b in a.ms},
                "integer_ops": a.integer_ops, "float_ops": a.float_ops,
                "optimized_graph_ops": dict(sorted(a.ops.items())),
                "note": a.note or None,
            } for name, a in e.artifacts.items()],
        } for e in measured],
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "deploy_speed.md", markdown)
    _atomic_write(out / "deploy_speed.json", json.dumps(data, indent=2, default=str) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # the mode of any new file, not mkstemp's 0600
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


if __name__ == "__main__":
    main()
