"""Periodic-crystal G(r): analytic limits, envelopes, symmetry, gradients, PDFfit2, recipes, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from emverse.crystal import Crystal
from emverse.errors import EmverseError
from emverse_pdf.crystal_fit import CrystalPDFModel, CrystalPhase
from emverse_pdf.envelope import small_angle_warning, sphere_envelope, spheroid_envelope

ROOT = Path(__file__).resolve().parents[3]
STRUCTURES = ROOT / "recipes" / "structures"


def _crystal(name: str) -> Crystal:
    return Crystal.from_cif(STRUCTURES / f"{name}.cif")


def _model(name="Ag", r=None, radiation="xray", qmax=0.0, qdamp=0.0, qbroad=0.0, delta1=0.0, delta2=0.0,
           envelope="none", diameter=None, refine=(), dataset_refine=(), uiso=None, adp="isotropic"):
    r = np.round(np.arange(0.5, 20.0001, 0.01), 6) if r is None else r
    phase = CrystalPhase(_crystal(name), radiation=radiation, delta1=delta1, delta2=delta2, uiso=uiso, adp=adp,
                         envelope=envelope, diameter=diameter, refine=refine)
    return CrystalPDFModel([phase], r, fit_rmin=float(r[0]), fit_rmax=float(r[-1]), qmax=qmax, qdamp=qdamp,
                           qbroad=qbroad, refine=dataset_refine)


# ------------------------------------------------------------------ analytic limits
def test_fcc_peak_areas_are_coordination_numbers():
    """R(r) = r (G + 4πρ₀ r) integrates to 12 neighbours at a/√2 and 6 at a (fcc, one element)."""
    model = _model("Ag", uiso=0.002)
    with torch.no_grad():
        g = model().numpy()
    r = model.r.numpy()
    a = 4.086
    rho = 4 / a**3
    radial = r * (g + 4 * math.pi * rho * r)
    step = r[1] - r[0]
    for distance, neighbours in ((a / math.sqrt(2), 12), (a, 6), (a * math.sqrt(1.5), 24)):
        window = np.abs(r - distance) < 0.4
        assert radial[window].sum() * step == pytest.approx(neighbours, rel=2e-3)


def test_baseline_below_the_first_neighbour_is_minus_four_pi_rho_r():
    """No pair closer than ~2.9 Å: G(r) = −4πρ₀ r exactly there, ρ₀ = 4/a³ (Å⁻³)."""
    model = _model("Ag", uiso=0.002)
    with torch.no_grad():
        g = model().numpy()
    r = model.r.numpy()
    below = r < 2.5
    slope = np.polyfit(r[below], g[below], 1)
    assert slope[0] == pytest.approx(-4 * math.pi * 4 / 4.086**3, rel=1e-9)
    assert abs(slope[1]) < 1e-9


def test_qdamp_and_envelope_multiply_the_whole_gr():
    plain, damped, sphere = _model("Ag"), _model("Ag", qdamp=0.05), _model("Ag", envelope="sphere", diameter=15.0)
    with torch.no_grad():
        g0, g1, g2 = plain(), damped(), sphere()
    r = plain.r
    assert torch.allclose(g1, g0 * torch.exp(-0.5 * (0.05 * r) ** 2), atol=1e-12)
    assert torch.allclose(g2, g0 * sphere_envelope(r, 15.0), atol=1e-12)
    assert torch.all(g2[r > 15.0] == 0)


# -------------------------------------------------------------------- envelopes
def test_spheroid_with_equal_diameters_is_the_sphere():
    r = torch.linspace(0, 40, 401, dtype=torch.float64)
    assert torch.allclose(spheroid_envelope(r, 30.0, 30.0), sphere_envelope(r, 30.0), atol=1e-12)


def test_spheroid_envelope_matches_monte_carlo_overlap():
    """γ(r) = fraction of points p of the spheroid with p + r·û inside, û uniform on the sphere."""
    generator = torch.Generator().manual_seed(0)
    equatorial, polar = 20.0, 36.0  # diameters (Å)
    n = 400_000
    semi = torch.tensor([equatorial / 2, equatorial / 2, polar / 2], dtype=torch.float64)
    points = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    points = points / points.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=generator,
                                                                     dtype=torch.float64) ** (1 / 3)
    points = points * semi  # uniform inside the spheroid
    directions = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    for r in (5.0, 15.0, 25.0):
        moved = points + r * directions
        inside = ((moved / semi) ** 2).sum(1) <= 1
        expected = float(inside.double().mean())
        computed = float(spheroid_envelope(torch.tensor([r], dtype=torch.float64), equatorial, polar))
        assert computed == pytest.approx(expected, abs=4e-3)


def test_small_angle_warning_when_qmin_below_two_pi_over_d():
    assert small_angle_warning(0.1, 40.0, "x.gr") is not None  # 2π/40 = 0.157 Å⁻¹
    assert "Qmin" in small_angle_warning(0.1, 40.0, "x.gr")
    assert small_angle_warning(1.0, 40.0, "x.gr") is None


# ------------------------------------------------------------ symmetry and gradients
def test_refined_lattice_stays_in_the_symmetry_subspace():
    model = _model("TiO2_rutile", refine=("lattice", "xyz"))
    for offset in model.parameters():
        if offset.requires_grad:
            offset.data.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    phase = model.phases[0]
    g = phase.metric().detach()
    assert g[0, 0] == pytest.approx(float(g[1, 1]))  # a = b
    assert float(g[0, 1].abs() + g[0, 2].abs() + g[1, 2].abs()) < 1e-12  # right angles
    oxygen = phase.site_positions()[1].detach()
    assert oxygen[0] == pytest.approx(float(oxygen[1])) and float(oxygen[2]) == 0.0  # (x, x, 0)


@pytest.mark.parametrize("name, refine, adp", [
    ("TiO2_rutile", ("lattice", "xyz", "adp", "delta2", "scale", "occupancy", "delta1"), "isotropic"),
    ("CdSe_wurtzite", ("lattice", "adp", "diameter"), "anisotropic"),
])
def test_gradients_match_finite_differences(name, refine, adp):
    """Directional derivative of <G, target> along a random direction of each parameter group."""
    r = np.round(np.arange(1.0, 9.0001, 0.02), 6)
    model = _model(name, r=r, qmax=20.0, qdamp=0.03, qbroad=0.01, delta2=1.0, refine=refine, adp=adp,
                   dataset_refine=("qdamp", "qbroad"),
                   envelope="sphere" if "diameter" in refine else "none", diameter=25.0)
    target = torch.linspace(-1, 1, r.size, dtype=torch.float64).sin()
    free = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(2)
    for p in free:
        p.data.normal_(0, 0.5, generator=generator)
    grads = torch.autograd.grad((model() * target).sum(), free)
    eps = 1e-4
    for p, grad in zip(free, grads, strict=True):
        direction = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        with torch.no_grad():
            p += eps * direction
            up = float((model() * target).sum())
            p -= 2 * eps * direction
            down = float((model() * target).sum())
            p += eps * direction
        numeric = (up - down) / (2 * eps)
        assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-7)


# ------------------------------------------------------------------ PDFfit2 side by side
def _diffpy_structure(crystal: Crystal):
    from diffpy.structure import Atom, Lattice, Structure

    lattice = Lattice(*crystal.cell_lengths, *crystal.cell_angles)
    recip = np.diag(np.linalg.norm(crystal.reciprocal_lattice, axis=1))
    atoms = []
    for k in range(crystal.n_atoms):
        site = crystal.sites[crystal.atom_site[k]]
        atom = Atom(site.element, crystal.atom_positions[k], lattice=lattice, occupancy=site.occupancy)
        rotation = crystal.atom_rotation[k]
        inverse = np.linalg.inv(recip)
        atom.anisotropy = True  # else diffpy.structure keeps only U_iso
        atom.U = inverse @ rotation @ recip @ site.u_cif @ recip @ rotation.T @ inverse
        atoms.append(atom)
    return Structure(atoms, lattice=lattice)


@pytest.mark.parametrize("name, settings", [
    ("Ag", dict(qmax=30.0, qdamp=0.05, qbroad=0.02, delta2=2.0)),
    ("TiO2_rutile", dict(qmax=26.0, qdamp=0.04, delta1=0.3)),
    ("CdSe_wurtzite", dict(qmax=19.0, delta2=3.0, envelope="sphere", diameter=30.0)),
    ("LaMnO3_Pbnm", dict(radiation="neutron", qmax=32.0, qdamp=0.02)),
])
def test_fixed_model_gr_matches_pdffit2(name, settings):
    """Same structure and settings in both codes: G(r) agrees to Rw < 1e-4 (PDFfit2 1.5.1)."""
    pdffit2 = pytest.importorskip("diffpy.pdffit2")
    import os

    from emverse_pdf.scattering_lengths import NEUTRON_COHERENT_LENGTH_FM

    pdffit2.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115
    r = np.round(np.arange(0.5, 25.0001, 0.01), 6)
    crystal = _crystal(name)
    radiation = settings.get("radiation", "xray")
    peer = pdffit2.PdfFit()
    peer.add_structure(_diffpy_structure(crystal))
    stype = "N" if radiation == "neutron" else "X"
    if radiation == "neutron":
        for element in crystal.elements:
            peer.set_scat("N", element, NEUTRON_COHERENT_LENGTH_FM[element])
    peer.read_data_lists(stype, settings["qmax"], settings.get("qdamp", 0.0), list(r), list(np.zeros_like(r)))
    peer.setvar("qbroad", settings.get("qbroad", 0.0))
    peer.setvar("delta1", settings.get("delta1", 0.0))
    peer.setvar("delta2", settings.get("delta2", 0.0))
    if settings.get("envelope") == "sphere":
        peer.setvar("spdiameter", settings["diameter"])
    peer.pdfrange(1, 1.5, 23.5)
    peer.calc()
    expected = np.asarray(peer.getpdf_fit())
    model = _model(name, r=r, **settings)
    model = CrystalPDFModel(list(model.phases), r, fit_rmin=1.5, fit_rmax=23.5, qmax=settings["qmax"],
                            qdamp=settings.get("qdamp", 0.0), qbroad=settings.get("qbroad", 0.0))
    with torch.no_grad():
        ours = model().numpy()
    assert ours.shape == expected.shape
    rw = math.sqrt(np.sum((ours - expected) ** 2) / np.sum(expected**2))
    assert rw < 1e-4


def test_anisotropic_adps_match_pdffit2():
    """Rutile with anisotropic U (U11 = U22 ≠ U33, U12 ≠ 0, allowed on both sites): Rw < 1e-4."""
    pdffit2 = pytest.importorskip("diffpy.pdffit2")
    import os

    pdffit2.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115
    crystal = Crystal.from_sites((4.594, 4.594, 2.959), (90, 90, 90), [
        {"element": "Ti", "position": (0, 0, 0), "u_aniso": (0.006, 0.006, 0.004, 0.0015, 0, 0)},
        {"element": "O", "position": (0.3048, 0.3048, 0), "u_aniso": (0.008, 0.008, 0.005, -0.003, 0, 0)},
    ], spacegroup=136)
    r = np.round(np.arange(0.5, 20.0001, 0.01), 6)
    peer = pdffit2.PdfFit()
    peer.add_structure(_diffpy_structure(crystal))
    peer.read_data_lists("X", 26.0, 0.03, list(r), list(np.zeros_like(r)))
    peer.setvar("delta2", 1.5)
    peer.pdfrange(1, 1.5, 18.5)
    peer.calc()
    expected = np.asarray(peer.getpdf_fit())
    phase = CrystalPhase(crystal, adp="anisotropic", delta2=1.5)
    model = CrystalPDFModel([phase], r, fit_rmin=1.5, fit_rmax=18.5, qmax=26.0, qdamp=0.03)
    with torch.no_grad():
        ours = model().numpy()
    isotropic = CrystalPDFModel([CrystalPhase(crystal, adp="isotropic", delta2=1.5)], r, fit_rmin=1.5,
                                fit_rmax=18.5, qmax=26.0, qdamp=0.03)
    with torch.no_grad():
        ueq = isotropic().numpy()
    rw = math.sqrt(np.sum((ours - expected) ** 2) / np.sum(expected**2))
    rw_isotropic = math.sqrt(np.sum((ueq - expected) ** 2) / np.sum(expected**2))
    assert rw < 1e-4 < 1e-2 < rw_isotropic  # the anisotropy is visible, and reproduced


# ------------------------------------------------------------------- recipes end to end
def test_ag_recipe_runs_end_to_end(tmp_path):
    """The committed Ag recipe, shortened (r <= 12 Å, 15 L-BFGS steps), lowers Rw below 0.15."""
    from emverse.run import read_metrics, run_recipe

    if not (Path(__import__("emverse.paths").paths.shared_data_dir()) / "pdf_experimental").is_dir():
        pytest.skip("shared PDF data not found")
    out = run_recipe(ROOT / "recipes" / "pdf-ag-periodic.toml", tmp_path / "run",
                     overrides=["refiner.steps=15", "options.samples.0.fit_rmax=12.0"])
    metrics = read_metrics(out)
    assert metrics["rw"] < 0.15 < metrics["Ag.rw_start"]
    assert metrics["Ag.Ag.a"] == pytest.approx(4.09, abs=0.03)
    assert (out / "Ag.fitted.gr").is_file()


def test_kill_9_then_resume_gives_the_same_crystal_fit(tmp_path):
    """pdf.fit_crystal on the measured Si PDF (core L-BFGS in blocks of 10 iterations) killed
    with SIGKILL after its first block and resumed: the refined parameters, the L-BFGS state and
    the loss history equal an uninterrupted fit's."""
    from emverse.testing.resume import check_kill_9_resume

    if not (Path(__import__("emverse.paths").paths.shared_data_dir()) / "pdf_experimental").is_dir():
        pytest.skip("shared PDF data not found")
    out = check_kill_9_resume(ROOT / "recipes" / "pdf-si-periodic.toml", tmp_path, overrides=[],
                              kill_when="fit-Si-resume.safetensors", outputs=["fit.safetensors",
                                                                             "fit-Si-resume.safetensors"])
    assert "Si.g_fit" in out["fit.safetensors"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, limit", [
    ("pdf-ag-periodic.toml", 0.10), ("pdf-si-periodic.toml", 0.12), ("pdf-rutile-periodic.toml", 0.20),
    ("pdf-lamno3-neutron.toml", 0.15),
])
def test_periodic_recipes_fit(tmp_path, recipe, limit):
    from emverse.run import read_metrics, run_recipe

    metrics = read_metrics(run_recipe(ROOT / "recipes" / recipe, tmp_path / "run"))
    assert metrics["rw"] < limit


