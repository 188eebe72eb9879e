"""geta.save / geta.load: identical outputs after a round trip, a file of the predicted size, and clear
errors (never code execution) for tampered, truncated or foreign files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compact_models import TinyEncoder, compact
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.export.inspect import summarize
from geta.export.packed import tensor_checksum
from geta.models.cifar import ResNet20, vgg7_bn
from geta.quant.prepare import INPUT_QUANTIZER

CASES = {
    "resnet20-weights": (lambda: ResNet20(width=8), "weights", True),
    "resnet20-weights+activations": (lambda: ResNet20(width=8), "weights+activations", True),
    "vgg7-weights": (lambda: vgg7_bn(width=8), "weights", False),
    "vgg7-weights+activations": (lambda: vgg7_bn(width=8), "weights+activations", False),
}
_BUILT: dict[str, nn.Module] = {}


def built(case: str) -> nn.Module:
    if case not in _BUILT:
        make, mode, per_channel = CASES[case]
        torch.manual_seed(0)
        _BUILT[case] = compact(make(), torch.randn(2, 3, 32, 32), mode, per_channel)
    return _BUILT[case]


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory) -> Path:
    return geta.save(built("resnet20-weights+activations"), tmp_path_factory.mktemp("saved") / "model.safetensors")


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_gives_identical_outputs(case: str, tmp_path: Path) -> None:
    model = built(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = geta.load(geta.save(model, tmp_path / "m.safetensors"))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert not any(parametrize.is_parametrized(m) for m in loaded.modules())
    with_inputs = [m for m in model.modules() if hasattr(m, INPUT_QUANTIZER)]
    assert len(with_inputs) == sum(hasattr(m, INPUT_QUANTIZER) for m in loaded.modules())
    assert type(loaded) is type(model) or isinstance(loaded, nn.Sequential)


def test_transformer_encoder_round_trip(tmp_path: Path) -> None:
    model = compact(TinyEncoder(), torch.randn(2, 6, 8), "weights+activations", per_channel=False)
    assert any(type(m).__name__.endswith("CompactMultiheadAttention") for m in model.modules())  # heads removed
    loaded = geta.load(geta.save(model, tmp_path / "m.safetensors"))
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("case", ["resnet20-weights+activations", "vgg7-weights"])
def test_file_size_is_params_times_bits_plus_metadata(case: str, tmp_path: Path) -> None:
    model = built(case)
    path = geta.save(model, tmp_path / "m.safetensors")
    summary = summarize(path)
    quantizer_params = {id(p) for m in model.modules() if isinstance(m, geta.Quantizer) for p in m.parameters()}
    bits = 0
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # the originals of quantized weights, counted below at their bits
        for _name, p in module.named_parameters(recurse=False):
            if id(p) not in quantizer_params:
                bits += p.numel() * 32
        for name in getattr(module, "parametrizations", {}):
            quantizer = module.parametrizations[name][0]
            weight = module.parametrizations[name].original
            per_channel = weight.numel() // quantizer.d.numel()
            bits += int(quantizer.integer_bits().sum()) * per_channel
    assert summary.parameter_bits == bits
    assert summary.file_bytes == path.stat().st_size
    assert abs(summary.file_bytes / summary.expected_bytes - 1) < 0.05


def test_shared_modules_and_plain_models_round_trip(tmp_path: Path) -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.GELU(approximate="tanh"), shared, nn.LayerNorm(4)).eval()
    loaded = geta.load(geta.save(model, tmp_path / "m.safetensors"))
    assert loaded[0] is loaded[2] and loaded[1].approximate == "tanh"
    x = torch.randn(2, 4)
    assert torch.equal(model(x), loaded(x))


def test_unregistered_custom_module_saves_and_loads_into_a_given_model(tmp_path: Path) -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) * 2

    model = Custom()
    path = geta.save(model, tmp_path / "m.safetensors")
    with pytest.raises(geta.SavedModelError, match=r"model=Custom\(\.\.\.\)"):
        geta.load(path)
    x = torch.randn(3, 2)
    assert torch.equal(geta.load(path, model=Custom())(x), model(x))


def _rewrite(source: Path, target: Path, header_edit=None, tensor_edit=None) -> Path:
    """A copy of a saved model with its JSON header and/or tensors edited, and the checksum of the edited
    tensors recorded, so that what is refused is the edit itself (test_validation.py: the checksum)."""
    with safe_open(str(source), framework="pt") as file:
        metadata = file.metadata()
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open, not a dict)
    header = json.loads(metadata["geta"])
    if header_edit is not None:
        header_edit(header)
    if tensor_edit is not None:
        tensor_edit(tensors)
    header["tensor_sha256"] = tensor_checksum(tensors)
    save_file(tensors, str(target), metadata={"geta": json.dumps(header)})
    return target


def _first_quantized(header: dict) -> str:
    return next(k for k, e in header["tensors"].items() if e["kind"] == "quantized")


def _set(mapping: dict, key: str, value: object) -> None:
    mapping[key] = value


TAMPERING = {
    "json shape": (lambda h: _set(h["tensors"]["bn.running_mean"], "shape", [999]), None, "altered"),
    "tensor shape": (None, lambda t: _set(t, "bn.weight", torch.zeros(3)), "altered"),
    "tensor dtype": (None, lambda t: _set(t, "bn.weight", t["bn.weight"].double()), "altered"),
    "codes cut short": (None, lambda t: _set(t, "conv.weight.codes", t["conv.weight.codes"][:-1]), "altered"),
    "missing tensor": (None, lambda t: t.pop("fc.bias"), "lacks tensor 'fc.bias'"),
    "extra tensor": (None, lambda t: _set(t, "payload", torch.zeros(1)), "does not describe"),
    "unknown layer type": (lambda h: _set(h["architecture"], "type", "subprocess.Popen"), None, "not allow-listed"),
    "importable but unlisted type": (
        lambda h: _set(h["architecture"]["children"]["blocks"], "type", "collections.OrderedDict"), None,
        "not allow-listed"),
    "method attribute": (lambda h: _set(h["architecture"]["attributes"], "forward", "x"), None, "defines itself"),
    "dunder attribute": (lambda h: _set(h["architecture"]["attributes"], "__class__", "x"), None, "not a plain name"),
    "unknown value tag": (
        lambda h: _set(h["architecture"]["children"]["conv"]["attributes"], "stride", {"pickle": "x"}), None,
        "not a saved attribute value"),
    "bits out of range": (lambda h: _set(h["tensors"][_first_quantized(h)], "bits", [99]), None, "'bits' must list"),
    "name clash": (lambda h: _set(h["architecture"]["children"]["conv"]["buffers"], "weight", "bn.running_mean"),
                   None, "cannot be rebuilt"),
    "negative step": (None, lambda t: _set(t, "conv.weight.d", -t["conv.weight.d"]), "finite and positive"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_files_raise_a_clear_error(case: str, saved_resnet: Path, tmp_path: Path) -> None:
    header_edit, tensor_edit, message = TAMPERING[case]
    target = _rewrite(saved_resnet, tmp_path / "t.safetensors", header_edit, tensor_edit)
    with pytest.raises(geta.SavedModelError, match=message):
        geta.load(target)


def test_codes_outside_the_bit_range_are_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    g = geta.GETA(model, torch.randn(1, 4), initial_weight_bits=2)  # signed 2 bits: levels -1..1, codes 0..2
    path = geta.save(g.construct_subnet(), tmp_path / "m.safetensors")
    target = _rewrite(path, tmp_path / "t.safetensors", tensor_edit=lambda t: t["0.weight.codes"].fill_(0xFF))
    with pytest.raises(geta.SavedModelError, match="outside the 2-bit range"):
        geta.load(target)


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_files_raise_a_clear_error(cut: float, saved_resnet: Path, tmp_path: Path) -> None:
    data = saved_resnet.read_bytes()
    target = tmp_path / "cut.safetensors"
    target.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(geta.SavedModelError, match="truncated or damaged"):
        geta.load(target)


def test_foreign_files_raise_a_clear_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(geta.SavedModelError, match=r"not a model saved by geta\.save"):
        geta.load(plain)
    broken = tmp_path / "broken.safetensors"
    save_file({"w": torch.zeros(2)}, str(broken), metadata={"geta": "{not json"})
    with pytest.raises(geta.SavedModelError, match="not valid JSON"):
        geta.load(broken)
    pickled = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), pickled)
    with pytest.raises(geta.SavedModelError):
        geta.load(pickled)


def test_loading_never_unpickles(saved_resnet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = geta.load(saved_resnet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), built("resnet20-weights+activations")(x))


def test_a_saved_file_gets_the_mode_of_any_new_file(tmp_path: Path) -> None:
    from geta.export.packed import new_file_mode

    path = geta.save(nn.Sequential(nn.Linear(3, 2)), tmp_path / "m.safetensors")
    assert path.stat().st_mode & 0o777 == new_file_mode()
