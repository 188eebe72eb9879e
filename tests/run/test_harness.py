"""The harness end to end on a tiny budget of the cnn-digits recipe: GETA and every baseline from one
dense model, their metrics against the dense float model, and every artifact written."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image
from rich.console import Console

import geta.export
from geta.data.split import select
from geta.errors import ConfigError, SavedModelError
from geta.export.packed import new_file_mode
from geta.recipes import get_recipe
from geta.run import (
    METHODS,
    Display,
    RunResult,
    Settings,
    run_baseline,
    run_methods,
    run_recipe,
    train_dense,
)
from geta.run.artifacts import write_comparison, write_run
from geta.run.budget import decay_start
from geta.train import logits

TINY = Settings(dense_epochs=1, epochs=2, limit_batches=10, seed=0)
REPORT_KEYS = {"accuracy_dense", "accuracy", "rel_bops", "group_sparsity", "params", "size_bits", "layers",
               "wall_s", "settings", "curves", "stages", "latency"}


def measured(ratio: float) -> str:
    """How report.md words a measured dense / compressed latency ratio."""
    words = f"{ratio:.1f} times faster" if ratio >= 1 else f"{1 / ratio:.1f} times slower"
    return words + " than the dense model, measured"


@pytest.fixture(scope="module")
def results() -> dict[str, RunResult]:
    return {result.method: result for result in run_methods("cnn-digits", TINY, list(METHODS))}


def test_every_method_starts_from_the_same_dense_model_with_the_same_budget(results: dict[str, RunResult]) -> None:
    assert set(results) == {"geta", "dense", "prune-then-ptq-8bit", "prune-then-ptq-4bit", "quantize-only"}
    assert len({r.accuracy_dense for r in results.values()}) == 1
    assert len({r.wall_s_dense for r in results.values()}) == 1
    for result in results.values():
        assert result.settings["dense_steps"] == 10 and result.settings["method_steps"] == 20
        assert result.curves[0].stage == "dense" and result.curves[-1].step == 30
        training = [p.step for p in result.curves if p.stage != "ptq"]
        assert training == sorted(set(training))
        assert result.wall_s > result.wall_s_dense > 0
        assert 0 <= result.accuracy <= 1


def test_geta_prunes_exactly_and_its_rel_bops_are_against_the_dense_float_model(results: dict[str, RunResult]) -> None:
    result = results["geta"]
    assert result.group_sparsity == 0.5
    assert result.params < result.params_dense and result.macs < result.macs_dense
    assert result.rel_bops == pytest.approx(result.report.bops / (result.macs_dense * 32 * 32))
    for row in result.layers:
        assert 4 <= row["weight_bits"] <= 8 and 4 <= row["act_bits"] <= 8
        assert row["out_width"] <= row["dense_width"]
    # every layer of cnn-digits is quantized: at most 8 x 8 bits on the compact MACs
    assert result.rel_bops <= result.macs / result.macs_dense * 64 / 1024 + 1e-12


def test_baselines(results: dict[str, RunResult]) -> None:
    dense = results["dense"]
    assert dense.rel_bops == 1.0 and dense.params == dense.params_dense and dense.group_sparsity == 0.0
    ptq8, ptq4 = results["prune-then-ptq-8bit"], results["prune-then-ptq-4bit"]
    assert ptq8.group_sparsity == ptq4.group_sparsity == 0.5 and ptq8.macs == ptq4.macs < ptq8.macs_dense
    assert ptq8.rel_bops == pytest.approx(ptq8.macs / ptq8.macs_dense * 8 * 8 / 1024)
    assert ptq4.rel_bops == pytest.approx(ptq4.macs / ptq4.macs_dense * 4 * 4 / 1024)
    assert ptq4.curves[-1].stage == "ptq" and ptq4.curves[-1].rel_bops == ptq4.rel_bops
    quantized = results["quantize-only"]
    assert quantized.group_sparsity == 0.0 and quantized.macs == quantized.macs_dense
    assert all(4 <= row["weight_bits"] <= 8 for row in quantized.layers)


def test_every_artifact_is_written_and_the_saved_model_runs(results: dict[str, RunResult], tmp_path: Path) -> None:
    result = results["geta"]
    paths = write_run(result, tmp_path / "geta")
    data = json.loads(paths["report_json"].read_text())
    assert set(data) >= REPORT_KEYS
    assert data["settings"]["sparsity"] == 0.5 and data["settings"]["weight_bits"] == [4, 8]
    assert {"name", "weight_bits", "act_bits", "out_width", "dense_width"} <= set(data["layers"][0])
    for name in ("layers_plot", "curves_plot"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(paths[name]) as image:
            image.verify()
    assert "| test accuracy |" in paths["report_md"].read_text()
    latency = data["latency"]
    assert latency["not_measured"] is None and latency["threads"] == 1
    assert [row["batch"] for row in latency["batches"]] == [1, 64]  # cnn-digits' batch size
    for row in latency["batches"]:
        assert row["dense_ms"] > 0 and row["artifact_ms"] > 0
        assert row["ratio"] == pytest.approx(row["dense_ms"] / row["artifact_ms"])
        expected = f"At batch {row['batch']} the compressed model is {measured(row['ratio'])}."
        assert expected in paths["report_md"].read_text()
    loaded = geta.export.load(paths["safetensors"]).eval()
    x = select(result.example, slice(0, 2))
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, x), logits(result.model, x))
    assert paths["onnx"].stat().st_size > 0
    # safetensors too (it writes 0o600)
    assert {path.stat().st_mode & 0o777 for path in paths.values()} == {new_file_mode()}
    comparison = write_comparison(list(results.values()), tmp_path)
    assert "prune-then-ptq-4bit" in comparison["comparison_md"].read_text()


def test_compression_leaves_the_dense_model_untouched() -> None:
    dense = train_dense("cnn-digits", Settings(dense_epochs=1, epochs=2, limit_batches=10))
    before = {k: v.clone() for k, v in dense.model.state_dict().items()}
    run_recipe("cnn-digits", dense=dense)
    after = dense.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_plain_progress_shows_stage_loss_sparsity_bits_and_time_left() -> None:
    buffer = io.StringIO()
    display = Display(mode="plain", console=Console(file=buffer, width=200))
    with display:
        run_recipe("cnn-digits", Settings(dense_epochs=1, epochs=2, limit_batches=10), display=display)
    text = buffer.getvalue()
    for stage in ("dense", "warmup", "projection", "joint", "cooldown"):
        assert f"\n{stage} " in text or text.startswith(stage)
    assert "loss" in text and "sparsity" in text and "w bits" in text and "rel. BOPs" in text and "left ~" in text


def test_a_budget_too_short_for_the_stages_fails_before_training() -> None:
    with pytest.raises(ConfigError, match=r"2 steps is too short.*raise the epochs"):
        train_dense("cnn-digits", Settings(dense_epochs=50, epochs=1, limit_batches=2))


@pytest.mark.slow
def test_the_default_cnn_digits_recipe_compresses_near_dense_accuracy() -> None:
    result = run_recipe("cnn-digits")
    assert result.group_sparsity == 0.5 and result.rel_bops < 0.02
    assert result.accuracy >= result.accuracy_dense - 0.02, (result.accuracy, result.accuracy_dense)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["resnet20-fmnist", "vgg7-fmnist", "minilm-bbc"])
def test_the_larger_recipes_run_end_to_end_on_a_few_batches(recipe: str, tmp_path: Path) -> None:
    result = run_recipe(recipe, Settings(dense_epochs=0, epochs=1, limit_batches=20))
    assert 0 < result.rel_bops < 1 and 0 < result.group_sparsity < 1 and result.params < result.params_dense
    paths = write_run(result, tmp_path)
    data = json.loads(paths["report_json"].read_text())
    assert data["recipe"] == recipe and "export_error" not in data
    assert paths["safetensors"].is_file() and paths["onnx"].is_file()


def test_one_dense_model_serves_runs_with_other_method_settings() -> None:
    dense = train_dense("cnn-digits", Settings(dense_epochs=1, epochs=2, limit_batches=10))
    quarter = run_recipe("cnn-digits", Settings(dense_epochs=1, epochs=2, limit_batches=10, sparsity=0.25,
                                                compress_lr=0.01, qasso={"lr_quant": 1e-4}), dense=dense)
    assert quarter.group_sparsity == 0.25 and quarter.settings["sparsity"] == 0.25
    assert quarter.settings["compress_lr"] == 0.01 and quarter.settings["qasso"] == {"lr_quant": 1e-4}
    with pytest.raises(ConfigError, match="trained with seed=0"):
        run_recipe("cnn-digits", Settings(dense_epochs=1, epochs=2, limit_batches=10, seed=1), dense=dense)
    with pytest.raises(ConfigError, match="comes from the recipe 'cnn-digits', not 'resnet20-fmnist'"):
        run_recipe("resnet20-fmnist", dense=dense)


def test_a_model_geta_export_cannot_save_is_written_as_a_state_dict(
    results: dict[str, RunResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise SavedModelError("the root module is a Custom, which is not allow-listed for saving")

    monkeypatch.setattr("geta.run.artifacts.write_artifacts", refuse)
    paths = write_run(results["geta"], tmp_path)
    data = json.loads(paths["report_json"].read_text())
    assert "not allow-listed" in data["export_error"] and data["files"]["state_dict"] == "model_state_dict.safetensors"
    assert safetensors.torch.load_file(paths["state_dict"]).keys() == results["geta"].model.state_dict().keys()
    assert "not allow-listed" in paths["report_md"].read_text()
    assert data["latency"]["batches"] == [] and "not allow-listed" in data["latency"]["not_measured"]
    latency = paths["report_md"].read_text().split("## Latency")[1].split("## Layers")[0]
    assert latency.strip() == f"Not measured: no ONNX artifact to time: {data['export_error']}."


def test_skip_chooses_the_full_precision_layers_of_every_method() -> None:
    dense = train_dense("cnn-digits", TINY)

    def full_precision(result: RunResult) -> list[str]:
        return [row["name"] for row in result.layers if row["full_precision_reason"]]

    default = run_recipe("cnn-digits", TINY, dense=dense)  # the recipe quantizes every layer
    assert default.settings["skip"] == [] and full_precision(default) == []
    names = [row["name"] for row in default.layers]
    both = replace(TINY, skip=("first", "last"))
    results = [run_recipe("cnn-digits", both, dense=dense),
               *run_baseline("cnn-digits", both, "prune-then-ptq", dense=dense)]
    for result in results:
        assert result.settings["skip"] == ["<first>", "<last>"]
        assert full_precision(result) == [names[0], names[-1]], result.method
        assert all(row["weight_bits"] == 32 for row in result.layers if row["name"] in (names[0], names[-1]))
    assert full_precision(run_recipe("cnn-digits", replace(TINY, skip=("last",)), dense=dense)) == [names[-1]]
    with pytest.raises(ConfigError, match="skip"):
        replace(TINY, skip=("",)).resolve(dense.recipe)


def test_bad_saliency_weights_fail_before_any_training() -> None:
    with pytest.raises(ConfigError, match="non-negative"):
        replace(TINY, qasso={"saliency_weights": {"magnitude": 0.2, "macs": -1.0}}).resolve(get_recipe("cnn-digits"))


def test_stage_shares_move_the_cooldown_and_every_method_decays_from_there() -> None:
    dense = train_dense("cnn-digits", TINY)
    shares = replace(TINY, qasso={"stage_shares": (0.0, 0.2, 0.3)})  # 20 steps: 4 x 1 projection, 5 x 1 joint
    result = run_recipe("cnn-digits", shares, dense=dense)
    stages = {p.stage: p.step for p in reversed(result.curves)}  # each stage's first step after 10 dense ones
    assert "warmup" not in stages and stages["projection"] == 11 and stages["cooldown"] == 20
    assert result.settings["qasso"] == {"stage_shares": (0.0, 0.2, 0.3)}
    recipe = get_recipe("cnn-digits")  # the baselines' learning rate decays from the same step
    assert decay_start(shares.resolve(recipe), 20, recipe.quantize) == 9
    assert decay_start(TINY.resolve(recipe), 20, recipe.quantize) == 11
    with pytest.raises(ConfigError, match="stage_shares"):
        replace(TINY, qasso={"stage_shares": (0.5, 0.3, 0.3)}).resolve(recipe)


def test_a_rel_bops_budget_is_geta_s_target_and_the_report_meets_it(tmp_path: Path) -> None:
    """Settings(target_rel_bops=R): GETA's config carries the budget (the group sparsity is an outcome), the
    compact model's rel. BOPs end at most R and within 2% below it, and report.json and report.md say so,
    with the final plan."""
    result = run_recipe("cnn-digits", replace(TINY, target_rel_bops=0.02))
    assert 0.98 * 0.02 <= result.rel_bops <= 0.02
    assert result.settings["qasso_config"]["target_rel_bops"] == 0.02
    assert result.settings["qasso_config"]["target_sparsity"] is None
    plan = result.settings["allocation"]
    assert plan["final"] and plan["status"] == "ok" and plan["exact"] == pytest.approx(result.rel_bops)
    planned_bits = {row["name"]: row["weight_bits"] for row in result.layers if row["name"] in plan["weight_bits"]}
    assert planned_bits == {name: float(bits) for name, bits in plan["weight_bits"].items()}
    text = write_run(result, tmp_path)["report_md"].read_text()
    assert "Target: rel. BOPs at most 2.000% (group sparsity and bits are outcomes)" in text
    assert "within 2% below the budget" in text


def test_under_a_budget_prune_then_ptq_removes_the_fewest_groups_that_meet_it_at_each_bit_width() -> None:
    """Settings(target_rel_bops=R): each PTQ bit width is compared at the budget, not at the recipe's
    sparsity: its rel. BOPs end at most R, with more groups removed at 8 bits than at 4. (Unpruned, every
    layer at 4 bits is at 1.5625% and at 8 bits at 6.25%, so both have to prune to meet 1%.)"""
    budget = replace(TINY, target_rel_bops=0.01)
    dense = train_dense("cnn-digits", budget)
    ptq = {r.settings["ptq_bits"]: r for r in run_baseline("cnn-digits", budget, "prune-then-ptq", dense=dense)}
    assert set(ptq) == {8, 4}
    for result in ptq.values():
        assert 0.5 * 0.01 < result.rel_bops <= 0.01
    assert ptq[8].group_sparsity > ptq[4].group_sparsity > 0  # 8 bits cost more per MAC: more groups must go


def test_a_budget_no_removal_meets_leaves_that_bit_width_out() -> None:
    budget = replace(TINY, target_rel_bops=1e-6)
    results = run_baseline("cnn-digits", budget, "prune-then-ptq", dense=train_dense("cnn-digits", budget))
    assert results == []


def test_distill_changes_the_compressing_methods_loss_but_never_the_dense_reference() -> None:
    dense = train_dense("cnn-digits", TINY)
    distilled = replace(TINY, distill=0.5)

    def losses(method: str, settings: Settings) -> list[float]:
        [result] = run_baseline("cnn-digits", settings, method, dense=dense) if method != "geta" else [
            run_recipe("cnn-digits", settings, dense=dense)]
        assert result.settings["distill"] == settings.resolve(get_recipe("cnn-digits")).distill
        return [p.loss for p in result.curves if p.step > dense.steps]

    assert losses("dense", distilled) == losses("dense", TINY)
    assert losses("geta", distilled) != losses("geta", TINY)
    with pytest.raises(ConfigError, match=r"distill=1\.5"):
        replace(TINY, distill=1.5).resolve(get_recipe("cnn-digits"))
    with pytest.raises(ConfigError, match="distill_temperature=0"):
        replace(TINY, distill=0.5, distill_temperature=0.0).resolve(get_recipe("cnn-digits"))
