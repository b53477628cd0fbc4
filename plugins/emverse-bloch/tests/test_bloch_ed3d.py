"""bloch.ed3d and the functional API emverse-ed3d calls."""

import math

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.testing import check_forward_model
from emverse_bloch.ed3d import (
    BlochED3D,
    frame_intensities,
    plan_frames,
    rotation_series,
    select_reflections,
)
from emverse_bloch.simulate import zone_axis_intensities
from emverse_bloch.structure_factors import Overrides, StructureParameters


@pytest.fixture(scope="module")
def quartz_plan(quartz_crystal):
    rots = rotation_series(quartz_crystal, 3, 0.7, (1, 0, 0))
    hkl, frames = select_reflections(quartz_crystal, rots, g_max=0.9, rocking_semi_angle_deg=0.5)
    plan = plan_frames(quartz_crystal, rots, hkl, frames, g_max=0.9, sg_max=0.03,
                       rocking_semi_angle_deg=0.5, n_sub_orientations=3)
    return plan


def test_conformance_kit():
    model = BlochED3D(n_frames=2, g_max=1.2, n_sub_orientations=2)
    report = check_forward_model(model, batch=2)
    assert report.output_shape[0] == 2 and report.output_shape[1] >= 2


def test_single_orientation_matches_zone_axis_solver(mgb2_crystal):
    """One frame at [010], no rocking: the requested intensities are the zone-axis solve."""
    rots = rotation_series(mgb2_crystal, 1, 0.0, (0, 1, 0))
    hkl = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [-1, 0, 2]])
    plan = plan_frames(mgb2_crystal, rots, hkl, np.zeros(4, dtype=int), g_max=1.2, sg_max=0.05)
    ours = frame_intensities(plan, torch.tensor([900.0], dtype=torch.float64))
    beams, ref = zone_axis_intensities(mgb2_crystal, (0, 1, 0), [900.0], g_max=1.2, sg_max=0.05)
    order = {tuple(h): i for i, h in enumerate(beams)}
    expected = ref[0, [order[tuple(h)] for h in hkl]]
    assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_kinematical_mode_is_the_thin_limit(quartz_plan):
    t = torch.full((3,), 1.0, dtype=torch.float64)
    dyn = frame_intensities(quartz_plan, t)
    kin = frame_intensities(quartz_plan, t, mode="kinematical")
    strong = kin > 1e-3 * kin.max()
    np.testing.assert_allclose(dyn[strong].numpy(), kin[strong].numpy(), rtol=0.01)
    t = torch.full((3,), 600.0, dtype=torch.float64)
    dyn = frame_intensities(quartz_plan, t)
    kin = frame_intensities(quartz_plan, t, mode="kinematical")
    assert (dyn - kin).abs().max() > 0.1 * dyn.max()  # dynamical effects at 60 nm


def test_eig_expm_and_batches_agree(quartz_plan, quartz_crystal):
    t = torch.tensor([[300.0, 500.0, 700.0], [800.0, 200.0, 400.0]], dtype=torch.float64)
    a = frame_intensities(quartz_plan, t)
    b = frame_intensities(quartz_plan, t, method="expm")
    assert a.shape == (2, len(quartz_plan.hkl))
    assert torch.allclose(a, b, atol=1e-10)
    single = frame_intensities(quartz_plan, t[1])
    assert torch.allclose(a[1], single, atol=1e-12)


def test_gradients_thickness_orientation_positions_overrides(quartz_plan, quartz_crystal):
    c = quartz_crystal
    base = StructureParameters.from_crystal(c)
    overrides = Overrides([(1, 0, 0)])
    plan = plan_frames(c, quartz_plan.orientations, quartz_plan.hkl, quartz_plan.frame_index,
                       g_max=0.9, sg_max=0.03, rocking_semi_angle_deg=0.5, n_sub_orientations=3,
                       overrides=overrides)
    f100 = torch.tensor([1.5], dtype=torch.float64)
    weights = torch.linspace(0.2, 1.0, len(plan.hkl), dtype=torch.float64)

    def objective(thickness, angle, positions, u, f):
        from emverse_bloch.geometry import rotation_x

        rots = rotation_x(angle)[None] @ plan.orientations
        out = frame_intensities(plan, thickness, StructureParameters(positions, u, base.occupancy),
                                orientations=rots, override_values=f)
        return (out * weights).sum()

    args = [torch.tensor([300.0, 500.0, 700.0], dtype=torch.float64),
            torch.tensor(0.0, dtype=torch.float64), base.positions.clone(), base.u_cif.clone(), f100]
    _check_against_finite_differences(objective, args, [1e-3, 1e-7, 1e-7, 1e-7, 1e-6], seed=4)


