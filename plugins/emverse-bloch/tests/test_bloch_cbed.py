"""bloch.cbed: conformance kit, gradients per parameter, geometry, bad input, recipe run."""

from pathlib import Path

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.testing import check_forward_model
from emverse_bloch.cbed import BlochCBED
from emverse_bloch.simulate import zone_axis_intensities

REPO = Path(__file__).resolve().parents[3]
SMALL = dict(detector_pixels=24, detector_pixel_size_um=100.0, camera_length_mm=100.0, g_max=0.8)


@pytest.fixture(scope="module")
def small_model():
    return BlochCBED(**SMALL)


def test_parameter_space_is_the_papers(small_model):
    space = small_model.parameter_space
    assert len(space) == 13
    assert space.parameters[0].mean == pytest.approx(48.0) and space.parameters[0].half_range == 25
    assert space.parameters[6].mean == pytest.approx(-0.91)
    assert space.parameters[12].low == pytest.approx(1800.0) and space.parameters[12].high == 3800.0


def test_conformance_kit(small_model):
    report = check_forward_model(small_model, batch=2)
    assert report.output_shape == (2, 24, 24)


def test_gradients_per_parameter_match_finite_differences(small_model):
    x = small_model.default_parameters()
    weights = torch.randn((1, 24, 24), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((small_model(xg) * weights).sum(), xg)
    for k, eps in [(0, 1e-3), (3, 1e-3), (6, 1e-6), (9, 1e-6), (10, 1e-6), (11, 1e-6), (12, 1e-4)]:
        xp, xm = x.clone(), x.clone()
        xp[0, k] += eps
        xm[0, k] -= eps
        fd = ((small_model(xp) - small_model(xm)) * weights).sum() / (2 * eps)
        assert grad[0, k].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8), k


@pytest.mark.parametrize("crystal", ["MgB2", "Si"])
def test_jacobian_matches_central_differences_and_autograd(small_model, crystal):
    """bloch.cbed's perturbation-theory Jacobian, for the real-symmetric (MgB2 [010]) and the
    complex Hermitian (Si [110], F(111) along its −45° phase) structure matrix: every column
    against central differences of the forward pass (5e-6 relative: the differences' own error)
    and Jᵀw against autograd's gradient of w·pattern (1e-8, the error of the potential table's
    central differences inside the Jacobian); the pattern is the forward pass's;
    U12 at [010] has no effect (a zero column). method = "expm" takes the base class's one-sided
    differences, which agree to their own error (1e-4)."""

    if crystal == "MgB2":
        model = small_model
    else:
        model = BlochCBED(structure=str(REPO / "recipes" / "structures" / "Si.cif"), zone_axis=(1, 1, 0),
                          parameter_table="symmetry", free_reflections=[[1, 1, 1], [2, 2, 0]], **SMALL)
        assert not model.real_symmetric
    space = model.parameter_space
    gen = torch.Generator().manual_seed(3)
    x = space.denormalise(torch.rand(3, len(space), generator=gen, dtype=torch.float64) * 1.8 - 0.9)
    pattern, jac = model.jacobian(x)
    assert jac.shape == (3, len(space), *model.shape)
    torch.testing.assert_close(pattern, model(x), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(model.jacobian(x, chunk=2)[1], jac, rtol=1e-12, atol=1e-15)  # rows in chunks
    low, high = space.bounds(torch.float64)
    for p, name in enumerate(space.names):
        step = torch.zeros(len(space), dtype=torch.float64)
        step[p] = 1e-5 * (high[p] - low[p]) / 2
        central = (model(x + step) - model(x - step)) / (2 * step[p])
        if name.endswith("U12"):
            assert float(jac[:, p].abs().max()) == 0.0 and float(central.abs().max()) < 1e-12
            continue
        error = float((jac[:, p] - central).norm() / central.norm())
        assert error < 5e-6, (name, error)
    weights = torch.randn(pattern.shape, generator=gen, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(xg) * weights).sum(), xg)
    torch.testing.assert_close(torch.einsum("bphw,bhw->bp", jac, weights), grad, rtol=1e-8, atol=1e-12)
    if crystal == "MgB2":
        expm = BlochCBED(method="expm", **SMALL)
        expm_pattern, one_sided = expm.jacobian(x[:1])
        torch.testing.assert_close(expm_pattern, expm(x[:1]), rtol=1e-12, atol=1e-15)
        live = [p for p, name in enumerate(space.names) if not name.endswith("U12")]
        error = (one_sided[:, live] - jac[:1, live]).flatten(2).norm(dim=2) / jac[:1, live].flatten(2).norm(dim=2)
        assert float(error.max()) < 1e-4


