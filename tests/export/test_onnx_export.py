"""geta.export_onnx: opset-21 graphs that pass onnx.checker, integer weights (INT8 up to 8 bits, INT4 up to
4 with weights="int4"), Q/DQ activations, and onnxruntime outputs that match the torch compact model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from compact_models import TinyEncoder, compact
from onnx import TensorProto, numpy_helper
from torch import nn

import geta
from geta.export.onnx import inference_session
from geta.models.cifar import ResNet20, vgg7_bn
from geta.quant.prepare import INPUT_QUANTIZER


def _run_both(model: nn.Module, x: torch.Tensor, path: Path) -> tuple[np.ndarray, np.ndarray, onnx.ModelProto]:
    session = inference_session(path)
    (out,) = session.run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    return ref, out, onnx.load(str(path))


def _weight_types(graph: onnx.GraphProto) -> list[int]:
    """The types of the integer weight levels: read by a DequantizeLinear or by a Cast (to float)."""
    initializers = {i.name: i for i in graph.initializer}
    weights = [n.input[0] for n in graph.node
               if n.op_type in ("DequantizeLinear", "Cast") and n.input[0] in initializers]
    return [initializers[name].data_type for name in weights]


MODELS = {
    "resnet20": (lambda: ResNet20(width=8), (2, 3, 32, 32)),
    "vgg7": (lambda: vgg7_bn(width=8), (2, 3, 32, 32)),
    "encoder": (TinyEncoder, (2, 6, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_weights_only_export_matches_torch_to_float_rounding(name: str, tmp_path: Path) -> None:
    make, shape = MODELS[name]
    model = compact(make(), torch.randn(shape), "weights", per_channel=name != "encoder")
    path = geta.export_onnx(model, torch.randn(shape), tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ref, out, graph_model = _run_both(model, torch.randn(3, *shape[1:]), path)  # another batch size
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert graph_model.opset_import[0].version == 21
    types = _weight_types(graph_model.graph)
    quantized = sum(1 for m in model.modules() for _ in getattr(m, "parametrizations", {}))
    assert len(types) >= quantized and set(types) <= {TensorProto.INT4, TensorProto.INT8}


@pytest.mark.parametrize(("weights", "bits", "expected"), [("int8", 4, TensorProto.INT8), ("int4", 4, TensorProto.INT4),
                                                        ("int4", 8, TensorProto.INT8)])
def test_weight_format_picks_the_container(weights: str, bits: int, expected: int, tmp_path: Path) -> None:
    """INT8 up to 8 bits by default (onnxruntime's integer kernels read it); weights="int4" packs up to 4 bits."""
    g = geta.GETA(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), torch.randn(2, 8),
                  initial_weight_bits=bits)
    model = g.construct_subnet().eval()
    path = geta.export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx", weights=weights)
    ref, out, graph_model = _run_both(model, torch.randn(4, 8), path)
    assert set(_weight_types(graph_model.graph)) == {expected}
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_an_unknown_weight_format_is_refused(tmp_path: Path) -> None:
    model = geta.GETA(nn.Sequential(nn.Linear(8, 6)), torch.randn(2, 8)).construct_subnet()
    with pytest.raises(geta.ConfigError, match="weights='int2'"):
        geta.export_onnx(model, torch.randn(2, 8), tmp_path / "m.onnx", weights="int2")


@pytest.mark.parametrize("name", list(MODELS))
def test_weights_and_activations_export_matches_within_quantization_tolerance(name: str, tmp_path: Path) -> None:
    """Activation levels may differ by one where torch and onnxruntime round a value at a level boundary
    differently (summation order upstream, exp/log for t != 1); the outputs stay within a few percent."""
    make, shape = MODELS[name]
    model = compact(make(), torch.randn(shape), "weights+activations", per_channel=name != "encoder")
    path = geta.export_onnx(model, torch.randn(shape), tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ref, out, graph_model = _run_both(model, torch.randn(8, *shape[1:]), path)
    ops = [n.op_type for n in graph_model.graph.node]
    quantizers = sum(1 for m in model.modules() if isinstance(getattr(m, INPUT_QUANTIZER, None), geta.Quantizer))
    assert ops.count("QuantizeLinear") == quantizers > 0
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 0.05 * scale
    assert np.abs(out - ref).mean() <= 0.005 * scale


def _away_from_boundaries(d: float, q_m: float, t: float, top: int, signed: bool, count: int) -> torch.Tensor:
    """Inputs whose c^t / d lies a quarter step from a level (and some beyond the clip)."""
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(0, top, (count,), generator=generator).double() + 0.25
    x = (levels * d) ** (1 / t)
    sign = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0).double()
    x = x * sign
    x[:4] = torch.tensor([2 * q_m, -2 * q_m, 0.0, 1.5 * q_m], dtype=torch.float64)
    return x.float()


