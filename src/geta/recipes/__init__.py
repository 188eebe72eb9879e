"""Recipes for ``geta compress``: a registry of model + data + settings (see ``recipe.py``)."""

from geta.recipes import builtin as _builtin  # noqa: F401  (registers the shipped recipes)
from geta.recipes.recipe import RECIPES, Recipe, get_recipe, register_recipe

__all__ = ["RECIPES", "Recipe", "get_recipe", "register_recipe"]
