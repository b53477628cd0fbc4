"""Plugin discovery: entry points, failures, collisions, switches, and no torch on the light paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from emverse.components import Component
from emverse.errors import EmverseError, PluginError
from emverse.hookspecs import hookimpl
from emverse.registry import Registry, get_registry

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "emverse.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def test_core_and_example_are_discovered():
    registry = get_registry()
    assert "infer" in registry.names("task")
    assert "example.linear_gaussian" in registry.names("forward_model")
    assert registry.get("forward_model", "example.linear_gaussian").distribution == "emverse-example"


def test_fixture_registers_and_removes(emverse_plugin):
    class Plugin:
        @hookimpl
        def emverse_components(self):
            yield Component("metric", "test.fixture_metric", "emverse.builtin.metrics:RMSE")

    info = emverse_plugin(Plugin(), name="fixture-test")
    assert info.ok and "metric:test.fixture_metric" in info.components
    assert "test.fixture_metric" in get_registry().names("metric")


def test_fixture_cleanup_happened():
    assert "test.fixture_metric" not in get_registry().names("metric")


def test_collision_names_both_distributions():
    registry = Registry(strict=False)

    class A:
        @hookimpl
        def emverse_components(self):
            yield Component("metric", "dup.metric", "emverse.builtin.metrics:RMSE")

    class B:
        @hookimpl
        def emverse_components(self):
            yield Component("metric", "dup.metric", "emverse.builtin.metrics:RMSE")
            yield Component("metric", "b.only", "emverse.builtin.metrics:RMSE")

    registry.register(A(), name="a", distribution="dist-a")
    info = registry.register(B(), name="b", distribution="dist-b")  # no crash
    assert info.ok and "b.only" in registry.names("metric")
    assert "dup.metric" not in registry.names("metric")  # only the clashing component is off
    with pytest.raises(PluginError, match="both 'dist-a' and 'dist-b'.*EMVERSE_DISABLE_PLUGINS=b"):
        registry.get("metric", "dup.metric")
    registry.unregister("b")  # the clash is over: a's offer is used again
    assert registry.get("metric", "dup.metric").distribution == "dist-a"
    with pytest.raises(PluginError, match="both"):
        strict = Registry(strict=True)
        strict.register(A(), name="a", distribution="dist-a")
        strict.register(B(), name="b", distribution="dist-b")


def test_missing_component_names_the_distribution_to_install():
    registry = Registry(strict=False)
    with pytest.raises(EmverseError, match="'cdi.pipeline' is provided by emverse-cdi, which is not "
                                           r"installed; install it \(pip install emverse-cdi\)"):
        registry.get("task", "cdi.pipeline")

    class Broken:
        @hookimpl
        def emverse_components(self):
            raise ImportError("No module named 'timm'")

    registry.register(Broken(), name="cdi", distribution="emverse-cdi")
    with pytest.raises(EmverseError, match="provided by emverse-cdi, which failed to load: "
                                           "ImportError: No module named 'timm'"):
        registry.get("task", "cdi.pipeline")
    with pytest.raises(EmverseError, match="unknown task type 'thirdparty.infer'.*failed to load: emverse-cdi"):
        registry.get("task", "thirdparty.infer")  # unknown prefix: the failure is still named


def test_validate_says_which_distribution_provides_a_component(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('schema_version = 1\nname = "x"\nseed = 1\ntask = "cdi.pipeline"\n')
    result = cli("recipe", "validate", str(recipe), env={"EMVERSE_DISABLE_PLUGINS": "cdi"})
    assert result.returncode == 2
    assert "$.task: task 'cdi.pipeline' is provided by emverse-cdi, which is disabled" in result.stderr


def test_bad_record_is_recorded_not_fatal():
    registry = Registry(strict=False)

    class Bad:
        @hookimpl
        def emverse_components(self):
            yield {"kind": "metric"}

    info = registry.register(Bad(), name="bad", distribution="dist-bad")
    assert info.error is not None and "Component records" in info.error
    strict = Registry(strict=True)
    with pytest.raises(PluginError, match="dist-bad"):
        strict.register(Bad(), name="bad", distribution="dist-bad")


def test_plugins_and_validate_do_not_import_torch():
    code = textwrap.dedent(f"""
        import sys
        from emverse.cli import main
        assert main(["plugins"]) == 0
        assert main(["plugins", "--json"]) == 0
        assert main(["recipe", "validate", r"{REPO / 'recipes' / 'example-linear-gaussian.toml'}"]) == 0
        heavy = [m for m in ("torch", "numpy.linalg", "matplotlib", "dask") if m in sys.modules]
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout


