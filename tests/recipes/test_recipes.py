"""The recipe registry and the settings a run resolves from a recipe."""

from __future__ import annotations

import pytest

from geta.errors import ConfigError
from geta.recipes import RECIPES, get_recipe
from geta.run import Settings


def test_the_issue_recipes_are_registered_with_a_description_and_a_run_time() -> None:
    assert {"cnn-digits", "resnet20-fmnist", "vgg7-fmnist", "minilm-bbc"} <= set(RECIPES)
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.description and recipe.expected_time
        assert recipe.quantize in ("weights", "weights+activations")
        assert 0 <= recipe.sparsity < 1 and recipe.epochs >= 1 and recipe.batch_size >= 1


def test_an_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'resnet99'.*cnn-digits.*minilm-bbc"):
        get_recipe("resnet99")


def test_settings_take_the_recipe_defaults_where_unset() -> None:
    recipe = get_recipe("cnn-digits")
    resolved = Settings(epochs=3, weight_bits=(2, 6)).resolve(recipe)
    assert resolved.epochs == 3 and resolved.weight_bits == (2, 6)
    assert resolved.dense_epochs == recipe.dense_epochs and resolved.sparsity == recipe.sparsity
    assert resolved.act_bits == recipe.act_bits
    assert resolved.to_dict()["weight_bits"] == [2, 6]
    assert resolved.lr == recipe.lr and resolved.compress_lr == recipe.compress_lr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(sparsity=1.0), "sparsity=1.0"),
        (Settings(weight_bits=(8, 4)), "inverted"),
        (Settings(act_bits=(1, 8)), r"act_bits\[0\]=1"),
        (Settings(epochs=0), "at least 1 epoch"),
        (Settings(limit_batches=0), "limit_batches"),
        (Settings(compress_lr=0.0), "learning rates must be positive"),
        (Settings(qasso={"target_sparsity": 0.1}), "may not set"),
    ],
)
def test_bad_settings_are_rejected_before_any_training(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.resolve(get_recipe("cnn-digits"))