# ---------------------------------------------------------------------------- bad input
_RECIPE = """
schema_version = 1
name = "bad"
seed = 0
task = "pdf.fit_crystal"
dtype = "float64"
[[options.samples]]
observation = "{observation}"
fit_rmin = 1.5
fit_rmax = {rmax}
[[options.samples.phases]]
structure = "{structure}"
[refiner]
type = "core.lbfgs"
steps = 2
"""


def _write_gr(path: Path, header: str):
    r = np.arange(0.01, 20.0, 0.01)
    path.write_text(header + "#### start data\n#S 1\n" + "\n".join(f"{x:.2f} {np.sin(x):.6f}" for x in r) + "\n")


def _expect_error(tmp_path, text, fragments):
    from emverse.errors import EmverseError as Error
    from emverse.run import run_recipe

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    out = tmp_path / "run"
    with pytest.raises(Error) as info:
        run_recipe(recipe, out)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert not out.exists()  # the error came before any run directory


def test_gr_without_qmax_is_an_error_before_the_run(tmp_path):
    _write_gr(tmp_path / "noq.gr", "title = no q range here\n")
    _expect_error(tmp_path, _RECIPE.format(observation="noq.gr", rmax=15.0, structure=STRUCTURES / "Ag.cif"),
                  ["noq.gr", "Qmax", "options.samples[0].qmax"])


def test_fit_range_beyond_the_data_is_an_error_before_the_run(tmp_path):
    _write_gr(tmp_path / "short.gr", "qmax = 25\n")
    _expect_error(tmp_path, _RECIPE.format(observation="short.gr", rmax=40.0, structure=STRUCTURES / "Ag.cif"),
                  ["short.gr", "beyond the data", "fit_rmax"])


def test_cif_whose_symmetry_does_not_match_its_atoms_is_an_error_before_the_run(tmp_path):
    _write_gr(tmp_path / "ok.gr", "qmax = 25\n")
    text = (STRUCTURES / "Ag.cif").read_text().replace(
        "Ag1 Ag 0 0 0 1 0.0095", "Ag1 Ag 0 0 0 1 0.0095\nAg2 Ag 0.5 0.5 0.01 1 0.0095")
    (tmp_path / "bad.cif").write_text(text)
    _expect_error(tmp_path, _RECIPE.format(observation="ok.gr", rmax=15.0, structure="bad.cif"),
                  ["bad.cif", "symmetry does not match", "asymmetric unit"])


def test_unknown_refinable_name_is_reported():
    with pytest.raises(EmverseError, match="cannot refine"):
        _model("Ag", refine=("lattice", "spin"))
