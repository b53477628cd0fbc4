"""Every emverse.run(...) example in docs/python-api.md names a ready recipe and valid overrides."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from emverse.ready_recipes import find_recipe
from emverse.recipe import apply_values, read_toml, validate_recipe

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _run_calls():
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "run" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "emverse"):
                overrides = {}
                for kw in node.keywords:
                    if kw.arg is None:
                        overrides.update(ast.literal_eval(kw.value))
                yield ast.literal_eval(node.args[0]), overrides


def test_every_documented_example_validates():
    calls = list(_run_calls())
    assert len(calls) >= 9
    for name, overrides in calls:
        raw = apply_values(read_toml(find_recipe(name)), overrides)
        # files are not checked: the mep pipeline reads what its earlier steps write
        recipe = validate_recipe(raw, source=find_recipe(name), check_files=False)
        assert recipe.name == name
