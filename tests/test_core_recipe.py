"""Strict recipe validation and the CLI's bad-input behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from emverse.errors import EmverseError, RecipeError
from emverse.recipe import apply_overrides, load_recipe, validate_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "recipes" / "example-linear-gaussian.toml"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emverse.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_example_recipe_validates_and_fills_defaults():
    recipe = load_recipe(EXAMPLE)
    resolved = recipe.to_dict()
    assert resolved["forward_model"]["matrix_seed"] == 0  # default filled in
    assert resolved["options"] == {"n_observations": 8, "n_samples": 500, "truth": [], "n_ppc": 3,
                                   "observation": "", "observation_units": "counts",
                                   "observation_reciprocal_pixel_size": 0.0}
    assert resolved["metrics"] == [{"type": "core.rmse"}]


FOUR_MISTAKES = """
schema_version = 1
name = "broken"
seed = 1
task = "infer"
[options]
n_observations = "many"      # wrong value type
[forward_model]
type = "example.linear_gausian"   # misspelled type
[prior]
type = "example.gaussian"
dim = 4
stdd = 2.0                    # unknown key
[[metrics]]
type = "core.rmse"
"""


def test_four_mistakes_reported_at_once(tmp_path):
    text = FOUR_MISTAKES.replace("dim = 4", "dim = -3")  # out-of-range value
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    problems = info.value.problems
    joined = "\n".join(problems)
    assert len(problems) == 4, joined
    assert "$.options.n_observations" in joined and "'many'" in joined
    assert "$.forward_model.type" in joined and "did you mean 'example.linear_gaussian'" in joined
    assert "$.prior.stdd" in joined and "did you mean 'std'" in joined
    assert "$.prior.dim" in joined and "> 0" in joined


def test_cli_reports_all_and_creates_no_run_dir(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(FOUR_MISTAKES.replace("dim = 4", "dim = -3"))
    out = tmp_path / "run"
    result = cli("run", str(path), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.count("  - $.") == 4
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_int_field_rejects_float_and_bool(tmp_path):
    raw = load_recipe(EXAMPLE).to_dict()
    raw["forward_model"]["dim_x"] = 2.5
    raw["options"]["n_samples"] = True
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    assert len(info.value.problems) == 2


def test_tuple_length_checked(emverse_plugin, tmp_path):
    import attrs
    from emverse.components import Component
    from emverse.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def emverse_components(self):
            yield Component("metric", "test.tuple_metric", "emverse.builtin.metrics:RMSE",
                            f"{__name__}:TupleParams")

    emverse_plugin(Plugin())
    raw = load_recipe(EXAMPLE).to_dict()
    raw["metrics"] = [{"type": "test.tuple_metric", "axis": [0, 0]}]
    with pytest.raises(RecipeError, match=r"\$\.metrics\[0\]\.axis.*Not enough values"):
        validate_recipe(raw)
    raw["metrics"] = [{"type": "test.tuple_metric", "axis": [0, 1, 0]}]
    recipe = validate_recipe(raw)
    assert recipe.components["metrics"][0].params.axis == (0, 1, 0)
    assert attrs.has(type(recipe.components["metrics"][0].params))


import attrs  # noqa: E402


@attrs.frozen
class TupleParams:
    axis: tuple[int, int, int] = (0, 0, 1)


@attrs.frozen
class CheckpointParams:
    from emverse.params import path_field as _pf

    checkpoint: str = _pf(must_exist=True)


def test_overrides_apply_and_unknown_keys_fail():
    raw = {"a": {"b": 1}, "m": [{"type": "x"}]}
    assert apply_overrides(raw, ["a.b=5", "a.c=\"s\"", "m.0.type=y"]) == {
        "a": {"b": 5, "c": "s"}, "m": [{"type": "y"}]}
    with pytest.raises(EmverseError, match="no table 'q'"):
        apply_overrides(raw, ["q.r=1"])
    with pytest.raises(EmverseError, match="key.path=value"):
        apply_overrides(raw, ["novalue"])


def test_set_for_unknown_key_is_an_error(tmp_path):
    result = cli("recipe", "validate", str(EXAMPLE), "--set", "prior.stdev=2")
    assert result.returncode == 2
    assert "$.prior.stdev" in result.stderr and "did you mean 'std'" in result.stderr
    result = cli("recipe", "validate", str(EXAMPLE), "--set", "priors.std=2")
    assert result.returncode == 2 and "no table 'priors'" in result.stderr
    ok = cli("recipe", "validate", str(EXAMPLE), "--set", "prior.std=2.0")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("schema_version = 1\nname = [", "not valid TOML"),
        ('schema_version = 1\nname = "x"\nseed = 1\ntask = "infre"\n', "did you mean 'infer'"),
        ('schema_version = 1\nname = "x"\nseed = 1\ntask = "infer"\n[prior]\ntype = "example.gaussian"\n',
         "$.forward_model: is missing; task 'infer' needs a [forward_model] table"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, content, expected):
    path = tmp_path / "r.toml"
    if content is not None:
        path.write_text(content)
    result = cli("recipe", "validate", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_path_is_reported(emverse_plugin, tmp_path):
    from emverse.components import Component
    from emverse.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def emverse_components(self):
            yield Component("prior", "test.from_checkpoint", "emverse_example.prior:GaussianPrior",
                            f"{__name__}:CheckpointParams")

    emverse_plugin(Plugin())
    raw = load_recipe(EXAMPLE).to_dict()
    raw["prior"] = {"type": "test.from_checkpoint", "checkpoint": "nowhere/model.safetensors"}
    with pytest.raises(RecipeError, match=r"\$\.prior\.checkpoint: 'nowhere/model.safetensors' \(at .*\) does not exist"):
        validate_recipe(raw, source=tmp_path / "r.toml")
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "model.safetensors").write_bytes(b"")
    assert validate_recipe(raw, source=tmp_path / "r.toml").components["prior"].params.checkpoint


def test_debug_shows_traceback(tmp_path):
    result = cli("--debug", "recipe", "validate", str(tmp_path / "missing.toml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_recipe_show_and_list():
    result = cli("recipe", "show", "example-linear-gaussian", cwd=REPO)
    assert result.returncode == 0 and 'type = "example.linear_gaussian"' in result.stdout
    result = cli("recipe", "show", "example-linear-gausian", cwd=REPO)
    assert result.returncode == 2 and "did you mean 'example-linear-gaussian'" in result.stderr
