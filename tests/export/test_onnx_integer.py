"""geta.export_onnx for onnxruntime's integer kernels: batch norm folded exactly, the quantizers' Q/DQ laid
out so that onnxruntime's QDQ fusion applies (QLinearConv, QGemm, MatMulIntegerToFloat), clips placed
where they keep that fusion, and raw-byte tensors about the size of the packed safetensors file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from compact_models import TinyEncoder
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

import geta
from geta.export.onnx import inference_session
from geta.models.cifar import ResNet20
from geta.quant.prepare import INPUT_QUANTIZER, OUTPUT_QUANTIZER
from zoo import DepthwiseNet

INTEGER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger"}


class SmallResNet(nn.Module):
    """A conv-bn-relu stem, one residual block (conv-bn-relu, conv-bn, add, relu) and a linear head."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.head(x.mean((2, 3)))


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with batch norms of non-trivial statistics, some gammas negative, one zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                channels = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
                module.weight.copy_((0.5 + torch.rand(channels, generator=generator)) * torch.where(
                    torch.rand(channels, generator=generator) < 0.3, -1.0, 1.0))
                module.weight[0] = 0.0
                module.bias.copy_(0.2 * torch.randn(channels, generator=generator))
    return model.eval()


def _compact(model: nn.Module, x: Tensor, quantize: str = "weights+activations", residuals: bool = False) -> nn.Module:
    """``model`` quantized at 8/8 bits per channel with t fixed at 1, a fifth of its groups removed."""
    calibration = [torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(i)) for i in range(3)]
    g = geta.GETA(model, x, quantize=quantize, initial_weight_bits=8, initial_act_bits=8, per_channel=True,
                  exponent="fixed", quantize_residuals=residuals, calibration_data=calibration)
    g.zero_random_groups(0.2, seed=1)
    return g.construct_subnet().eval()


def _optimized(path: Path, level: onnxruntime.GraphOptimizationLevel) -> tuple[onnxruntime.InferenceSession,
                                                                               onnx.ModelProto]:
    """A session at ``level`` (configured like ``inference_session``) and the optimized graph it ran."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.log_severity_level = 3  # the warning that a fully optimized graph is hardware specific
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, onnx.load(options.optimized_model_filepath)


def _head_level_error(compact: nn.Module, head: nn.Linear, session: onnxruntime.InferenceSession,
                      batch: Tensor) -> tuple[float, float]:
    """The largest difference between onnxruntime's output and torch's on ``batch``, and the bound for it:
    the head's output change if each of its inputs moved by one level of its input quantizer (its step d
    times the largest row sum of |W|)."""
    (out,) = session.run(None, {"input_0": batch.numpy()})
    with torch.no_grad():
        ref = compact(batch).numpy()
    step = float(getattr(head, INPUT_QUANTIZER).constrained_parameters()[0].detach())
    return float(np.abs(out - ref).max()), step * float(head.weight.detach().abs().sum(1).max())


@pytest.fixture(scope="module")
def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return _compact(_with_statistics(SmallResNet()), torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("level", [onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_cnn_runs_integer_kernels_within_one_level_of_torch(small_resnet: nn.Module, level, tmp_path: Path) -> None:
    """The block's first conv (its output feeds only the next quantizer) runs as QLinearConv and the head as
    QGemm. Outputs may differ from torch where float rounding or onnxruntime's int32 bias moves an activation
    on a level boundary to its neighbour; the bound is the head's output change if every one of its inputs
    moved by one level of its input quantizer (step d times the largest row sum of |W|)."""
    path = geta.export_onnx(small_resnet, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    exported = {node.op_type for node in onnx.load(str(path)).graph.node}
    session, optimized = _optimized(path, level)
    ops = [node.op_type for node in optimized.graph.node]
    assert "BatchNormalization" not in exported
    assert {"QLinearConv", "QGemm"} <= set(ops) and ops.count("QLinearConv") == 1
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    (out,) = session.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = small_resnet(x).numpy()
    head = small_resnet.head
    step = float(getattr(head, INPUT_QUANTIZER).constrained_parameters()[0].detach())
    one_level = step * float(head.weight.detach().abs().sum(1).max())
    assert np.abs(out - ref).max() <= one_level
    assert np.abs(out - ref).mean() <= 0.05 * one_level


def test_quantized_residuals_put_every_block_conv_on_integer_kernels(tmp_path: Path) -> None:
    """With ``quantize_residuals`` the conv before the residual add (batch norm folded, its output quantized)
    runs as QLinearConv as well, and so does the stem: its ReLU (functional, in the root forward) is read by
    conv1 and the add, so the stem's batch norm gets an unsigned output quantizer (Q(y) = Q(relu(y))) that conv1
    takes as its input quantizer, and the export drops the ReLU after its DequantizeLinear (values >= 0). The
    export stays within one head level of torch, and geta.save / geta.load keep the output quantizers."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    compact = _compact(_with_statistics(SmallResNet()), x, residuals=True)
    assert hasattr(compact.bn2, OUTPUT_QUANTIZER) and not getattr(compact.bn, OUTPUT_QUANTIZER).signed
    assert getattr(compact.conv1, INPUT_QUANTIZER) is getattr(compact.bn, OUTPUT_QUANTIZER)
    path = geta.export_onnx(compact, x, tmp_path / "m.onnx")
    exported = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert exported.count("Relu") == 2  # conv1's (fused into its QLinearConv) and the one after the add
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ops = [node.op_type for node in optimized.graph.node]
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops and "QGemm" in ops
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound
    geta.save(compact, tmp_path / "m.safetensors")
    loaded = geta.load(tmp_path / "m.safetensors", model=SmallResNet())
    assert hasattr(loaded.bn2, OUTPUT_QUANTIZER) and not getattr(loaded.bn, OUTPUT_QUANTIZER).signed
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), compact(batch), rtol=0, atol=0)