def _check_against_finite_differences(objective, args, steps, seed):
    """Each argument's gradient along a random direction (symmetric for the U tensor, argument 3)
    against a central difference with that argument's step."""
    args = [a.clone().requires_grad_(True) for a in args]
    grads = torch.autograd.grad(objective(*args), args)
    gen = torch.Generator().manual_seed(seed)
    for k, eps in enumerate(steps):
        direction = torch.randn(args[k].shape, generator=gen, dtype=torch.float64)
        if k == 3:
            direction = direction + direction.transpose(-1, -2)
        plus = [a.detach().clone() for a in args]
        minus = [a.detach().clone() for a in args]
        plus[k] += eps * direction
        minus[k] -= eps * direction
        fd = (objective(*plus) - objective(*minus)) / (2 * eps)
        assert (grads[k] * direction).sum().item() == pytest.approx(fd.item(), rel=2e-5, abs=1e-10), k


def test_precession_integration_runs_and_differs(quartz_crystal):
    rots = rotation_series(quartz_crystal, 1, 0.0, (0, 0, 1))
    hkl, frames = select_reflections(quartz_crystal, rots, g_max=0.9, rocking_semi_angle_deg=1.0,
                                     integration="precession")
    kwargs = dict(g_max=0.9, sg_max=0.05, rocking_semi_angle_deg=1.0, n_sub_orientations=6)
    t = torch.tensor([400.0], dtype=torch.float64)
    pre = frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, integration="precession",
                                        **kwargs), t)
    still = frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, g_max=0.9, sg_max=0.05), t)
    assert torch.isfinite(pre).all() and (pre - still).abs().max() > 1e-3


