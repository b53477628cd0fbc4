"""Synthetic data, refiners, orientation refinement and the ed3d.refine recipe end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from emverse_ed3d.metrics import asu_rmsd
from emverse_ed3d.problem import build_model
from emverse_ed3d.refiners import Ed3dAdam, Ed3dLBFGS, refine_orientations, small_rotation
from emverse_ed3d.synthetic import make_synthetic, thickness_profile
from emverse_ed3d.thickness import ProfileThickness

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_synthetic(quartz_exp, quartz_structure):
    geometry = quartz_exp.select_frames(range(0, 99, 9))
    data, t_true = make_synthetic(geometry, quartz_structure, profile="constant", mean_angstrom=350.0,
                                  amplitude_angstrom=0.0, dynamic_range=1e6, g_max=1.2, n_tilts=3,
                                  generator=torch.Generator().manual_seed(5), rng=np.random.default_rng(5))
    return data, t_true


def test_profiles():
    theta = np.linspace(-0.8, 0.8, 40)
    rng = np.random.default_rng(0)
    sin = thickness_profile("sinusoidal", theta, mean_angstrom=400, amplitude_angstrom=100, rng=rng)
    assert sin.max() == pytest.approx(500, abs=1) and sin.min() == pytest.approx(300, abs=1)
    const = thickness_profile("constant", theta, mean_angstrom=400, amplitude_angstrom=100, rng=rng)
    assert np.all(const == 400)
    smooth = thickness_profile("smooth_random", theta, mean_angstrom=400, amplitude_angstrom=100, rng=rng)
    assert np.abs(np.diff(smooth)).max() < 40 and smooth.std() > 5
    from emverse.errors import EmverseError

    with pytest.raises(EmverseError, match="below 0"):
        thickness_profile("sinusoidal", theta, mean_angstrom=50, amplitude_angstrom=100, rng=rng)


def test_synthetic_data_follow_the_recipe(tiny_synthetic, quartz_exp, quartz_structure):
    data, t_true = tiny_synthetic
    assert data.n_reflections > 40 and np.allclose(t_true, 350.0)
    assert np.all(data.intensity >= 1) and np.allclose(data.sigma, np.sqrt(data.intensity))
    # brightest reflection ≈ the dynamic range (Poisson: within a few σ)
    assert abs(data.intensity.max() - 1e6) < 5e3
    # the same seed gives the same data; another seed other noise
    geometry = quartz_exp.select_frames(range(0, 99, 9))
    kwargs = dict(profile="constant", mean_angstrom=350.0, amplitude_angstrom=0.0, dynamic_range=1e6, g_max=1.2,
                  n_tilts=3)
    again, _ = make_synthetic(geometry, quartz_structure, generator=torch.Generator().manual_seed(5),
                              rng=np.random.default_rng(5), **kwargs)
    assert np.array_equal(again.intensity, data.intensity)
    other, _ = make_synthetic(geometry, quartz_structure, generator=torch.Generator().manual_seed(6),
                              rng=np.random.default_rng(6), **kwargs)
    assert not np.array_equal(other.intensity, data.intensity)
    # low dynamic range drops reflections below one count
    low, _ = make_synthetic(geometry, quartz_structure, generator=torch.Generator().manual_seed(5),
                            rng=np.random.default_rng(5), **{**kwargs, "dynamic_range": 1e2})
    assert low.n_reflections < data.n_reflections and low.skipped["below_one_count"] > 0


def _model(data, structure, t_true, **kw):
    m = build_model(data, structure, thickness_model="single", t_init=float(np.mean(t_true)),
                    g_max=1.2, n_tilts=3, check_cell=False, **kw)
    return m


def test_lbfgs_recovers_positions_from_a_perturbed_start(tiny_synthetic, quartz_structure):
    """Known answer: the true structure. L-BFGS from 0.05 Å displacements gets back to < 0.005 Å."""
    data, t_true = tiny_synthetic
    m = _model(data, quartz_structure, t_true)
    m.structure.adp.requires_grad_(False)
    m.structure.perturb(0.05, torch.Generator().manual_seed(2))
    sites = m.structure.asu
    rmsd = lambda: asu_rmsd(m.structure.frac_asu().detach().numpy(), m.structure.x0.numpy(),  # noqa: E731
                            sites.cell_matrix, sites.rotations, sites.translations)
    start = rmsd()
    with torch.no_grad():
        start_wr = m.loss().item()
    result = Ed3dLBFGS(epochs=8, max_iter=5).refine(m, None)
    assert start > 0.02
    assert rmsd() < 0.005 and result.final_loss < 0.5 * start_wr
    assert result.final_loss < 0.03  # Poisson floor at 1e6 counts is ~0.01
    assert len(result.history["loss"]) == result.iterations


def test_adam_lowers_wr_and_records_history(tiny_synthetic, quartz_structure):
    data, t_true = tiny_synthetic
    m = _model(data, quartz_structure, t_true)
    m.structure.perturb(0.1, torch.Generator().manual_seed(3))
    calls = []
    result = Ed3dAdam(epochs=15, lr=1e-3).refine(m, None, callback=lambda e, model, loss: calls.append(e) or {"x": e})
    losses = result.history["loss"]
    assert calls == list(range(1, 16)) and result.history["x"] == [float(e) for e in calls]
    assert losses[-1] < 0.8 * losses[0]
    assert "thickness_angstrom" in result.parameters and "frac_asu" in result.parameters


def test_nelder_mead_orientation_refinement_undoes_a_misorientation(quartz_exp, quartz_structure):
    """Known answer: frame 5 turned by (0.05°, −0.03°, 0.05°) about lab (x, y, z). The simplex finds the
    tilts about x and y back to 0.005°; the rotation about the beam (z) barely changes S_g and stays loose."""
    geometry = quartz_exp.select_frames(range(0, 99, 9))
    data, t_true = make_synthetic(geometry, quartz_structure, profile="constant", mean_angstrom=350.0,
                                  amplitude_angstrom=0.0, g_max=1.3, n_tilts=9,
                                  generator=torch.Generator().manual_seed(5), rng=np.random.default_rng(5))
    m = build_model(data, quartz_structure, thickness_model="single", g_max=1.3, n_tilts=9,
                    check_cell=False)
    m.thickness_model = ProfileThickness(t_true)
    frame = 5
    good = m.frame_wr(frame)
    with torch.no_grad():
        m.orientation_delta[frame] = small_rotation(np.radians([0.05, -0.03, 0.05]))
    bad = m.frame_wr(frame)
    info = refine_orientations(m, frames=[frame], max_iter=150, initial_step_deg=0.02)
    assert bad > 5 * good
    assert info["wr_after"][0] < 1.2 * good
    assert info["angles_deg"][0][:2] == pytest.approx([-0.05, 0.03], abs=0.006)


def test_refine_recipe_end_to_end(tmp_path):
    """The shipped quartz recipe, shrunk: 9 frames, |g| ≤ 1.2 Å⁻¹, 3 sub-orientations, 6 epochs."""
    from emverse.run import run_recipe

    run = run_recipe(REPO / "recipes" / "ed3d-quartz-synthetic.toml", tmp_path / "run",
                     overrides=["options.frame_stride=12", "forward_model.g_max=1.2", "forward_model.n_tilts=3",
                                "options.epochs=6"])
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    assert metrics["epochs"] == 6
    assert metrics["wr_all"] < metrics["start_wr_all"]
    assert metrics["metric.wr_all"] == pytest.approx(metrics["wr_all"])
    assert 0 < metrics["n_obs"] <= metrics["n_all"]
    for name in ("history", "thickness_profile", "iobs_vs_icalc"):
        assert (Path(run) / "figures" / f"{name}.png").is_file()
    assert (Path(run) / "refined.safetensors").is_file() or list(Path(run).glob("**/refined*.safetensors"))


@pytest.mark.parametrize("physics", ["exact", "fast"])
def test_refined_cif_and_reflection_table_reproduce_the_run(tmp_path, quartz_exp, physics):
    """The experimental recipe, shrunk (5 frames, 3 epochs, orientation angles by the gradient):
    the refined CIF reads back (ASE), and the structure from it, with the run's thickness and
    orientations and zero epochs, gives the run's wR(all); so does the reflection table.
    ``fast`` (Bethe potentials + float32 solves): the run also reports the final state scored
    with every beam in float64 (``exact_wr_all``), which the exact rebuild reproduces."""
    import csv

    import ase.io
    from emverse.crystal import Crystal
    from emverse.run import run_recipe
    from emverse_ed3d.metrics import WRAll

    run = Path(run_recipe(REPO / "recipes" / "ed3d-quartz-experimental.toml", tmp_path / "run",
                          overrides=["options.frame_stride=20", "options.epochs=3", "forward_model.n_tilts=5",
                                     "options.refine_orientation_gradient=true", "forward_model.bucket_ratio=0",
                                     "options.reselect_after_epochs=0", "options.absolute_structure=true",
                                     *(["forward_model.bethe_sg=0.005", "forward_model.solve_precision=float32"]
                                       if physics == "fast" else [])]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert ("exact_wr_all" in metrics) == (physics == "fast")
    exact_wr = metrics.get("exact_wr_all", metrics["wr_all"])
    atoms = ase.io.read(run / "refined.cif")
    assert len(atoms) == 9
    crystal = Crystal.from_cif(run / "refined.cif")
    saved = json.loads((run / "thickness.json").read_text())
    data = quartz_exp.select_frames(range(0, 99, 20))
    m = build_model(data, crystal, thickness_model="single", g_max=1.6, rsg_max=0.66, n_tilts=5)
    assert [int(f) for f in m.data.frames.frame_id] == saved["frame_id"]
    m.thickness_model = ProfileThickness(saved["thickness_angstrom"])
    with torch.no_grad():
        m.orientation_delta.copy_(torch.tensor(saved["orientation_correction"], dtype=torch.float64))
        assert m.loss().item() == pytest.approx(exact_wr, rel=1e-5)
    assert exact_wr == pytest.approx(metrics["wr_all"], abs=2e-3)  # the approximation's effect
    rows = list(csv.DictReader((run / "reflections.csv").open()))
    assert len(rows) == metrics["n_all"]
    table = torch.tensor([[float(r["i_obs"]), float(r["sigma"])] for r in rows], dtype=torch.float64)
    i_calc = torch.tensor([float(r["i_calc"]) for r in rows], dtype=torch.float64)
    assert WRAll()(i_calc, table)["wr_all"] == pytest.approx(metrics["wr_all"], rel=1e-4)
    # the hands: z-score and its spread are finite; the published hand fits better
    assert np.isfinite(metrics["absolute_structure_z"]) and metrics["absolute_structure_z_sd"] > 0
    assert metrics["wr_all_inverted"] > metrics["wr_all"]


@pytest.mark.parametrize("swap,check", [
    (['refiner={type = "ed3d.lbfgs", epochs = 2, max_iter = 3}'], "lbfgs"),
    (["options.thickness_model=kinematical", "options.epochs=4"], "kinematical"),
], ids=["refiner-adam-to-lbfgs", "physics-dynamical-to-kinematical"])
def test_swaps_by_set_alone(tmp_path, swap, check):
    """The shrunk synthetic recipe with its refiner (Adam -> L-BFGS) or its physics (dynamical
    ThicknessNN -> kinematical) swapped by --set alone."""
    from emverse.run import run_recipe

    base = ["options.frame_stride=12", "forward_model.g_max=1.2", "forward_model.n_tilts=3", "options.epochs=0"]
    run = Path(run_recipe(REPO / "recipes" / "ed3d-quartz-synthetic.toml", tmp_path / "run",
                          overrides=[*base, *swap]))
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = (run / "recipe.toml").read_text()
    assert metrics["wr_all"] < metrics["start_wr_all"]
    if check == "lbfgs":
        assert 'type = "ed3d.lbfgs"' in recipe and metrics["epochs"] == 2
    else:  # kinematical: the fixed 10 Å of the paper's kinematical model, worse than dynamical
        assert metrics["mean_thickness_angstrom"] == pytest.approx(10.0)
        assert metrics["wr_all"] > 0.3


def test_kill_9_then_resume_gives_identical_refinement(tmp_path):
    """ed3d.refine (with its per-frame orientation refinement first) killed with SIGKILL after its
    first checkpoint and resumed with `emverse run --resume` ends with exactly the structure and
    thickness of an uninterrupted run; the refined orientations are read back, not refined again."""
    from emverse.testing.resume import check_kill_9_resume

    out = check_kill_9_resume(
        REPO / "recipes" / "ed3d-quartz-synthetic.toml", tmp_path,
        overrides=["options.frame_stride=12", "forward_model.g_max=1.2", "forward_model.n_tilts=3", "options.epochs=40",
                   "options.checkpoint_every=2", "options.metrics_every=10", "options.refine_orientation=true",
                   "options.orientation_max_iter=5"],
        kill_when="refine0-resume.safetensors", outputs=["refined.safetensors", "refine0-resume.safetensors"],
    )
    assert out["refined.safetensors"]
    assert "stage orientation restored" in (tmp_path / "killed" / "run.log").read_text()


def test_the_physics_is_the_recipes_forward_model(tmp_path):
    """ed3d.refine takes its physics from a [forward_model] (ed3d.dynamical): a recipe without one
    is refused at validation, and a physics setting left in [options] is an unknown option."""
    import tomli_w
    import tomllib
    from emverse.errors import RecipeError
    from emverse.recipe import load_recipe

    raw = tomllib.loads((REPO / "recipes" / "ed3d-quartz-synthetic.toml").read_text())
    assert raw["forward_model"]["type"] == "ed3d.dynamical"
    missing = {k: v for k, v in raw.items() if k != "forward_model"}
    (tmp_path / "missing.toml").write_text(tomli_w.dumps(missing))
    with pytest.raises(RecipeError, match=r"\$\.forward_model.*ed3d.refine"):
        load_recipe(tmp_path / "missing.toml", check_files=False)
    raw["options"]["g_max"] = 1.2
    (tmp_path / "old.toml").write_text(tomli_w.dumps(raw))
    with pytest.raises(RecipeError, match=r"g_max"):
        load_recipe(tmp_path / "old.toml", check_files=False)


def test_continue_from_evaluate_only_reproduces_the_run(tmp_path):
    """The experimental recipe, shrunk, with the reflections selected again after 2 of 4 epochs
    and orientation steps large enough to move the selection: evaluating the finished run
    (continue_from + evaluate_only, same rules) scores the run's own reflections and reproduces its
    wR(all) (the thickness network is refitted to the saved profile: 1e-3); selecting them anew
    (continue_reflections = "select") gives another set."""
    from emverse.run import run_recipe

    recipe = REPO / "recipes" / "ed3d-quartz-experimental.toml"
    shrink = ["options.frame_stride=12", "forward_model.n_tilts=5", "forward_model.g_max=1.2",
              "forward_model.bucket_ratio=0", "options.absolute_structure=false", "options.rocking_check=false"]
    run = Path(run_recipe(recipe, tmp_path / "run", overrides=[*shrink, "options.epochs=4",
                                                               "options.reselect_after_epochs=2",
                                                               "refiner.lr_orientation=5e-3"]))
    metrics = json.loads((run / "metrics.json").read_text())
    scores = {}
    for how in ("same", "select"):
        again = Path(run_recipe(recipe, tmp_path / how, overrides=[
            *shrink, f"options.continue_from={run}", "options.evaluate_only=true",
            f"options.continue_reflections={how}"]))
        scores[how] = json.loads((again / "metrics.json").read_text())
        if how == "same":
            assert (again / "reflections.csv").read_text().count("\n") == (run / "reflections.csv").read_text().count("\n")
    assert scores["same"]["n_all"] == metrics["n_all"]
    assert scores["same"]["wr_all"] == pytest.approx(metrics["wr_all"], rel=1e-3)
    assert scores["select"]["n_all"] != metrics["n_all"] or (
        abs(scores["select"]["wr_all"] - metrics["wr_all"]) > 1e-3 * metrics["wr_all"])


def test_precession_override_fits_the_paracetamol_data_better(tmp_path):
    """The paracetamol PETS2 file says continuous rotation, its paper precession: the published
    model at the start (every 5th frame, |g| ≤ 0.5 Å⁻¹, no epochs) fits the measured intensities
    far better integrated over the 1.4° precession cone (forward_model.integration) than over a
    ±1.4° rocking range."""
    from emverse.run import run_recipe

    start = {}
    for integration in ("data", "precession"):
        run = Path(run_recipe(REPO / "recipes" / "ed3d-paracetamol-experimental.toml", tmp_path / integration,
                              overrides=["options.frame_stride=5", "forward_model.g_max=0.5", "forward_model.n_tilts=15",
                                         "options.evaluate_only=true", "options.rocking_check=false",
                                         "options.thickness_model=single", "options.t_init_angstrom=300",
                                         f"forward_model.integration={integration}"]))
        start[integration] = json.loads((run / "metrics.json").read_text())["wr_all"]
        assert ("integration: precession" in (run / "run.log").read_text()) == (integration == "precession")
    assert start["precession"] < 0.7 * start["data"]


def test_cspbbr3_experimental_recipe_fast_physics_with_absorption(tmp_path):
    """The experimental CsPbBr3 recipe, shrunk (every 10th frame, |g| ≤ 0.7 Å⁻¹, 3 epochs): Bethe
    potentials + float32 + first-order absorption refine, and the final state scored with every
    beam in float64 (same absorption) agrees with the fast physics' own score."""
    from emverse.run import run_recipe

    run = Path(run_recipe(REPO / "recipes" / "ed3d-cspbbr3-experimental.toml", tmp_path / "run",
                          overrides=["options.frame_stride=10", "forward_model.g_max=0.7", "forward_model.n_tilts=7",
                                     "options.epochs=3", "options.reselect_after_epochs=0",
                                     "options.rocking_check=false"]))
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = (run / "recipe.toml").read_text()
    assert "absorption = 0.1" in recipe and "bethe_sg = 0.005" in recipe
    assert metrics["wr_all"] < metrics["start_wr_all"]
    assert metrics["exact_wr_all"] == pytest.approx(metrics["wr_all"], abs=2e-3)