def _write_plugin(root: Path, dist: str, pkg: str, hooks: str) -> Path:
    src = root / dist
    (src / pkg).mkdir(parents=True)
    (src / pkg / "__init__.py").write_text("")
    (src / pkg / "hooks.py").write_text(textwrap.dedent(hooks))
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "0.0.1"
        [project.entry-points.emverse]
        {pkg} = "{pkg}.hooks"
        [tool.setuptools]
        packages = ["{pkg}"]
    """))
    return src


THIRD_PARTY_HOOKS = """
    from emverse.components import Component
    from emverse.hookspecs import hookimpl

    @hookimpl
    def emverse_components():
        yield Component("forward_model", "thirdparty.scaled", "thirdparty_em.model:Scaled",
                        "thirdparty_em.model:ScaledParams", "y = factor * x")
"""

THIRD_PARTY_MODEL = """
    import attrs, torch
    from emverse.interfaces import ForwardModel
    from emverse.noise import GaussianNoise
    from emverse.parameter_space import Parameter, ParameterSpace

    @attrs.frozen
    class ScaledParams:
        factor: float = 3.0

    class Scaled(ForwardModel):
        def __init__(self, factor=3.0):
            super().__init__(noise=GaussianNoise(0.1))
            self.factor = factor
            self.parameter_space = ParameterSpace([Parameter("a", "1", -1, 1), Parameter("b", "1", -1, 1)])

        def forward(self, x):
            return self.factor * x
"""


@pytest.mark.timeout(600)
def test_out_of_tree_plugin_install_run_uninstall(tmp_path):
    """A plugin package made outside the repo is discovered, used by a recipe, and removed."""
    good = _write_plugin(tmp_path, "emverse-thirdparty-test", "thirdparty_em", THIRD_PARTY_HOOKS)
    (good / "thirdparty_em" / "model.py").write_text(textwrap.dedent(THIRD_PARTY_MODEL))
    broken = _write_plugin(tmp_path, "emverse-broken-test", "broken_em",
                           "raise ImportError('this plugin is broken on purpose')\n")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, str(good), str(broken)], check=True, timeout=300)
    try:
        listing = cli("plugins", "--json")
        assert listing.returncode == 0, listing.stderr
        plugins = {p["name"]: p for p in json.loads(listing.stdout)}
        assert plugins["thirdparty_em"]["status"] == "ok"
        assert "forward_model:thirdparty.scaled" in plugins["thirdparty_em"]["components"]
        assert plugins["broken_em"]["status"] == "failed"
        assert "broken on purpose" in plugins["broken_em"]["error"]
        assert plugins["example"]["status"] == "ok"  # the others still work

        strict = cli("plugins", env={"EMVERSE_STRICT_PLUGINS": "1"})
        assert strict.returncode != 0 and "failed to load" in strict.stderr
        disabled = cli("plugins", "--json", env={"EMVERSE_DISABLE_PLUGINS": "broken_em"})
        assert json.loads(disabled.stdout)[0] is not None
        assert {p["name"]: p["status"] for p in json.loads(disabled.stdout)}["broken_em"] == "disabled"

        recipe = tmp_path / "third.toml"
        recipe.write_text(textwrap.dedent("""
            schema_version = 1
            name = "third-party"
            seed = 3
            task = "refine"
            dtype = "float64"
            [forward_model]
            type = "thirdparty.scaled"
            factor = 2.0
            [refiner]
            type = "core.lbfgs"
            steps = 20
        """))
        out = tmp_path / "run"
        run = cli("run", str(recipe), "--out", str(out), "--no-progress")
        assert run.returncode == 0, run.stderr
        metrics = json.loads((out / "metrics.json").read_text())
        # the observation has noise sigma 0.1 on y = 2x: the fit lands within noise of the truth
        assert metrics["refined_rmse"] < 0.1 < metrics["start_rmse"]
        _third_party_in_every_workflow(tmp_path, recipe)
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y",
                        "emverse-thirdparty-test", "emverse-broken-test"], check=True, timeout=300)
    after = cli("plugins", "--json")
    names = {p["name"] for p in json.loads(after.stdout)}
    assert "thirdparty_em" not in names and "broken_em" not in names


THIRD_PARTY_TRAIN = """
    schema_version = 1
    name = "third-party-prior"
    seed = 4
    task = "train"
    dtype = "float32"
    [options]
    steps = 400
    batch_size = 128
    learning_rate = 3e-3
    lr_decay = "cosine"
    ema_decay = 0.995
    validate_every = 0
    checkpoint_every = 0
    checkpoint_name = "model"
    [objective]
    type = "diffusion.denoising"
    [forward_model]
    type = "thirdparty.scaled"
    factor = 2.0
    [dataset]
    type = "diffusion.simulated"
    n_train = 4000
    n_validation = 0
    conditional = false
    [dataset.prior]
    type = "example.gaussian"
    dim = 2
    std = 0.6
    [prior]
    type = "diffusion.mlp"
    dim = 2
    hidden = 32
    depth = 2
