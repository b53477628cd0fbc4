"""Every ready recipe in recipes/ validates against the installed plugins."""

from pathlib import Path

import pytest
from emverse.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_there_are_ready_recipes():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name and recipe.task.type