def test_bad_inputs(quartz_crystal, quartz_plan):
    rots = rotation_series(quartz_crystal, 2, 1.0)
    with pytest.raises(EmverseError, match="negative"):
        frame_intensities(quartz_plan, torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
    with pytest.raises(EmverseError, match="one thickness"):
        frame_intensities(quartz_plan, torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(EmverseError, match="frame_index"):
        plan_frames(quartz_crystal, rots, [[1, 0, 0]], [5])
    with pytest.raises(EmverseError, match="not rotation matrices"):
        plan_frames(quartz_crystal, 2 * rots, [[1, 0, 0]], [0])
    with pytest.raises(EmverseError, match="absorption"):
        plan = plan_frames(quartz_crystal, rots, [[1, 0, 0]], [0], absorption=0.1)
        frame_intensities(plan, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_absorption_reduces_total_intensity(quartz_crystal):
    rots = rotation_series(quartz_crystal, 1, 0.0, (0, 0, 1))
    plan = plan_frames(quartz_crystal, rots, [[1, 0, 0]], [0], g_max=0.9, sg_max=0.05, absorption=0.1)
    def total(t):
        return frame_intensities(plan, torch.tensor([t], dtype=torch.float64), method="expm",
                                 return_beams=True).sum().item()

    # thin crystal: the mean absorption U'_0 = κU_0 alone, I = exp(-2π t U'_0 / K)
    t = 2.0
    expected = math.exp(-2 * math.pi * t * 0.1 * plan.u0 / plan.wavenumber)
    assert total(t) == pytest.approx(expected, rel=1e-4)
    assert 0.0 < total(500.0) < total(100.0) < 1.0


@pytest.fixture(scope="module")
def quartz_series(quartz_crystal):
    """A wider case for the Bethe path: 4 frames near [213], |g| ≤ 1.3 Å⁻¹, 9 rocking samples over ±0.5°."""
    rots = rotation_series(quartz_crystal, 4, 2.3, (2, 1, 3))
    hkl, frames = select_reflections(quartz_crystal, rots, g_max=1.3, rocking_semi_angle_deg=0.5, rsg=0.9)
    return rots, hkl, frames, dict(g_max=1.3, sg_max=0.015, rocking_semi_angle_deg=0.5, n_sub_orientations=9,
                                   quadrature="trapezoid")


def _method(plan):
    return "eig_absorptive" if plan.absorption else "eig"


def _weighted_objective(plan, base, weights):
    from emverse_bloch.geometry import rotation_x

    def objective(thickness, angle, positions, u):
        rots = rotation_x(angle)[None] @ plan.orientations
        out = frame_intensities(plan, thickness, StructureParameters(positions, u, base.occupancy),
                                orientations=rots, method=_method(plan))
        return (out * weights).sum()

    return objective


@pytest.mark.parametrize("absorption", [0.0, 0.1])
def test_bethe_with_every_beam_strong_is_the_full_solve(quartz_crystal, quartz_series, absorption):
    """bethe_sg above every |S_g|: every beam is strong, so intensities and gradients are the
    full solve's (checks the per-problem bookkeeping: slots, grouping, scatter back), with
    first-order absorption too (the decay of each Bloch wave from the strong block's potential)."""
    rots, hkl, frames, kw = quartz_series
    full = plan_frames(quartz_crystal, rots, hkl, frames, absorption=absorption, **kw)
    bethe = plan_frames(quartz_crystal, rots, hkl, frames, bethe_sg=1.0, absorption=absorption, **kw)
    assert bethe.bethe is not None and len(bethe.bethe.groups) >= 1
    base = StructureParameters.from_crystal(quartz_crystal)
    weights = torch.linspace(0.2, 1.0, len(hkl), dtype=torch.float64)
    args = [torch.tensor([300.0, 500.0, 700.0, 900.0], dtype=torch.float64), torch.tensor(1e-3, dtype=torch.float64),
            base.positions.clone(), base.u_cif.clone()]
    results = []
    for plan in (full, bethe):
        a = [x.clone().requires_grad_(True) for x in args]
        value = _weighted_objective(plan, base, weights)(*a)
        results.append((value, torch.autograd.grad(value, a)))
    assert results[1][0].item() == pytest.approx(results[0][0].item(), rel=1e-12)
    for g_full, g_bethe in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g_bethe, g_full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("absorption", [0.0, 0.1])
def test_bethe_error_against_the_full_solve_shrinks_with_bethe_sg(quartz_crystal, quartz_series, absorption):
    """Weak beams folded in: the intensities approach the full solve as the strong set grows
    (second order in U/(2K S_w)); at 0.01 Å⁻¹ the summed error is below 0.2 % of the summed
    intensity here (quartz, 700 Å). With absorption the weak beams' absorptive part is folded
    in as well (first order in κ: 2κ for the U² fold, −κU'_0/(2K S_w) from their own diagonal)."""
    rots, hkl, frames, kw = quartz_series
    t = torch.full((4,), 700.0, dtype=torch.float64)
    method = "eig_absorptive" if absorption else "eig"
    exact = frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, absorption=absorption, **kw), t,
                              method=method)
    errors = []
    for sg in (0.003, 0.01, 0.015):
        plan = plan_frames(quartz_crystal, rots, hkl, frames, bethe_sg=sg, absorption=absorption, **kw)
        assert any(group.weak.shape[-1] > 0 for group in plan.bethe.groups)  # something was folded
        errors.append(((frame_intensities(plan, t, method=method) - exact).abs().sum() / exact.sum()).item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 2e-3


@pytest.mark.parametrize("absorption", [0.0, 0.1])
def test_bethe_gradients_match_finite_differences(quartz_crystal, quartz_series, absorption):
    rots, hkl, frames, kw = quartz_series
    plan = plan_frames(quartz_crystal, rots, hkl, frames, bethe_sg=0.005, absorption=absorption, **kw)
    base = StructureParameters.from_crystal(quartz_crystal)
    objective = _weighted_objective(plan, base, torch.linspace(0.2, 1.0, len(hkl), dtype=torch.float64))
    args = [torch.tensor([300.0, 500.0, 700.0, 900.0], dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
            base.positions.clone(), base.u_cif.clone()]
    _check_against_finite_differences(objective, args, [1e-3, 1e-7, 1e-7, 1e-7], seed=5)


@pytest.mark.parametrize("bethe_sg,absorption", [(0.0, 0.0), (0.005, 0.0), (0.0, 0.1), (0.005, 0.1)])
def test_float32_solves_agree_with_float64(quartz_crystal, quartz_series, bethe_sg, absorption):
    """complex64 eigensolves: intensities returned in float64, within 1e-5 (fractions of the
    incident beam) of the complex128 solve."""
    rots, hkl, frames, kw = quartz_series
    t = torch.tensor([300.0, 500.0, 700.0, 900.0], dtype=torch.float64)
    kw = dict(kw, bethe_sg=bethe_sg, absorption=absorption)
    method = "eig_absorptive" if absorption else "eig"
    double = frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, **kw), t, method=method)
    single = frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, solve_precision="float32", **kw), t,
                               method=method)
    assert single.dtype == torch.float64
    assert (single - double).abs().max().item() < 1e-5
    assert (single - double).abs().max().item() > 0.0  # it did solve in single precision


def test_bethe_and_precision_bad_inputs(quartz_crystal):
    rots = rotation_series(quartz_crystal, 1, 0.0, (0, 0, 1))
    with pytest.raises(EmverseError, match="bethe_sg"):
        plan_frames(quartz_crystal, rots, [[1, 0, 0]], [0], bethe_sg=-0.01)
    with pytest.raises(EmverseError, match="solve_precision"):
        plan_frames(quartz_crystal, rots, [[1, 0, 0]], [0], solve_precision="float16")
    t = torch.tensor([100.0], dtype=torch.float64)
    with pytest.raises(EmverseError, match="bethe_sg"):
        frame_intensities(plan_frames(quartz_crystal, rots, [[1, 0, 0]], [0], bethe_sg=0.01, absorption=0.1), t,
                          method="expm")