"""

THIRD_PARTY_INFER = """
    schema_version = 1
    name = "third-party-infer"
    seed = 6
    task = "infer"
    dtype = "float32"
    [options]
    n_observations = 4
    n_samples = 64
    [forward_model]
    type = "thirdparty.scaled"
    factor = 2.0
    [prior]
    type = "diffusion.mlp"
    dim = 2
    hidden = 32
    depth = 2
    checkpoint = "CHECKPOINT"
    [sampler]
    type = "diffusion.ddpm"
    steps = 100
    [guidance]
    type = "diffusion.dps"
    [likelihood]
    type = "core.gaussian"
    sigma = 0.1
"""

THIRD_PARTY_EVALUATE = """
    schema_version = 1
    name = "third-party-evaluate"
    seed = 8
    task = "evaluate"
    dtype = "float32"
    [options]
    n_observations = 8
    n_boot = 500
    [forward_model]
    type = "thirdparty.scaled"
    factor = 2.0
    [likelihood]
    type = "core.gaussian"
    sigma = 0.1
    [[compare]]
    type = "core.refine"
    label = "lbfgs"
    [compare.refiner]
    type = "core.lbfgs"
    steps = 20
    [[compare]]
    type = "core.infer"
    label = "diffusion_dps"
    n_samples = 32
    [compare.prior]
    type = "diffusion.mlp"
    dim = 2
    hidden = 32
    depth = 2
    checkpoint = "CHECKPOINT"
    [compare.sampler]
    type = "diffusion.ddpm"
    steps = 100
    [compare.guidance]
    type = "diffusion.dps"
"""


def _third_party_in_every_workflow(tmp_path: Path, refine_recipe: Path) -> None:
    """The out-of-tree forward model, with no other code, in refine (Adam and L-BFGS), in infer
    with a trained diffusion prior + DPS, and in evaluate comparing the two with a bootstrap."""
    adam = tmp_path / "run-adam"
    run = cli("run", str(refine_recipe), "--out", str(adam), "--no-progress", "--set",
              "refiner.type=core.adam", "--set", "refiner.steps=300", "--set", "refiner.lr=0.05")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((adam / "metrics.json").read_text())
    assert metrics["refined_rmse"] < 0.1 < metrics["start_rmse"]

    def write(name, text, **replace):
        path = tmp_path / f"{name}.toml"
        for key, value in replace.items():
            text = text.replace(key, value)
        path.write_text(textwrap.dedent(text))
        return path

    trained = tmp_path / "run-train"
    run = cli("run", str(write("train", THIRD_PARTY_TRAIN)), "--out", str(trained), "--no-progress")
    assert run.returncode == 0, run.stderr
    checkpoint = str(trained / "model.safetensors")
    inferred = tmp_path / "run-infer"
    run = cli("run", str(write("infer", THIRD_PARTY_INFER, CHECKPOINT=checkpoint)), "--out", str(inferred),
              "--no-progress")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((inferred / "metrics.json").read_text())
    # y = 2x + N(0, 0.1²): the likelihood pins x to ~0.05; prior draws alone scatter by ~0.6
    assert metrics["posterior_mean_rmse"] < 0.25, metrics
    evaluated = tmp_path / "run-evaluate"
    run = cli("run", str(write("evaluate", THIRD_PARTY_EVALUATE, CHECKPOINT=checkpoint)), "--out",
              str(evaluated), "--no-progress")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((evaluated / "metrics.json").read_text())
    low = metrics["paired.lbfgs_minus_diffusion_dps_low"]
    high = metrics["paired.lbfgs_minus_diffusion_dps_high"]
    assert low <= metrics["paired.lbfgs_minus_diffusion_dps"] <= high
    assert metrics["lbfgs.normalised_rmse"] < 0.1

def test_run_and_validate_accept_a_ready_recipe_name(tmp_path):
    from emverse.ready_recipes import find_recipe, recipe_path

    assert recipe_path("example-linear-gaussian") == find_recipe("example-linear-gaussian")
    result = cli("recipe", "validate", "example-linear-gaussian", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wrong = cli("run", "example-linear-gausian", cwd=tmp_path)
    assert wrong.returncode == 2 and "did you mean 'example-linear-gaussian'" in wrong.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_recipes_ship_in_the_wheel(tmp_path):
    """A non-editable install (wheel into a fresh prefix) lists and shows the ready recipes."""
    import shutil

    source = tmp_path / "source"  # build from a copy: an in-tree build would leave egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "framework" / "emverse", source / "framework" / "emverse",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "recipes", source / "recipes")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(source), "-w", str(tmp_path / "wheels")], check=True, timeout=300, cwd=tmp_path)
    wheel = next((tmp_path / "wheels").glob("emverse-*.whl"))
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", "--prefix", str(prefix),
                    str(wheel)], check=True, timeout=300)
    site = next(prefix.glob("lib/python*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("EMVERSE_RECIPES", None)
    code = "import emverse, sys; from emverse.cli import main; print(emverse.__file__); sys.exit(main(['recipe', 'list']))"
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith(str(site))  # the installed copy, not the checkout
    assert "example-linear-gaussian" in listed.stdout.splitlines()