def test_central_pixel_is_the_zone_axis_solve(small_model):
    """The pixel on the optic axis of the direct disc equals a plain zone-axis solve
    (with the crystal tilt as the incident direction), beam by beam."""
    x = small_model.default_parameters()
    x[0, 6:10] = torch.tensor([-0.925, 0.622, 2.697, 2.945], dtype=torch.float64)
    x[0, 0:6] = torch.tensor([50.0, 50.0, 25.0, 50.0, 50.0, 25.0], dtype=torch.float64)
    x[0, 10:12] = 0.0
    from emverse_bloch.cbed import OVERRIDE_HKL
    from emverse_bloch.structure_factors import structure_factors

    iam = structure_factors(small_model.crystal, OVERRIDE_HKL, small_model.structure_from_vector(x[0]))
    x[0, 6:10] = iam.real  # the overrides at their independent-atom values
    pattern = small_model(x)[0]
    n = 24
    centre = pattern[n // 2, n // 2].item()

    structure = small_model.structure_from_vector(x[0])
    _, intensity = zone_axis_intensities(small_model.crystal, (0, 1, 0), [2800.0], g_max=0.8,
                                         sg_max=0.05, structure=structure)
    assert centre == pytest.approx(intensity[0, 0].item(), rel=1e-10)


def test_pattern_is_centrosymmetric_on_the_zone_axis(small_model):
    """MgB2 is centrosymmetric and [010] has a 2-fold axis: with no tilt the pattern has 180° symmetry."""
    x = small_model.default_parameters()
    x[0, 10:12] = 0.0
    p = small_model(x)[0].numpy()
    core = p[1:, 1:]  # pixel (i, j) <-> (n - i, n - j) about the centre pixel n//2
    np.testing.assert_allclose(core, core[::-1, ::-1], atol=1e-9)


def test_bad_inputs():
    with pytest.raises(EmverseError, match=r"zone_axis \[0, 0, 0\] is not a direction"):
        BlochCBED(zone_axis=(0, 0, 0), **SMALL)
    with pytest.raises(EmverseError, match="leave only the direct beam"):
        BlochCBED(detector_pixels=24, g_max=0.1)
    model = BlochCBED(**SMALL)
    x = model.default_parameters()
    x[0, 12] = -10.0
    with pytest.raises(EmverseError, match="thickness -10 Å is negative"):
        model(x)
    with pytest.raises(EmverseError, match=r"\(batch, 13\)"):
        model(torch.zeros(1, 12, dtype=torch.float64))


def test_recipe_runs_end_to_end(tmp_path):
    from emverse.run import run_recipe

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "bloch-mgb2-cbed-simulate.toml"
    run_dir = run_recipe(recipe, tmp_path / "run", overrides=[
        "options.n=2", "forward_model.detector_pixels=24", "forward_model.detector_pixel_size_um=100.0",
        "forward_model.g_max=0.8"])
    assert (Path(run_dir) / "figures" / "observations.png").exists()
    import zarr
    from emverse.parameter_space import space_from_metadata
    from emverse.simulation import store_metadata

    store = Path(run_dir) / "dataset.zarr"
    group = zarr.open_group(str(store), mode="r")
    assert group["observations"].shape == (2, 24, 24) and group["parameters"].shape == (2, 13)
    meta = store_metadata(store)
    assert meta["noise"] and meta["forward_model"]["type"] == "bloch.cbed"
    assert space_from_metadata(meta["parameter_space"]).names[-1] == "thickness"
    # counts at the recipe's dose: whole numbers of electrons per pixel, divided by the dose
    counts = np.asarray(group["observations"][:]) * 1000.0
    assert np.allclose(counts, np.round(counts), atol=1e-2)
