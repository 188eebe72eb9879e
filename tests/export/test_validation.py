"""Saved files are validated on load: a checksum over the tensor data, module references without cycles,
quantizer parameters finite and positive, and every malformed input (another format, edited JSON of
the wrong types, widths that disagree with the tensors) refused with SavedModelError by geta.load and
by `geta inspect` (one line on stderr, exit 1), while a good file still round-trips exactly."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import geta
from geta.cli import app
from geta.export.inspect import summarize
from geta.export.packed import tensor_checksum

runner = CliRunner()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A tiny compact model with 4-bit weights and 6-bit input quantizers (one signed, one unsigned)."""
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    g = geta.GETA(layers, torch.randn(2, 4), quantize="weights+activations", initial_weight_bits=4, initial_act_bits=6)
    return g.construct_subnet().eval()


@pytest.fixture(scope="module")
def saved(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geta.save(model, tmp_path_factory.mktemp("saved") / "model.safetensors")


def _contents(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as file:
        return json.loads(file.metadata()["geta"]), {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open)


def _write(target: Path, header: dict, tensors: dict[str, torch.Tensor], checksum: bool = True) -> Path:
    """A file of ``header`` and ``tensors``; with ``checksum`` the tensors' checksum is recorded, so that
    what gets refused is the edit itself and not the checksum."""
    if checksum:
        header["tensor_sha256"] = tensor_checksum(tensors)
    save_file(tensors, str(target), metadata={"geta": json.dumps(header)})
    return target


def _refused_by_inspect(path: Path, message: str) -> None:
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line


def test_a_good_file_round_trips_exactly_without_warnings(model: nn.Module, saved: Path) -> None:
    header, tensors = _contents(saved)
    assert header["tensor_sha256"] == tensor_checksum(tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = geta.load(saved)
        summarize(saved)
    x = torch.randn(8, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for name, value in loaded.state_dict().items():  # quantized weights as their values, quantizers constrained
        module_path, _, attr = name.rpartition(".")
        module = model.get_submodule(module_path)
        if isinstance(module, geta.Quantizer):
            expected = module.constrained_parameters()[("d", "q_m", "t").index(attr)]
        else:
            expected = getattr(module, attr)
        assert torch.equal(value, expected), name
    result = runner.invoke(app, ["inspect", str(saved)])
    assert result.exit_code == 0 and result.stderr == "", result.output


@pytest.mark.parametrize("where", [0.5, 1.0])
def test_flipped_tensor_bytes_are_refused(where: float, saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    start = 8 + length  # the tensor data follows the header
    position = min(start + int((len(data) - start) * where), len(data) - 1)
    data[position] ^= 0x01
    target = tmp_path / "flipped.safetensors"
    target.write_bytes(bytes(data))
    message = "the tensor data does not match its checksum: the file was changed or damaged after saving"
    with pytest.raises(geta.SavedModelError, match=message):
        geta.load(target)
    _refused_by_inspect(target, "does not match its checksum")


def test_a_file_without_its_checksum_is_refused(saved: Path, tmp_path: Path) -> None:
    header, tensors = _contents(saved)
    del header["tensor_sha256"]
    target = _write(tmp_path / "t.safetensors", header, tensors, checksum=False)
    with pytest.raises(geta.SavedModelError, match="lacks the checksum"):
        geta.load(target)


def test_a_version_1_file_loads_with_a_warning(model: nn.Module, saved: Path, tmp_path: Path) -> None:
    header, tensors = _contents(saved)
    del header["tensor_sha256"]
    header["version"] = 1
    target = _write(tmp_path / "v1.safetensors", header, tensors, checksum=False)
    with pytest.warns(UserWarning, match="without a checksum"):
        loaded = geta.load(target)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    result = runner.invoke(app, ["inspect", str(target)])
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: ") and "without a checksum" in line


CYCLES = {  # an edit of the architecture, and the path of the module refused
    "root contains itself": (lambda tree: tree["children"].update({"1": {"same_as": ""}}), "1"),
    "root -> 0 -> root": (lambda tree: tree["children"]["0"]["children"].update({"loop": {"same_as": ""}}), "0.loop"),
    "0 -> 0.0 -> 0": (lambda tree: tree["children"]["0"]["children"]["0"]["children"].update(
        {"back": {"same_as": "0"}}), "0.0.back"),
}


@pytest.mark.parametrize("case", list(CYCLES))
def test_cyclic_module_references_are_refused(case: str, saved: Path, tmp_path: Path) -> None:
    edit, where = CYCLES[case]
    if case == "0 -> 0.0 -> 0":  # needs a model two levels deep
        saved = geta.save(nn.Sequential(nn.Sequential(nn.Linear(2, 2))), tmp_path / "nested.safetensors")
    header, tensors = _contents(saved)
    edit(header["architecture"])
    target = _write(tmp_path / "cycle.safetensors", header, tensors)
    with pytest.raises(geta.SavedModelError, match=f"module '{where}' refers to .*, which contains it.*cycle"):
        geta.load(target)
    _refused_by_inspect(target, "may not form a cycle")


def test_a_reference_to_a_later_module_is_refused(saved: Path, tmp_path: Path) -> None:
    header, tensors = _contents(saved)
    header["architecture"]["children"]["1"] = {"same_as": "2"}
    with pytest.raises(geta.SavedModelError, match="not defined before it"):
        geta.load(_write(tmp_path / "t.safetensors", header, tensors))


def test_a_cycle_is_refused_before_a_given_model_changes(saved: Path, tmp_path: Path) -> None:
    header, tensors = _contents(saved)
    CYCLES["root -> 0 -> root"][0](header["architecture"])
    target = _write(tmp_path / "cycle.safetensors", header, tensors)
    dense = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    before = {name: value.clone() for name, value in dense.state_dict().items()}
    with pytest.raises(geta.SavedModelError, match="cycle"):
        geta.load(target, model=dense)
    assert all(torch.equal(before[name], value) for name, value in dense.state_dict().items())


BAD_PARAMETERS = {
    "NaN step": ("0.weight.d", float("nan")),
    "negative step": ("2.weight.d", -0.1),
    "negative range": ("0.weight.q_m", -1.0),
    "zero exponent": ("2.weight.t", 0.0),
    "infinite exponent": ("0.weight.t", float("inf")),
    "NaN input range": ("0.geta_input_quantizer.q_m", float("nan")),
    "negative input step": ("2.geta_input_quantizer.d", -1.0),
    "negative input exponent": ("0.geta_input_quantizer.t", -2.0),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_nan_or_negative_quantizer_parameters_are_refused(case: str, saved: Path, tmp_path: Path) -> None:
    name, value = BAD_PARAMETERS[case]
    header, tensors = _contents(saved)
    tensors[name] = torch.full_like(tensors[name], value)
    target = _write(tmp_path / "t.safetensors", header, tensors)
    with pytest.raises(geta.SavedModelError, match=f"'{name}' holds .*finite and positive"):
        geta.load(target)
    _refused_by_inspect(target, name)


def test_an_onnx_file_renamed_is_refused(model: nn.Module, tmp_path: Path) -> None:
    onnx_path = geta.export_onnx(model, torch.randn(2, 4), tmp_path / "model.onnx")
    renamed = tmp_path / "model.safetensors"
    shutil.copy(onnx_path, renamed)
    with pytest.raises(geta.SavedModelError, match=r"not a readable safetensors file.*ONNX"):
        geta.load(renamed)
    _refused_by_inspect(renamed, "not a readable safetensors file")


def test_an_absurd_header_length_is_refused_before_reading_it(tmp_path: Path) -> None:
    target = tmp_path / "huge.safetensors"
    target.write_bytes(struct.pack("<Q", 1 << 62) + b"{}" * 8)
    with pytest.raises(geta.SavedModelError, match="header of 4,611,686,018,427,387,904 bytes"):
        geta.load(target)
    _refused_by_inspect(target, "header of")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 12) + b"\xff\xfe not json" + b"\x00" * 16)
    with pytest.raises(geta.SavedModelError, match="not a readable safetensors file"):
        geta.load(garbage)
    _refused_by_inspect(garbage, "not a readable safetensors file")


def test_widths_that_disagree_with_the_tensors_are_refused(saved: Path, tmp_path: Path) -> None:
    header, tensors = _contents(saved)
    header["architecture"]["children"]["2"]["attributes"]["out_features"] = 3  # its weight is 2 x 6
    with pytest.raises(geta.SavedModelError, match="module '2' declares out_features=3, but its tensors give 2"):
        geta.load(_write(tmp_path / "t.safetensors", header, tensors))


def test_a_tensor_no_module_takes_is_refused(saved: Path, tmp_path: Path) -> None:
    header, tensors = _contents(saved)
    header["architecture"]["children"]["2"]["parameters"]["bias"] = None
    target = _write(tmp_path / "t.safetensors", header, tensors)
    with pytest.raises(geta.SavedModelError, match=r"tensors no module takes: 2\.bias"):
        geta.load(target)
    _refused_by_inspect(target, "no module takes")


def _child(header: dict, name: str) -> dict:
    return header["architecture"]["children"][name]


WRONG_TYPES = {  # edits that raised a bare TypeError or KeyError, or loaded, before files were validated
    "dtype a list": (lambda h: h["tensors"]["0.bias"].update(dtype=[]), "dtype"),
    "same_as a list": (lambda h: h["architecture"]["children"].update({"1": {"same_as": []}}),
                       "'same_as' should be a str"),
    "tensor key a list": (lambda h: _child(h, "0")["parameters"].update(bias=["0.bias"]), "refers to tensor"),
    "buffer names nested": (lambda h: _child(h, "1").update(non_persistent_buffers=[[]]), "non-persistent buffer name"),
    "unsaved attributes a number": (lambda h: _child(h, "1").update(unsaved_attributes=5), "unsaved attributes"),
    "children a list": (lambda h: _child(h, "1").update(children=[]), "children should be a dict"),
    "record lacks its type": (lambda h: _child(h, "2").pop("type"), "lacks type"),
    "input quantizer key moved": (lambda h: _child(h, "2")["input_quantizer"].update(key="0.geta_input_quantizer"),
                                  "expected '2.geta_input_quantizer'"),
    "tensor table a list": (lambda h: h.update(tensors=[]), "tensor table should be a JSON object"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_json_of_the_wrong_types_is_refused(case: str, saved: Path, tmp_path: Path) -> None:
    edit, message = WRONG_TYPES[case]
    header, tensors = _contents(saved)
    edit(header)
    target = _write(tmp_path / "t.safetensors", header, tensors)
    with pytest.raises(geta.SavedModelError, match=message):
        geta.load(target)
    _refused_by_inspect(target, message)


def _nodes(value: object, where: tuple = ()) -> list[tuple]:
    """The path (keys and indices) of every value inside the JSON ``value``, containers included."""
    found = [where] if where else []
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        children = ()
    for key, child in children:
        found += _nodes(child, (*where, key))
    return found


def _replaced(header: dict, where: tuple, value: object) -> dict:
    edited = json.loads(json.dumps(header))
    target = edited
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return edited


WRONG_VALUES = (None, True, -1, 2.5, "x", [], {}, [[]], {"same_as": 1})


def test_json_edited_to_wrong_types_is_refused_with_a_clear_error(saved: Path, tmp_path: Path) -> None:
    """Every value of the geta JSON, replaced by values of other types: each file either loads or is refused
    with SavedModelError, by geta.load and by summarize (geta inspect), never with another exception."""
    header, tensors = _contents(saved)
    target = tmp_path / "edited.safetensors"
    refused = 0
    for where in _nodes(header):
        if where == ("tensor_sha256",):
            continue
        for value in WRONG_VALUES:
            _write(target, _replaced(header, where, value), tensors)
            outcomes = []
            for read in (geta.load, summarize):
                try:
                    read(target)
                    outcomes.append("read")
                except geta.SavedModelError:
                    outcomes.append("refused")
            assert outcomes[0] == outcomes[1] or outcomes == ["refused", "read"], (where, value)
            refused += outcomes[0] == "refused"
    assert refused > 0.9 * len(_nodes(header)) * len(WRONG_VALUES)