def test_refined_absorption(tmp_path):
    """options.refine_absorption: κ (as log κ) is refined with everything else from the recipe's
    start and reported; without a start value (forward_model.absorption = 0) the recipe is refused
    at validation, before any run directory. Evaluating the finished run (continue_from +
    evaluate_only) restores the refined κ, not the recipe's start, and reproduces its wR(all)."""
    from emverse.errors import RecipeError
    from emverse.recipe import load_recipe
    from emverse.run import run_recipe

    recipe = REPO / "recipes" / "ed3d-cspbbr3-experimental.toml"
    with pytest.raises(RecipeError, match=r"refine_absorption.*forward_model.absorption = 0"):
        load_recipe(recipe, overrides=["options.refine_absorption=true", "forward_model.absorption=0"])
    run = Path(run_recipe(recipe, tmp_path / "run", overrides=[
        "options.frame_stride=10", "forward_model.g_max=0.7", "forward_model.n_tilts=7", "options.epochs=4",
        "options.reselect_after_epochs=2", "options.rocking_check=false", "options.refine_absorption=true",
        "refiner.lr_absorption=0.05"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["absorption_kappa"] != pytest.approx(0.1, abs=1e-3)  # it moved (4 Adam steps of 0.05 in log κ)
    assert 0.05 < metrics["absorption_kappa"] < 0.2
    assert metrics["wr_all"] < metrics["start_wr_all"]
    again = Path(run_recipe(recipe, tmp_path / "again", overrides=[
        "options.frame_stride=10", "forward_model.g_max=0.7", "forward_model.n_tilts=7", "options.rocking_check=false",
        f"options.continue_from={run}", "options.evaluate_only=true"]))
    scored = json.loads((again / "metrics.json").read_text())
    assert scored["absorption_kappa"] == pytest.approx(metrics["absorption_kappa"], rel=1e-9)
    assert scored["wr_all"] == pytest.approx(metrics["wr_all"], rel=1e-3)