def _weakest_weak_beam(plan, orientations):
    """min |S_w| (Å⁻¹) over the weak beams of every problem of the plan's split, at ``orientations``."""
    full = (plan.sub_rotations[None] @ orientations.to(torch.float64)[:, None]).numpy()
    g = plan.crystal.g_vectors(plan.beams)
    s = -np.einsum("fkj,fnj->fkn", full[:, :, 2, :], g) - (g**2).sum(-1)[:, None, :] / (2 * plan.wavenumber)
    s = np.where(plan.beam_valid[:, None, :], np.abs(s), np.inf)
    return min(np.take_along_axis(s[group.frame, group.sub], group.weak, -1).min(initial=np.inf)
               for group in plan.bethe.groups)


def test_bethe_split_follows_refined_orientations(quartz_crystal, quartz_series, monkeypatch):
    """Orientations refined by 0.3° move S_g by up to ~0.008 Å⁻¹, more than bethe_sg/4: the
    strong/weak split is made again where the crystal now is, so every weak beam keeps
    |S_w| ≥ 0.75 bethe_sg (the stale split leaves weak beams nearer their Bragg condition,
    where 1/(2K S_w) is large), and the intensities stay within the Bethe error."""
    import emverse_bloch.ed3d as ed3d
    from emverse_bloch.geometry import rotation_x

    rots, hkl, frames, kw = quartz_series
    t = torch.full((4,), 700.0, dtype=torch.float64)
    turned = rotation_x(torch.tensor(math.radians(0.3), dtype=torch.float64))[None] @ rots
    exact = frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, **kw), t, orientations=turned)

    followed = plan_frames(quartz_crystal, rots, hkl, frames, bethe_sg=0.005, **kw)
    small = rotation_x(torch.tensor(1e-5, dtype=torch.float64))[None] @ rots  # drift far below bethe_sg/4
    frame_intensities(followed, t, orientations=small)
    torch.testing.assert_close(followed.bethe.orientations, rots.to(torch.float64))  # kept
    out = frame_intensities(followed, t, orientations=turned)
    torch.testing.assert_close(followed.bethe.orientations, turned)  # split again at 0.3°
    assert _weakest_weak_beam(followed, turned) >= 0.75 * 0.005
    assert ((out - exact).abs().sum() / exact.sum()).item() < 1e-2

    monkeypatch.setattr(ed3d, "SPLIT_DRIFT", math.inf)
    stale = plan_frames(quartz_crystal, rots, hkl, frames, bethe_sg=0.005, **kw)
    frame_intensities(stale, t, orientations=turned)
    assert _weakest_weak_beam(stale, turned) < 0.5 * 0.005


@pytest.mark.parametrize("bethe_sg", [0.0, 0.005])
def test_refined_absorption_gradient_matches_finite_differences(quartz_crystal, quartz_series, bethe_sg):
    """κ given at call time as a tensor (the plan's κ = 0.1 only chooses the absorptive solver):
    the same intensities as the plan's κ, and ∂/∂κ of a weighted sum equals central differences,
    through the full first-order solve and the Bethe fold."""
    rots, hkl, frames, kw = quartz_series
    plan = plan_frames(quartz_crystal, rots, hkl, frames, bethe_sg=bethe_sg, absorption=0.1, **kw)
    t = torch.tensor([300.0, 500.0, 700.0, 900.0], dtype=torch.float64)
    weights = torch.linspace(0.2, 1.0, len(hkl), dtype=torch.float64)

    def objective(kappa):
        return (frame_intensities(plan, t, method="eig_absorptive", absorption=kappa) * weights).sum()

    kappa = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    value = objective(kappa)
    (grad,) = torch.autograd.grad(value, kappa)
    assert objective(torch.tensor(0.1, dtype=torch.float64)).item() == pytest.approx(
        (frame_intensities(plan, t, method="eig_absorptive") * weights).sum().item(), rel=1e-12)
    h = 1e-5
    with torch.no_grad():
        numeric = (objective(torch.tensor(0.07 + h, dtype=torch.float64))
                   - objective(torch.tensor(0.07 - h, dtype=torch.float64))) / (2 * h)
    assert grad.item() < 0  # more absorption, less intensity
    assert grad.item() == pytest.approx(numeric.item(), rel=1e-6)
    with pytest.raises(EmverseError, match="absorption > 0"):
        frame_intensities(plan_frames(quartz_crystal, rots, hkl, frames, **kw), t, method="eig_absorptive",
                          absorption=kappa)
