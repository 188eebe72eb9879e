"""`geta recipes` and `geta compress` as a new user meets them: help, listings, one-line errors, a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from geta.cli import _check_writable, app
from geta.errors import GetaError
from geta.recipes import RECIPES, Recipe, get_recipe

runner = CliRunner()


def test_recipes_lists_every_recipe_with_its_run_time() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    for recipe in RECIPES.values():
        line = next(line for line in result.output.splitlines() if line.startswith(recipe.name + " "))
        assert recipe.expected_time in line and recipe.description in line


def test_compress_help_explains_the_options() -> None:
    result = runner.invoke(app, ["compress", "--help"])
    assert result.exit_code == 0
    for option in ("--epochs", "--sparsity", "--weight-bits", "--act-bits", "--out", "--seed", "--baseline", "--skip"):
        assert option in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["compress", "resnet99"], "unknown recipe 'resnet99'; known recipes: cnn-digits"),
        (["compress", "cnn-digits", "--weight-bits", "8", "4"], "inverted"),
        (["compress", "cnn-digits", "--baseline", "magic"], "unknown method 'magic'"),
        (["compress", "cnn-digits", "--threads", "0"], "--threads 0"),
        (["compress", "cnn-digits", "--skip", "none", "--skip", "first"], "--skip none"),
        (["compress", "cnn-digits", "--saliency-macs", "-1"], "--saliency-macs -1"),
        (["compress", "cnn-digits", "--stages", "0.5", "0.3", "0.3"], "--stages 0.5 0.3 0.3"),
    ],
)
def test_a_wrong_argument_is_one_line_and_exit_code_2(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and message in result.output
    assert "Traceback" not in result.output


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("")
    for out, message in ((Path("/proc/geta-run"), "cannot write there"), (a_file, "not a folder")):
        result = runner.invoke(app, ["compress", "cnn-digits", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0 and f"--out {out}: {message}" in result.output
    _check_writable(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists(), "the check leaves no folder behind"


def test_missing_data_is_one_line_and_exit_code_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise GetaError("Fashion-MNIST not found in /nowhere: apt-get install dataset-fashion-mnist")

    broken = Recipe(**{**get_recipe("cnn-digits").__dict__, "name": "broken", "setup": missing})
    monkeypatch.setitem(RECIPES, "broken", broken)
    result = runner.invoke(app, ["compress", "broken", "--quiet"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: Fashion-MNIST not found in /nowhere: apt-get install dataset-fashion-mnist"


def test_compress_runs_and_ends_by_printing_where_the_report_is(tmp_path: Path) -> None:
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    result = runner.invoke(app, ["compress", "cnn-digits", "--dense-epochs", "1", "--epochs", "2", "--limit-batches",
                                 "10", "--sparsity", "0.25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # the recipe's one thread is given back
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("report: ") and str(out / "report.md") in last
    report = json.loads((out / "report.json").read_text())
    assert report["group_sparsity"] == 0.25 and report["settings"]["sparsity"] == 0.25
    assert {"report.md", "layers.png", "curves.png", "model.safetensors", "model.onnx"} <= {p.name for p in out.iterdir()}
