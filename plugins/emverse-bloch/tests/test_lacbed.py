"""D-LACBED discs: agreement with bloch.cbed, gradients, absorption, recipe checks, a tiny run."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from emverse.crystal import Crystal
from emverse.errors import RecipeError
from emverse.paths import shared_data_dir
from emverse_bloch.absorption import bird_king_form_factor
from emverse_bloch.cbed import BlochCBED
from emverse_bloch.crystal import data_path
from emverse_bloch.geometry import incident_direction
from emverse_bloch.lacbed import GeneralPropagation, LacbedSimulator
from emverse_bloch.lacbed_fit import LacbedFit
from emverse_bloch.structure_factors import StructureParameters, structure_factors

DIAMOND = shared_data_dir() / "lacbed/diamond_felixpython"
needs_data = pytest.mark.skipif(not DIAMOND.exists(), reason="shared LACBED data not present")


@pytest.mark.parametrize("kappa,method", [(0.0, "eig"), (0.1, "expm")])
def test_discs_agree_with_bloch_cbed_at_the_same_directions(kappa, method):
    """The LACBED simulator (general eig, own backward) and bloch.cbed (eigh or matrix_exp)
    give the same |ψ_g|² for the same beams, directions, thickness, B and absorption."""
    model = BlochCBED(detector_pixels=10, g_max=1.0, sg_max=0.05, absorption=kappa, method=method)
    crystal = model.crystal
    b = {"Mg": 0.5, "B": 0.4}
    u = {e: v / (8 * math.pi**2) for e, v in b.items()}
    base = StructureParameters.from_crystal(crystal)
    u_cif = StructureParameters.isotropic_u(
        crystal, torch.tensor([u[s.element] for s in crystal.sites], dtype=torch.float64))
    f = structure_factors(crystal, np.array([(0, 0, 1), (1, 0, 0), (1, 0, 1), (0, 0, 2)]),
                          StructureParameters(base.positions, u_cif, base.occupancy)).real
    # isotropic U in the hexagonal cell: U11 = U33, U12 = U11/2 (pm²)
    x = torch.tensor([[u["Mg"] * 1e4, u["Mg"] * 1e4, u["Mg"] * 5e3, u["B"] * 1e4, u["B"] * 1e4,
                       u["B"] * 5e3, *f.tolist(), 0.0, 0.0, 800.0]], dtype=torch.float64)
    reference = model(x)[0].reshape(-1)
    sim = LacbedSimulator(crystal, 200.0, (0, 1, 0), None, model.beams,
                          absorption="proportional" if kappa else "none", absorption_fraction=kappa,
                          beams=model.beams, frame=model.orientation)
    direction = incident_direction(model.pair_angle[:, 0], model.pair_angle[:, 1])
    k_t = sim.wavenumber * direction[:, :2]
    intensity = sim(torch.tensor([800.0], dtype=torch.float64),
                    {e: torch.tensor(v, dtype=torch.float64) for e, v in b.items()}, k_t)[:, 0]
    mine = intensity[torch.arange(len(k_t)), model.pair_beam]
    pattern = torch.zeros_like(reference).index_add(0, model.pair_pixel, mine)
    assert reference.max() > 1e-3
    torch.testing.assert_close(pattern, reference, rtol=0, atol=1e-10)


def test_general_propagation_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    n = 5
    h = torch.randn(n, n, dtype=torch.complex128, generator=gen)
    matrix = (0.5 * (h + h.mH) + 0.05j * torch.randn(n, n, dtype=torch.complex128, generator=gen))
    matrix = matrix.detach().requires_grad_(True)
    s = torch.tensor([0.3, 1.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GeneralPropagation.apply, (matrix, s), atol=1e-6, rtol=1e-5)


def test_general_propagation_is_finite_at_a_degenerate_spectrum():
    """A zone-axis direction makes eigenvalues degenerate; the divided differences stay finite."""
    matrix = torch.diag(torch.tensor([1.0, 1.0, -0.5], dtype=torch.complex128)).requires_grad_(True)
    s = torch.tensor([0.7], dtype=torch.float64)
    psi = GeneralPropagation.apply(matrix, s)
    (grad,) = torch.autograd.grad((psi.abs() ** 2).sum(), matrix, retain_graph=True)
    assert torch.isfinite(grad).all()
    # for A = diag, ψ_0 = exp(i s A_00): torch's gradient of Re ψ_0 is conj(i s exp(i s A_00))
    (grad,) = torch.autograd.grad(psi[..., 0].real.sum(), matrix)
    assert torch.isfinite(grad).all()
    expected = (1j * 0.7 * torch.exp(1j * 0.7 * torch.tensor(1.0 + 0j, dtype=torch.complex128))).conj()
    assert abs(complex(grad[0, 0]) - complex(expected)) < 1e-12


def _tiny_fit(absorption="bird_king"):
    crystal = Crystal.from_cif(data_path("diamond.cif"))
    sim = LacbedSimulator(crystal, 200.0, (1, -1, 0), (0, 0, -1), [(0, 0, 0), (1, 1, 1), (0, 0, 2)],
                          g_max=1.0, absorption=absorption)
    start = {"thickness": 600.0, "B_C": 0.3, "centre_row": 0.2, "centre_col": -0.1, "rotation": 1.0,
             "pixel_scale": 1.0, "blur": 0.6}
    return LacbedFit(sim, 5, 0.08, start, list(start))


def test_disc_simulation_gradient_matches_finite_differences():
    fit = _tiny_fit()
    raw = (0.1 * torch.randn(len(fit.names), dtype=torch.float64,
                             generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    weights = torch.randn(3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def scalar(r):
        return (fit(r) * weights).sum()

    (grad,) = torch.autograd.grad(scalar(raw), raw)
    for i in range(len(fit.names)):
        h = 1e-5
        e = torch.zeros_like(raw)
        e[i] = h
        fd = (scalar(raw.detach() + e) - scalar(raw.detach() - e)) / (2 * h)
        assert abs(float(grad[i]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), fit.names[i]


def test_coordinate_gradient_matches_finite_differences():
    """LiNbO3: the symmetry-allowed shifts of O1 (3, general position) and Li1 (1, along c)."""
    from emverse_bloch.lacbed_fit import coordinate_names

    crystal = Crystal.from_cif(data_path("LiNbO3.cif"))
    names = coordinate_names(crystal, ["Li1", "O1"])
    assert names == ["xyz_Li1_0", "xyz_O1_0", "xyz_O1_1", "xyz_O1_2"]
    sim = LacbedSimulator(crystal, 200.0, (1, -1, 0), (0, 0, -1), [(0, 0, 0), (1, 1, 0), (0, 0, 6)],
                          g_max=0.8, absorption="bird_king")
    start = {"thickness": 400.0, "B_Nb": 0.4, "B_Li": 0.5, "B_O": 0.5, "centre_row": 0.0,
             "centre_col": 0.0, "rotation": 0.0, "pixel_scale": 1.0, "blur": 0.5,
             **{k: 0.0 for k in names}}
    fit = LacbedFit(sim, 4, 0.1, start, names)
    raw = torch.zeros(len(fit.names), dtype=torch.float64)
    raw[fit.names.index("xyz_O1_1")] = 0.3
    weights = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    raw.requires_grad_(True)
    (grad,) = torch.autograd.grad((fit(raw) * weights).sum(), raw)
    for name in names:
        i = fit.names.index(name)
        e = torch.zeros_like(raw)
        e[i] = 1e-5
        fd = ((fit(raw.detach() + e) - fit(raw.detach() - e)) * weights).sum() / 2e-5
        assert abs(float(grad[i]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), name
    assert abs(float(grad[fit.names.index("xyz_O1_0")])) > 1e-6  # the shift does change the discs


def test_bird_king_forward_value_is_the_optical_theorem():
    """f'(0) = (λ/2) ∫ |γf(q)|² (1 − e^{−Bq²/2}) d²q, here by scipy's adaptive 1D quadrature."""
    from emverse.electron import lorentz_factor, wavelength_angstrom
    from emverse_bloch.scattering_factors import scattering_factor
    from scipy.integrate import quad

    b = 0.4
    gamma, lam = lorentz_factor(200.0), wavelength_angstrom(200.0)

    def integrand(q):
        f = gamma * float(scattering_factor("Si", torch.tensor(q * q, dtype=torch.float64)))
        return 2 * math.pi * q * f * f * (1 - math.exp(-b * q * q / 2))

    expected = 0.5 * lam * quad(integrand, 0, 8.0, limit=200)[0]
    got = bird_king_form_factor("Si", torch.tensor([0.0], dtype=torch.float64),
                                torch.tensor(b, dtype=torch.float64), 200.0)
    assert float(got[0]) == pytest.approx(expected, rel=1e-4)
    zero = bird_king_form_factor("Si", torch.tensor([0.0, 0.5], dtype=torch.float64),
                                 torch.tensor(0.0, dtype=torch.float64), 200.0)
    assert torch.all(zero.abs() < 1e-12)


def _recipe(**options):
    from emverse.recipe import validate_recipe

    table = {"schema_version": 1, "name": "lacbed-test", "seed": 1, "dtype": "float64",
             "task": "bloch.lacbed", "refiner": {"type": "core.lbfgs", "steps": 2},
             "options": {"data_dir": str(DIAMOND / "DM3_100x100"), "file_prefix": "C", **options}}
    return validate_recipe(table)


@needs_data
def test_reflection_without_disc_file_is_refused_at_validation():
    with pytest.raises(RecipeError, match=r"C_\+0\+0\+8\.dm3"):
        _recipe(reflections=[[0, 0, 0], [0, 0, 8]])


@needs_data
def test_mismatched_disc_sizes_are_refused_at_validation(tmp_path):
    shutil.copy(DIAMOND / "DM3_100x100/C_+0+0+0.dm3", tmp_path / "C_+0+0+0.dm3")
    shutil.copy(DIAMOND / "DM3_200x200/C_+1+1+1.dm3", tmp_path / "C_+1+1+1.dm3")
    with pytest.raises(RecipeError, match=r"differ in size.*C_\+1\+1\+1\.dm3: \(200, 200\)"):
        _recipe(data_dir=str(tmp_path), reflections=[[0, 0, 0], [1, 1, 1]])


@needs_data
def test_tiny_lacbed_run_end_to_end(tmp_path):
    """100×100 discs averaged to 5×5 directions, 3 discs, 2 L-BFGS steps: the run writes
    metrics with the thickness and correlations, figures and a refined CIF that ase reads."""
    import json

    from ase.io import read as ase_read
    from emverse.run import execute

    recipe = _recipe(reciprocal_pixel_size=0.01778, downsample=20, g_max=1.0, absorption="proportional",
                     thickness_range_angstrom=[2200.0, 2250.0], thickness_step_angstrom=50.0,
                     pixel_scale_scan=[1.0], b_scan_factors=[1.0], reflections=[[0, 0, 0], [1, 1, 1], [2, 2, 0]],
                     refine=["thickness", "B"])
    run = execute(recipe, tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 2100 < metrics["thickness_angstrom"] < 2400
    assert -1 <= metrics["mean_corr"] <= 1 and metrics["mean_corr"] >= metrics["mean_corr_start"] - 1e-9
    assert metrics["mean_corr"] == pytest.approx(np.mean([v for k, v in metrics.items()
                                                          if k.startswith("disc_ncc_end")]))
    assert math.isfinite(metrics["B_C"])
    atoms = ase_read(run / "refined.cif")
    assert len(atoms) == 8 and set(atoms.get_chemical_symbols()) == {"C"}
    assert (run / "figures" / "discs.png").exists()

    # what `emverse run --resume` finds after a kill at the end of the refinement: the kept scan
    # and the finished refinement are read back, and the results are the same
    import shutil

    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(run / "stages", again / "stages")
    shutil.copy(run / "refine-resume.safetensors", again)
    resumed = json.loads((execute(recipe, again, progress=False, resume=True) / "metrics.json").read_text())
    assert "stage coarse-scan restored" in (again / "run.log").read_text()
    for key in ("thickness_angstrom", "mean_corr", "mean_corr_start", "B_C"):
        assert resumed[key] == metrics[key], key


def test_profile_likelihood_matches_an_explicit_least_squares_fit():
    """Σ_d (N/2) log(RSS_d/N) with per-disc scale and background from numpy's lstsq."""
    from emverse_bloch.lacbed import profile_negative_log_likelihood, scale_and_background

    gen = torch.Generator().manual_seed(5)
    prediction = torch.rand(3, 6, 6, dtype=torch.float64, generator=gen)
    observation = 2.5 * prediction + 0.3 + 0.1 * torch.randn(3, 6, 6, dtype=torch.float64, generator=gen)
    expected = 0.0
    a, b = scale_and_background(prediction, observation)
    for d in range(3):
        design = np.stack([prediction[d].ravel().numpy(), np.ones(36)], -1)
        coef, rss, *_ = np.linalg.lstsq(design, observation[d].ravel().numpy(), rcond=None)
        assert coef[0] == pytest.approx(float(a[d])) and coef[1] == pytest.approx(float(b[d]))
        expected += 18 * math.log(float(rss[0]) / 36)
    assert float(profile_negative_log_likelihood(prediction, observation)) == pytest.approx(expected, rel=1e-10)


@needs_data
def test_kill_9_then_resume_gives_the_same_lacbed_refinement(tmp_path):
    """The diamond recipe at toy size (20×20-px discs averaged ×20, 3 discs), L-BFGS in blocks of
    10 iterations: killed with SIGKILL once the first block is kept, resumed (the coarse scan read
    back, the refinement continued), the simulated discs and refined values equal an uninterrupted
    run's."""
    from pathlib import Path

    from emverse.testing.resume import check_kill_9_resume

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "lacbed-diamond.toml"
    out = check_kill_9_resume(recipe, tmp_path, overrides=[
        "options.downsample=20", "options.g_max=1.0", "options.absorption=proportional",
        "options.thickness_range_angstrom=[2200.0, 2250.0]", "options.thickness_step_angstrom=50.0",
        "options.pixel_scale_scan=[1.0]", "options.b_scan_factors=[1.0]",
        "options.reflections=[[0, 0, 0], [1, 1, 1], [2, 2, 0]]",
        'options.refine=["thickness", "B", "centre_row", "centre_col"]', "refiner.steps=40"],
        kill_when="refine-resume.safetensors", outputs=["lacbed.safetensors"])
    assert "prediction" in out["lacbed.safetensors"]