def test_relu6_before_a_quantizer_keeps_the_integer_kernel(tmp_path: Path) -> None:
    """MobileNetV2-style blocks (ReLU6, exported as Clip(0, 6)): the Clip before each unsigned quantizer becomes
    a Relu with the codes clipped at round(6 / d), the same codes, so the expansion and depthwise convs run as
    QLinearConv (the projections too, their residuals quantized); the stem's ReLU output, read by the first
    expansion conv and the first residual add, is quantized once by the stem's output quantizer, so the stem
    runs as QLinearConv too and the first add, whose output (the block's, quantized the same way) feeds the
    next block, as QLinearAdd; so does the last add, whose output the mean pools into the head (a pooled
    stream), and the mean (``x.mean((2, 3))``, exported as ReduceMean) runs as QLinearGlobalAveragePool.
    Every signed quantizer is 8-bit two's complement (``exponent="fixed"``), so no Clip is left between a
    QuantizeLinear and the next kernel, and the layout stays NHWC from the first conv to the pool."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    compact = _compact(_with_statistics(DepthwiseNet()), x, residuals=True)
    path = geta.export_onnx(compact, x, tmp_path / "m.onnx")
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ops = [node.op_type for node in optimized.graph.node]
    assert ops.count("QLinearConv") == 7 and "Conv" not in ops
    assert ops.count("QLinearAdd") == 2
    assert "Clip" not in ops and ops.count("Transpose") == 2
    assert "QLinearGlobalAveragePool" in ops and "ReduceMean" not in ops
    batch = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


def test_resnet20_block_outputs_run_integer_adds(tmp_path: Path) -> None:
    """ResNet20 with ``quantize_residuals``: each block output that the next block reads (its conv1 and its
    identity add, or its conv1 and its projection shortcut) is quantized once, at the block, and read by all of
    them, so every conv runs as QLinearConv and the adds of blocks 1-7 as QLinearAdd, each reading two quantized
    operands and writing the quantized block output, and the add of block 0, whose identity operand is the stem's
    ReLU (functional, in the root forward), quantized at the stem's batch norm. The last add's output, which the
    pooling averages into the classifier, is quantized at the last block (a pooled stream): that add runs as
    QLinearAdd too and the pooling as QLinearGlobalAveragePool, so the graph is onnxruntime's own PTQ graph
    (no Clip, two Transposes); the export stays within one head level of torch."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    compact = _compact(_with_statistics(ResNet20(in_channels=3, width=8)), x, residuals=True)
    assert getattr(compact.blocks[3].shortcut[0], INPUT_QUANTIZER) is getattr(compact.blocks[2], OUTPUT_QUANTIZER)
    path = geta.export_onnx(compact, x, tmp_path / "m.onnx")
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ops = [node.op_type for node in optimized.graph.node]
    assert ops.count("QLinearConv") == 21 and "Conv" not in ops and ops.count("QLinearAdd") == 9
    assert "QGemm" in ops and "QLinearGlobalAveragePool" in ops
    assert "Clip" not in ops and ops.count("Transpose") == 2
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.fc, session, batch)
    assert error <= bound


