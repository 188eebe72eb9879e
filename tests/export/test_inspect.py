"""`geta inspect PATH` prints per-layer bits, widths and sizes of a saved model; write_artifacts writes
the packed model and the ONNX file that `geta compress` leaves behind."""

from pathlib import Path

import onnx
import torch
from typer.testing import CliRunner

import geta
from geta.cli import app
from geta.export import write_artifacts
from geta.models.cnn import digits_cnn

runner = CliRunner()


def _compact() -> torch.nn.Module:
    g = geta.GETA(digits_cnn(width=8), torch.randn(2, 1, 8, 8), quantize="weights+activations",
                  initial_weight_bits=3, initial_act_bits=6)
    g.zero_random_groups(0.5, seed=0)
    return g.construct_subnet().eval()


def test_write_artifacts_and_inspect(tmp_path: Path) -> None:
    model = _compact()
    paths = write_artifacts(model, torch.randn(2, 1, 8, 8), tmp_path / "out")
    assert paths == {"safetensors": tmp_path / "out" / "model.safetensors", "onnx": tmp_path / "out" / "model.onnx"}
    onnx.checker.check_model(onnx.load(str(paths["onnx"])))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(geta.load(paths["safetensors"])(x), model(x))
    result = runner.invoke(app, ["inspect", str(paths["safetensors"])])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(str(paths["safetensors"])) and "w bits" in lines[1] and "width" in lines[1]
    conv = next(line.split() for line in lines if line.startswith("3 "))  # the third conv: 3-bit weights, 6-bit inputs
    assert conv[1] == "Conv2d" and conv[3] == "3" and conv[4] == "6"
    assert int(conv[5]) == model[3].out_channels
    assert "sum(params x bits)/8" in lines[-1] and f"file {paths['safetensors'].stat().st_size:,} bytes" in lines[-1]


def test_inspect_reports_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 1 and "not a readable safetensors file" in result.output
