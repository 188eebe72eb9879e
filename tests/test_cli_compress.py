"""`geta recipes` and `geta compress` as a new user meets them: help, listings, one-line errors, a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from geta.cli import _check_out, app
from geta.errors import GetaError
from geta.export.packed import new_file_mode
from geta.recipes import RECIPES, Recipe, get_recipe
from geta.run import RunResult, Settings, run_methods

runner = CliRunner()
TINY = ["--dense-epochs", "1", "--epochs", "2", "--limit-batches", "10"]


@pytest.fixture(scope="module")
def tiny_results() -> list[RunResult]:
    """One tiny GETA run that the tests below return in place of training (monkeypatching run_methods)."""
    return run_methods("cnn-digits", Settings(dense_epochs=1, epochs=2, limit_batches=10), ["geta"])


def no_training(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("trained although a check should have failed first")


def a_recipe(monkeypatch: pytest.MonkeyPatch, **changes: object) -> str:
    """Register a copy of cnn-digits called 'changed' with ``changes``; returns its name."""
    recipe = Recipe(**{**get_recipe("cnn-digits").__dict__, "name": "changed", **changes})
    monkeypatch.setitem(RECIPES, "changed", recipe)
    return "changed"


def old_run(folder: Path) -> dict[str, bytes]:
    """Fill ``folder`` with the files of an earlier run; returns their contents by relative path."""
    (folder / "geta").mkdir(parents=True)
    files = {"report.md": b"old report", "comparison.md": b"old comparison", "geta/report.json": b"{}"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_recipes_lists_every_recipe_with_its_run_time() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    for recipe in RECIPES.values():
        line = next(line for line in result.output.splitlines() if line.startswith(recipe.name + " "))
        assert recipe.expected_time in line and recipe.description in line


def test_compress_help_explains_the_options() -> None:
    result = runner.invoke(app, ["compress", "--help"])
    assert result.exit_code == 0
    for option in ("--epochs", "--sparsity", "--target-rel-bops", "--target-size", "--weight-bits", "--act-bits",
                   "--out", "--seed", "--baseline", "--skip"):
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
        (["compress", "cnn-digits", "--sparsity", "0.3", "--target-rel-bops", "0.02"],
         "give one target, not target_rel_bops and sparsity"),
        (["compress", "cnn-digits", "--target-rel-bops", "1.5"], "target_rel_bops=1.5 must lie in"),
        (["compress", "cnn-digits", "--target-size", "-4"], "target_size_bytes=-4.0 must be"),
        (["compress", "cnn-digits", "--distill", "1.5"], "distill=1.5: give a weight in (0, 1]"),
        (["compress", "cnn-digits", "--distill", "0.5", "--distill-temperature", "0"], "distill_temperature=0.0"),
        (["compress", "cnn-digits", "--epochs", "1", "--limit-batches", "2", "--quiet"], "2 steps is too short"),
    ],
)
def test_a_wrong_argument_is_one_line_and_exit_code_2(arguments: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*arguments, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and message in result.output
    assert "Traceback" not in result.output


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("geta.run.run_methods", no_training)
    a_file = tmp_path / "taken"
    a_file.write_text("")
    for out, message in ((Path("/proc/geta-run"), "cannot write there"), (a_file, "not a folder"),
                         (Path("."), "holds the current folder")):
        result = runner.invoke(app, ["compress", "cnn-digits", "--out", str(out), "--overwrite"])
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0 and f"--out {out}: {message}" in result.output
    _check_out(tmp_path / "new" / "run", overwrite=False)
    assert not (tmp_path / "new").exists(), "the check leaves no folder behind"


def test_an_unknown_skip_layer_is_exit_2_before_the_data_is_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recipe = a_recipe(monkeypatch, setup=no_training)
    monkeypatch.setattr("geta.run.run_methods", no_training)
    result = runner.invoke(app, ["compress", recipe, "--skip", "first", "--skip", "classifier",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and result.stdout == ""
    assert result.stderr.startswith(
        "error: skip entry 'classifier' matches no quantizable layer; layers are named e.g. 0, 3, 7"
    )
    assert list(tmp_path.iterdir()) == []


def test_data_that_cannot_be_found_is_exit_2_before_any_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def missing() -> None:
        raise GetaError("Fashion-MNIST not found in /nowhere: apt-get install dataset-fashion-mnist")

    recipe = a_recipe(monkeypatch, check_data=missing, setup=no_training)
    result = runner.invoke(app, ["compress", recipe, "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: Fashion-MNIST not found in /nowhere: apt-get install dataset-fashion-mnist"


def test_data_that_fails_while_the_run_loads_it_is_one_line_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken() -> None:
        raise GetaError("train-images-idx3-ubyte.gz is not a readable gzip file: delete it and load again")

    result = runner.invoke(app, ["compress", a_recipe(monkeypatch, setup=broken), "--quiet",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: train-images-idx3-ubyte.gz is not a readable gzip file: delete it and load again"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_run_is_refused_before_training_without_overwrite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    before = old_run(out)
    monkeypatch.setattr("geta.run.run_methods", no_training)
    result = runner.invoke(app, ["compress", "cnn-digits", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: --out {out}: holds an earlier run; pass --overwrite to replace it, or choose another --out"
    )
    assert contents(out) == before


def test_overwrite_replaces_the_earlier_run_as_a_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_results: list[RunResult]
) -> None:
    out = tmp_path / "run"
    old_run(out)
    monkeypatch.setattr("geta.run.run_methods", lambda *_args, **_kwargs: tiny_results)
    result = runner.invoke(app, ["compress", "cnn-digits", "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    expected = {"report.json", "report.md", "layers.png", "curves.png", "model.safetensors", "model.onnx"}
    assert set(contents(out)) == expected
    assert "old report" not in (out / "report.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no staged or old folder is left beside it"
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {new_file_mode()}


@pytest.mark.parametrize("where", ["training", "writing"])
def test_ctrl_c_is_one_line_exit_130_and_leaves_every_folder_as_it_was(
    where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_results: list[RunResult]
) -> None:
    def interrupt(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    if where == "training":
        monkeypatch.setattr("geta.run.run_methods", interrupt)
    else:
        monkeypatch.setattr("geta.run.run_methods", lambda *_args, **_kwargs: tiny_results)
        monkeypatch.setattr("geta.run.artifacts.plot_curves", interrupt)  # after layers.png, before the model
    earlier, new = tmp_path / "earlier", tmp_path / "new" / "run"
    before = old_run(earlier)
    for out in (earlier, new):
        result = runner.invoke(app, ["compress", "cnn-digits", "--out", str(out), "--overwrite", "--quiet"])
        assert result.exit_code == 130, result.output
        assert result.output == f"interrupted: {out} left as it was\n"
    assert contents(earlier) == before
    assert [p.name for p in tmp_path.iterdir()] == ["earlier"], "no partial, staged or parent folder is left"


def test_compress_runs_and_ends_by_printing_where_the_report_is(tmp_path: Path) -> None:
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    result = runner.invoke(app, ["compress", "cnn-digits", *TINY, "--sparsity", "0.25", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # the recipe's one thread is given back
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("report: ") and str(out / "report.md") in last
    report = json.loads((out / "report.json").read_text())
    assert report["group_sparsity"] == 0.25 and report["settings"]["sparsity"] == 0.25
    rows = report["latency"]["batches"]
    assert [row["batch"] for row in rows] == [1, 64] and all(row["dense_ms"] > 0 < row["artifact_ms"] for row in rows)
    markdown = (out / "report.md").read_text()
    assert markdown.count(" than the dense model, measured.") == 2 and "## Latency" in markdown
    artifacts = {"report.md", "layers.png", "curves.png", "model.safetensors", "model.onnx"}
    assert artifacts <= {p.name for p in out.iterdir()}
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {new_file_mode()}, "every artifact has one mode"