def test_quantizers_move_above_pooling_and_flatten(tmp_path: Path) -> None:
    """conv-bn-relu-maxpool stages and flatten before the head: each quantizer moves above the MaxPool and
    Flatten feeding it (same codes), so that every conv is followed by one and all run as QLinearConv."""
    torch.manual_seed(0)
    model = _with_statistics(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ))
    compact = _compact(model, torch.randn(2, 3, 16, 16))
    path = geta.export_onnx(compact, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ops = [node.op_type for node in optimized.graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 1 and "Conv" not in ops
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    (out,) = session.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = compact(x).numpy()
    head = compact[-1]
    step = float(getattr(head, INPUT_QUANTIZER).constrained_parameters()[0].detach())
    assert np.abs(out - ref).max() <= step * float(head.weight.detach().abs().sum(1).max())


def _unit(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU())


def _residual_export(model: nn.Module, tmp_path: Path) -> tuple[nn.Module, onnxruntime.InferenceSession, list[str]]:
    """``model`` compacted with ``quantize_residuals`` on 3x16x16 inputs, exported, and the session and the op
    types of the graph onnxruntime optimizes it into."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    compact = _compact(_with_statistics(model), x, residuals=True)
    path = geta.export_onnx(compact, x, tmp_path / "m.onnx")
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return compact, session, [node.op_type for node in optimized.graph.node]


class FireNet(nn.Module):
    """A stem and two SqueezeNet fire modules (batch norms after every conv), each followed by a max pool, and a
    linear classifier on the flattened result: each fire's two branches are concatenated and read by the next
    conv or the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _unit(3, 8, 3)
        self.fires = nn.ModuleList([self._fire(8), self._fire(16)])
        self.head = nn.Linear(16 * 4 * 4, 10)

    @staticmethod
    def _fire(width: int) -> nn.ModuleDict:
        return nn.ModuleDict({"squeeze": _unit(width, 4, 1), "e1": _unit(4, 8, 1), "e3": _unit(4, 8, 3)})

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for fire in self.fires:
            h = fire["squeeze"](x)
            x = F.max_pool2d(torch.cat([fire["e1"](h), fire["e3"](h)], dim=1), 2)
        return self.head(torch.flatten(x, 1))


def test_concatenated_branches_run_integer_kernels_and_an_integer_concat(tmp_path: Path) -> None:
    """With ``quantize_residuals`` every branch's output that a concatenation joins for a quantized reader is
    quantized at its branch, so every conv runs as QLinearConv, each concatenation as QLinearConcat and the
    classifier as QGemm; the export stays within one head level of torch."""
    compact, session, ops = _residual_export(FireNet(), tmp_path)
    assert ops.count("QLinearConv") == 7 and "Conv" not in ops and "FusedConv" not in ops
    assert ops.count("QLinearConcat") == 2 and "Concat" not in ops and "QGemm" in ops and "Clip" not in ops
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


class InceptionBlock(nn.Module):
    """A 1x1 branch, a 3x3 branch, and a max pooling then a 1x1 branch, concatenated."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b, self.pooled = _unit(width, 4, 1), _unit(width, 4, 3), _unit(width, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.a(x), self.b(x), self.pooled(F.max_pool2d(x, 3, stride=1, padding=1))], dim=1)


class InceptionNet(nn.Module):
    """A stem and two Inception-style blocks (batch norms after every conv), then a strided max pooling and a
    linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _unit(3, 8, 3)
        self.blocks = nn.Sequential(InceptionBlock(8), InceptionBlock(12))
        self.head = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(F.max_pool2d(self.blocks(self.stem(x)), 4), 1))


def test_inception_blocks_run_integer_kernels_with_the_pooling_branch_on_codes(tmp_path: Path) -> None:
    """The stem's and the first block's outputs are quantized once for all three branches, the pooling branch's
    max pooling included: every conv runs as QLinearConv, each concatenation as QLinearConcat and every max
    pooling on codes, with onnxruntime's two layout Transposes only; within one head level of torch."""
    compact, session, ops = _residual_export(InceptionNet(), tmp_path)
    assert ops.count("QLinearConv") == 7 and "Conv" not in ops and "FusedConv" not in ops
    assert ops.count("QLinearConcat") == 2 and ops.count("NhwcMaxPool") == 3 and "MaxPool" not in ops
    assert ops.count("Transpose") == 2 and "Clip" not in ops
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


def test_batch_norm_is_folded_exactly(tmp_path: Path) -> None:
    """Weights only (float activations, so no level can move): conv-bn and linear-bn1d folded into the
    weights' steps (levels negated where gamma < 0, zero where gamma = 0) match torch to float rounding."""
    torch.manual_seed(0)
    model = _with_statistics(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 6),
        nn.BatchNorm1d(6),
    ))
    compact = _compact(model, torch.randn(2, 3, 8, 8), quantize="weights")
    path = geta.export_onnx(compact, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert "BatchNormalization" not in {node.op_type for node in graph.node}
    initializers = {init.name: init for init in graph.initializer}
    levels = [initializers[node.input[0]] for node in graph.node if node.op_type == "DequantizeLinear"]
    assert len(levels) == 2 and {init.data_type for init in levels} == {TensorProto.INT8}
    x = torch.randn(16, 3, 8, 8)
    (out,) = inference_session(path).run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = compact(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_transformer_linears_run_integer_kernels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _compact(TinyEncoder().eval(), torch.randn(2, 6, 8))
    path = geta.export_onnx(model, torch.randn(2, 6, 8), tmp_path / "m.onnx")
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert [node.op_type for node in optimized.graph.node].count("MatMulIntegerToFloat") >= 4
    x = torch.randn(5, 6, 8)
    (out,) = session.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() <= 0.01 * np.abs(ref).max()


def _run(nodes: list[onnx.NodeProto], initializers: list[TensorProto], x: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(("codes", "zero", "top"), [(np.uint8, 128, 93), (np.uint8, 0, 200), (np.int16, 0, 1500)])
def test_clipping_before_or_between_q_and_dq_equals_clipping_after(codes: type, zero: int, top: int) -> None:
    """Q -> DQ -> Clip(-N d, N d) (unsigned: Clip(0, N d)), as the quantizer reads, equals the exported forms:
    Clip on the codes between Q and DQ (UINT8) and Clip(x) before Q (16 bits), on a dense grid and at the
    points where rounding and clipping meet (k d, (k + 1/2) d around N, and their float neighbours)."""
    d = np.float32(0.0123)
    signed = zero > 0 or codes == np.int16
    low = -top if signed else 0
    around = np.array([k * d for k in (top - 1, top - 0.5, top, top + 0.5, top + 1)], dtype=np.float32)
    around = np.concatenate([around, np.nextafter(around, np.float32(np.inf)), np.nextafter(around, np.float32(0))])
    x = np.concatenate([np.linspace(-2 * top * d, 2 * top * d, 20001, dtype=np.float32), around, -around])
    constants = [numpy_helper.from_array(d, "d"), numpy_helper.from_array(np.asarray(zero, dtype=codes), "z"),
                 numpy_helper.from_array(np.float32(low) * d, "low"),
                 numpy_helper.from_array(np.float32(top) * d, "high"),
                 numpy_helper.from_array(np.asarray(zero + low, dtype=codes), "code_low"),
                 numpy_helper.from_array(np.asarray(zero + top, dtype=codes), "code_high")]
    after = _run([helper.make_node("QuantizeLinear", ["x", "d", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "d", "z"], ["dq"]),
                  helper.make_node("Clip", ["dq", "low", "high"], ["y"])], constants, x)
    if codes == np.uint8:
        nodes = [helper.make_node("QuantizeLinear", ["x", "d", "z"], ["q"]),
                 helper.make_node("Clip", ["q", "code_low", "code_high"], ["c"]),
                 helper.make_node("DequantizeLinear", ["c", "d", "z"], ["y"])]
    else:
        nodes = [helper.make_node("Clip", ["x", "low", "high"], ["c"]),
                 helper.make_node("QuantizeLinear", ["c", "d", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "d", "z"], ["y"])]
    np.testing.assert_array_equal(_run(nodes, constants, x), after)


@pytest.mark.parametrize("quantize", ["weights", "weights+activations"])
def test_onnx_file_is_about_the_size_of_the_packed_file(quantize: str, tmp_path: Path) -> None:
    """At 8 bits (about 100k weights) the ONNX file holds its tensors as raw bytes, int8 levels one byte
    each: within 1.2x of geta.save's file plus 4 kB of graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    g = geta.GETA(model, torch.randn(4, 256), quantize=quantize, initial_weight_bits=8, initial_act_bits=8,
                  per_channel=True, exponent="fixed")
    compact = g.construct_subnet().eval()
    packed = os.path.getsize(geta.save(compact, tmp_path / "m.safetensors"))
    path = geta.export_onnx(compact, torch.randn(4, 256), tmp_path / "m.onnx")
    assert os.path.getsize(path) <= 1.2 * packed + 4096
    for init in onnx.load(str(path)).graph.initializer:
        assert init.HasField("raw_data") and not (init.int32_data or init.int64_data or init.float_data), init.name


class MeanPooled(nn.Module):
    """A conv-BN-ReLU feature map averaged by ``torch.mean`` into a linear head: over the spatial axes of a 2-d
    map (``dims=(2, 3)``, with or without ``keepdim``), over the length of a 1-d one (``dims=(-1,)``), or over
    the channels (``dims=(1,)``), which is no global pooling."""

    def __init__(self, conv: str, dims: tuple[int, ...], keepdim: bool) -> None:
        super().__init__()
        layer = nn.Conv2d if conv == "2d" else nn.Conv1d
        norm = nn.BatchNorm2d if conv == "2d" else nn.BatchNorm1d
        self.features = nn.Sequential(layer(3, 8, 3, padding=1), norm(8), nn.ReLU())
        self.dims, self.keepdim = dims, keepdim
        self.head = nn.Linear(8 if dims != (1,) else 6, 5)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.features(x).mean(self.dims, keepdim=self.keepdim)
        return self.head(pooled.flatten(1) if pooled.dim() > 2 else pooled)


@pytest.mark.parametrize(("conv", "dims", "keepdim", "pooled"), [
    ("2d", (2, 3), False, True), ("2d", (-2, -1), True, True), ("1d", (-1,), False, True), ("1d", (1,), False, False),
])
def test_a_mean_over_the_spatial_axes_runs_as_an_integer_global_pool(
    conv: str, dims: tuple[int, ...], keepdim: bool, pooled: bool, tmp_path: Path
) -> None:
    """``x.mean`` over every axis after the channels (any sign, keepdim or not) exports as GlobalAveragePool
    (and a Flatten where the axes are dropped), which onnxruntime runs on the codes between the stream's
    quantizer and the head's; a mean over the channels stays a ReduceMean. Outputs stay within one head level."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6) if conv == "2d" else torch.randn(2, 3, 6)
    compact = _compact(_with_statistics(MeanPooled(conv, dims, keepdim)), x, residuals=True)
    path = geta.export_onnx(compact, x, tmp_path / "m.onnx")
    exported = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ("GlobalAveragePool" in exported) == pooled and ("ReduceMean" in exported) != pooled
    session, optimized = _optimized(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ops = [node.op_type for node in optimized.graph.node]
    assert ("QLinearGlobalAveragePool" in ops) == pooled
    batch = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


class GatedBlock(nn.Module):
    """A MobileNetV3-style block: expansion conv-bn-hardswish, depthwise conv-bn and ``act`` (hardswish, or a
    ReLU as in RegNet-Y, whose output only the gating reads), squeeze-excitation gating (pool, conv, ReLU, conv,
    hardsigmoid, multiply), projection conv-bn and a residual add."""

    def __init__(self, width: int, hidden: int, act: type[nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(width, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), act())
        self.fc1, self.fc2 = nn.Conv2d(hidden, 4, 1), nn.Conv2d(4, hidden, 1)
        self.project = nn.Sequential(nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: Tensor) -> Tensor:
        h = self.depthwise(self.expand(x))
        gate = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return x + self.project(h * gate)


class GatedNet(nn.Module):
    """A conv-bn-hardswish stem, two gated blocks (the second with a ReLU before its gating), a conv-bn-SiLU,
    then a ConvNeXt-style channels-last LayerNorm, a linear-GELU and a mean into the linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.blocks = nn.Sequential(GatedBlock(8, 16), GatedBlock(8, 16, nn.ReLU))
        self.last, self.last_bn = nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.norm, self.mix = nn.LayerNorm(12), nn.Linear(12, 12)
        self.head = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.last_bn(self.last(self.blocks(self.stem(x)))))
        h = F.gelu(self.mix(self.norm(h.permute(0, 2, 3, 1))))
        return self.head(h.mean((1, 2)))


def test_kernels_before_float_functions_run_integer_kernels(tmp_path: Path) -> None:
    """Every conv whose output (after its batch norm) only a function that runs in float reads (hardswish,
    hardsigmoid, SiLU, a LayerNorm through a permutation), or whose ReLU only the gating's pooling and product
    read, is quantized where it is produced, so all 12 convs run
    as QLinearConv, beside the float functions; the linear before the GELU, whose output is not quantized, runs
    as MatMulIntegerToFloat, its bias fused into the GELU; within one head level of torch."""
    compact, session, ops = _residual_export(GatedNet(), tmp_path)
    assert ops.count("QLinearConv") == 12 and "Conv" not in ops and "FusedConv" not in ops
    assert "MatMulIntegerToFloat" in ops and "BiasGelu" in ops
    assert "MatMul" not in ops and "FusedMatMul" not in ops and "Gemm" not in ops
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


class PaddedNet(nn.Module):
    """TensorFlow-style "same" padding: each conv reads an explicit zero ``F.pad`` of the ReLU6 output before it
    (as Hugging Face's MobileNetV2 does), and a last conv that pads asymmetrically."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 12, 2)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.BatchNorm2d(12)])
        self.acts = nn.ModuleList([nn.ReLU6() for _ in range(3)])
        self.head = nn.Linear(12, 10)

    def forward(self, x: Tensor) -> Tensor:
        for index, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.acts)):
            x = act(norm(conv(F.pad(x, (0, 1, 0, 1) if index == 2 else (1, 1, 1, 1)))))
        return self.head(x.mean((2, 3)))


def test_a_quantizer_moves_above_a_zero_pad(tmp_path: Path) -> None:
    """A constant zero Pad between a quantizer and the op before it: the quantizer moves above it (zero point 0,
    so the codes pad with code 0), every conv runs as QLinearConv and the pads on codes; within one head level."""
    compact, session, ops = _residual_export(PaddedNet(), tmp_path)
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops and "FusedConv" not in ops
    assert ops.count("Pad") == 3
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


class _Logits(nn.Module):
    """A Hugging Face image classifier as a module of ``pixel_values`` returning its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def test_hugging_face_mobilenet_v2_runs_its_padded_convs_on_integer_kernels(tmp_path: Path) -> None:
    """Hugging Face's MobileNetV2 (random weights) pads every conv's input explicitly (TensorFlow "same"
    padding) and uses ReLU6: all but its last two convs run as QLinearConv, and with onnxruntime's
    optimizations off the export matches torch to float rounding on every image."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=4)
    torch.manual_seed(0)
    model = transformers.MobileNetV2ForImageClassification(config)
    for module in model.modules():  # its initialization (std 0.02) gives the same logits for every image
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    compact, _, ops = _residual_export(_Logits(model), tmp_path)
    convs = ops.count("QLinearConv") + ops.count("Conv") + ops.count("FusedConv")
    assert ops.count("QLinearConv") >= convs - 2 and convs == 52
    unfused, _ = _optimized(tmp_path / "m.onnx", onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    batch = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    (out,) = unfused.run(None, {"input_0": batch.numpy()})
    with torch.no_grad():
        ref = compact(batch).numpy()
    assert ref.std(0).min() > 0.01 * np.abs(ref).max()  # logits that depend on the image
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


class DenseLayer(nn.Module):
    """A DenseNet layer: batch norm, ReLU, 1x1 conv, batch norm, ReLU, 3x3 conv on the concatenated features."""

    def __init__(self, width: int, growth: int = 4) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 8, 1, bias=False),
                                        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, growth, 3, padding=1, bias=False))

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.bottleneck(torch.cat(features, 1))


class DenseNetLike(nn.Module):
    """A stem conv and a dense block of three layers, each reading the concatenation of all earlier features
    through a batch norm, then a batch norm, a ReLU and a mean into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layers = nn.ModuleList([DenseLayer(8 + 4 * i) for i in range(3)])
        self.norm, self.head = nn.BatchNorm2d(20), nn.Linear(20, 10)

    def forward(self, x: Tensor) -> Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        return self.head(F.relu(self.norm(torch.cat(features, 1))).mean((2, 3)))


def test_dense_layers_run_their_convs_on_integer_kernels(tmp_path: Path) -> None:
    """Each dense layer's new features (a conv output that only concatenations read, for batch norms) are
    quantized where they are produced, so every 3x3 conv runs as QLinearConv beside the 1x1 ones; the
    concatenations and the batch norms before them stay float; within one head level of torch."""
    compact, session, ops = _residual_export(DenseNetLike(), tmp_path)
    assert ops.count("QLinearConv") == 7 and "Conv" not in ops and "FusedConv" not in ops
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound


class ExcitationNet(nn.Module):
    """A conv-bn-ReLU stem and two blocks of conv-bn-ReLU, squeeze-excitation with a sigmoid module as its gate
    (torchvision's ``SqueezeExcitation``) and a projection conv-bn, then a mean into the linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _unit(3, 8, 3)
        self.blocks = nn.ModuleList([nn.ModuleDict({
            "unit": _unit(8, 16, 3), "fc1": nn.Conv2d(16, 4, 1), "fc2": nn.Conv2d(4, 16, 1), "gate": nn.Sigmoid(),
            "project": nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))}) for _ in range(2)])
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            h = block["unit"](x)
            gate = block["gate"](block["fc2"](F.relu(block["fc1"](F.adaptive_avg_pool2d(h, 1)))))
            x = block["project"](h * gate)
        return self.head(x.mean((2, 3)))


def test_squeeze_excitation_gates_run_integer_multiplies(tmp_path: Path) -> None:
    """The sigmoid gates get output quantizers, so onnxruntime runs each gate as QLinearSigmoid and each product
    as QLinearMul, beside QLinearConv for every conv: no float multiply, sigmoid or conv is left; within one
    head level of torch."""
    compact, session, ops = _residual_export(ExcitationNet(), tmp_path)
    assert ops.count("QLinearMul") == 2 and ops.count("QLinearSigmoid") == 2 and ops.count("QLinearConv") == 9
    assert not {"Mul", "Sigmoid", "Conv", "FusedConv"} & set(ops)
    batch = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    error, bound = _head_level_error(compact, compact.head, session, batch)
    assert error <= bound
