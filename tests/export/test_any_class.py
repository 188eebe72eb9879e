"""Saving and exporting a model of the user's own class, never registered: geta.save writes it,
geta.load(path, model=UserNet(...)) gives the saved state to a freshly built dense model, geta.export_onnx
exports it; a dense model of another class or architecture is refused, naming the module."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from compact_models import TinyEncoder, compact
from torch import Tensor, nn

import geta
from geta.export import write_artifacts
from geta.export.architecture import allowed_module, type_name
from geta.export.onnx import inference_session
from geta.pruning.attention import CompactMultiheadAttention
from geta.quant.prepare import INPUT_QUANTIZER


class GatedBlock(nn.Module):
    """conv -> batch norm -> relu, gated by a sigmoid of a 1x1 conv, scaled and added to the input."""

    def __init__(self, channels: int, scale: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.gate = nn.Conv2d(channels, channels, 1)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn(self.conv(x)))
        return x + self.scale * y * torch.sigmoid(self.gate(y))


class UserNet(nn.Module):
    """A small CNN: a stem, residual gated blocks, a strided expansion and a linear head."""

    def __init__(self, width: int = 8, blocks: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(GatedBlock(width) for _ in range(blocks)))
        self.expand = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * width, classes)
        self.pool = functools.partial(torch.mean, dim=(2, 3))  # not a plain value: comes from the given model

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(F.relu(self.expand(self.blocks(self.stem(x))))))


class UserNetVariant(UserNet):
    """The same modules under another class."""


SHAPE = (2, 3, 12, 12)
_BUILT: dict[str, nn.Module] = {}


def user_compact(mode: str) -> nn.Module:
    """UserNet with 30% of its groups removed at mixed bits; t = 1, so ONNX's Q/DQ is the quantizer exactly."""
    if mode not in _BUILT:
        torch.manual_seed(0)
        _BUILT[mode] = compact(UserNet(), torch.randn(SHAPE), mode, per_channel=True, warp=False)
    return _BUILT[mode]


def test_the_user_class_is_not_allow_listed_and_is_pruned() -> None:
    model = user_compact("weights")
    assert allowed_module(type_name(UserNet)) is None and allowed_module(type_name(GatedBlock)) is None
    assert model.expand.out_channels < 16 or model.stem[0].out_channels < 8  # groups were removed


@pytest.mark.parametrize("mode", ["weights", "weights+activations"])
def test_save_and_load_into_a_fresh_dense_model(mode: str, tmp_path: Path) -> None:
    model = user_compact(mode)
    path = geta.save(model, tmp_path / "m.safetensors")
    dense = UserNet()
    loaded = geta.load(path, model=dense)
    assert loaded is dense and not loaded.training
    x = torch.randn(4, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.expand.out_channels == model.expand.out_channels
    assert loaded.head.in_features == model.head.in_features
    assert loaded.blocks[1].bn.num_features == model.blocks[1].bn.num_features
    with_inputs = sorted(name for name, m in model.named_modules() if hasattr(m, INPUT_QUANTIZER))
    assert sorted(name for name, m in loaded.named_modules() if hasattr(m, INPUT_QUANTIZER)) == with_inputs
    assert bool(with_inputs) == (mode == "weights+activations")


def test_load_without_a_model_says_to_pass_one(tmp_path: Path) -> None:
    path = geta.save(user_compact("weights"), tmp_path / "m.safetensors")
    with pytest.raises(geta.SavedModelError, match=r"not allow-listed.*geta\.load\(path, model=UserNet\(\.\.\.\)\)"):
        geta.load(path)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: UserNetVariant(), r"the root module is a .*UserNetVariant in the given model but a .*UserNet in the file"),
    (lambda: UserNet(blocks=1), r"module 'blocks' has children \['0'\] in the given model but \['0', '1'\]"),
    (lambda: UserNet(classes=3), r"module 'head'.bias is \(5,\) in the file, which does not fit .* \(3,\)"),
    (lambda: nn.Sequential(nn.Linear(2, 2)), r"the root module has children"),
])
def test_a_mismatched_dense_model_is_refused_naming_the_module(make, message: str, tmp_path: Path) -> None:
    path = geta.save(user_compact("weights"), tmp_path / "m.safetensors")
    with pytest.raises(geta.SavedModelError, match=message):
        geta.load(path, model=make())


def test_a_model_with_quantizers_is_refused(tmp_path: Path) -> None:
    path = geta.save(user_compact("weights"), tmp_path / "m.safetensors")
    with pytest.raises(geta.SavedModelError, match="already has geta quantizers"):
        geta.load(path, model=user_compact("weights"))


@pytest.mark.parametrize("mode", ["weights", "weights+activations"])
def test_onnx_export_matches_torch(mode: str, tmp_path: Path) -> None:
    model = user_compact(mode)
    path = geta.export_onnx(model, torch.randn(SHAPE), tmp_path / "m.onnx")
    x = torch.randn(6, *SHAPE[1:])
    (out,) = inference_session(path).run(None, {"input_0": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("QuantizeLinear" in ops) == (mode == "weights+activations") and "DequantizeLinear" in ops


def test_write_artifacts_writes_both_files(tmp_path: Path) -> None:
    model = user_compact("weights+activations")
    paths = write_artifacts(model, torch.randn(SHAPE), tmp_path / "out")
    assert paths["safetensors"].is_file() and paths["onnx"].is_file()
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(geta.load(paths["safetensors"], model=UserNet())(x), model(x))


def test_an_attribute_that_is_not_a_plain_value_needs_the_model(tmp_path: Path) -> None:
    def make() -> nn.Sequential:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        model.postprocess = lambda y: y.softmax(-1)
        return model

    path = geta.save(make(), tmp_path / "m.safetensors")
    with pytest.raises(geta.SavedModelError, match=r"not plain values and were not saved \(postprocess\)"):
        geta.load(path)
    loaded = geta.load(path, model=make())
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), make()(x))


def test_shared_modules_load_into_a_given_model(tmp_path: Path) -> None:
    def make() -> nn.Sequential:
        shared = nn.Linear(4, 4)
        return nn.Sequential(shared, nn.GELU(), shared).eval()

    model = make()
    path = geta.save(model, tmp_path / "m.safetensors")
    loaded = geta.load(path, model=make())
    assert loaded[0] is loaded[2]
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))
    unshared = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))
    with pytest.raises(geta.SavedModelError, match="module '2' is module '0' in the file but not"):
        geta.load(path, model=unshared)


def test_attention_that_lost_heads_loads_into_a_given_model(tmp_path: Path) -> None:
    """The width handler turns the dense nn.MultiheadAttention into the saved CompactMultiheadAttention."""
    model = compact(TinyEncoder(), torch.randn(2, 6, 8), "weights+activations", per_channel=False)
    loaded = geta.load(geta.save(model, tmp_path / "m.safetensors"), model=TinyEncoder())
    compact_attention = [name for name, m in model.named_modules() if isinstance(m, CompactMultiheadAttention)]
    assert compact_attention and compact_attention == [
        name for name, m in loaded.named_modules() if type(m) is CompactMultiheadAttention]
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