@pytest.mark.parametrize(("t", "signed", "bits", "twos"), [
    (1.0, True, 8, False), (0.7, True, 5, False), (1.3, False, 6, False), (1.0, False, 3, False),
    (0.8, True, 4, False), (1.0, True, 12, False), (0.9, True, 20, False),
    (1.0, True, 8, True), (1.0, True, 5, True), (1.0, True, 12, True), (1.0, True, 20, True),
])
def test_activation_pattern_is_the_quantizer(t: float, signed: bool, bits: int, twos: bool, tmp_path: Path) -> None:
    """One quantized input feeding an identity weight: onnxruntime equals torch away from level boundaries,
    for t == 1 and t != 1, signed and unsigned, symmetric and two's-complement levels (the inputs below -q_m
    land on the extra level), UINT8 codes up to 8 bits (zero point 128 when signed; at 8 bits two's
    complement fills the container, so no Clip), INT16 / UINT16 and (beyond 16 bits) plain float ops."""
    layer = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(64))
    g = geta.GETA(nn.Sequential(layer), torch.randn(2, 64), quantize="weights+activations", initial_weight_bits=8)
    model = g.construct_subnet().eval()
    quantizer = getattr(model[0], INPUT_QUANTIZER)
    quantizer.signed, quantizer.twos_complement = signed, twos
    with torch.no_grad():
        quantizer.q_m.fill_(2.0)
        quantizer.t.fill_(t)
        quantizer.set_bits_(bits)
    d, q_m, t_c = (float(p.detach()) for p in quantizer.constrained_parameters())
    top = int(geta.quant.functional.top_level(torch.tensor(q_m**t_c / d)))
    x = _away_from_boundaries(d, q_m, t_c, top, signed, 64 * 8).reshape(8, 64)
    path = geta.export_onnx(model, x[:2], tmp_path / "m.onnx")
    ref, out, graph_model = _run_both(model, x, path)
    ops = [n.op_type for n in graph_model.graph.node]
    assert ("QuantizeLinear" in ops) == (bits <= 16) and ("Exp" in ops) == (t != 1.0)
    assert ("Clip" in ops) == (bits != 8 or not twos)
    if twos:
        assert (torch.round(torch.from_numpy(ref) / d).min() == -top - 1) and (ref.max() <= top * d + 1e-6)
    zero_points = [numpy_helper.to_array(i) for i in graph_model.graph.initializer
                   if i.name.startswith("geta_act") and i.name.endswith("zero_point")]
    expected = dict.fromkeys((3, 4, 5, 6, 8), (np.uint8, 128 if signed else 0)) | {12: (np.int16, 0)}
    assert [(z.dtype, int(z)) for z in zero_points] == ([expected[bits]] if bits in expected else [])
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_encoder_with_all_heads_exports_off_the_fused_kernels(tmp_path: Path) -> None:
    """Unpruned nn.TransformerEncoderLayer / nn.MultiheadAttention take fused inference kernels without
    grad; the export traces them in grad mode so that their ONNX form exists."""
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    x = torch.randn(2, 5, 16)
    compact_model = geta.GETA(model, x, quantize="weights+activations").construct_subnet().eval()
    path = geta.export_onnx(compact_model, x, tmp_path / "m.onnx")
    ref, out, _ = _run_both(compact_model, torch.randn(3, 5, 16), path)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
