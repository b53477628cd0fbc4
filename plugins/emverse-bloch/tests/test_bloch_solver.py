"""The Bloch solver against analytic results: two-beam Pendellösung, conservation,
the kinematic limit, Friedel's law; eig vs expm; gradients (also on a zone axis)."""

import math

import numpy as np
import pytest
import torch
from emverse.electron import wavelength_angstrom
from emverse.errors import EmverseError
from emverse_bloch.bloch import intensities, propagate
from emverse_bloch.simulate import wavenumber_for, zone_axis_intensities
from emverse_bloch.structure_factors import StructureParameters


def two_beam_matrix(u_g, s_g, k):
    return torch.tensor([[0.0, u_g], [np.conj(u_g), 2 * k * s_g]], dtype=torch.complex128)


@pytest.mark.parametrize("method", ["eig", "expm"])
@pytest.mark.parametrize("s_g", [0.0, 2e-3, -5e-3])
def test_two_beam_pendelloesung(method, s_g):
    k = 1.0 / wavelength_angstrom(200.0)
    u_g = 0.02 * complex(math.cos(0.7), math.sin(0.7))  # Å⁻²
    xi = k / abs(u_g)  # extinction distance (Å)
    w2 = (s_g * xi) ** 2
    t = torch.linspace(0.0, 3 * xi, 61, dtype=torch.float64)
    intensity = intensities(two_beam_matrix(u_g, s_g, k), t, k, method)
    analytic = np.sin(np.pi * t.numpy() * np.sqrt(1 + w2) / xi) ** 2 / (1 + w2)
    # relative 1e-6 where the beam is not extinguished; absolute 1e-12 at the nodes
    np.testing.assert_allclose(intensity[:, 1].numpy(), analytic, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(intensity.sum(-1).numpy(), 1.0, rtol=1e-12)
    if s_g == 0.0:  # full transfer at half the extinction distance
        half = intensities(two_beam_matrix(u_g, 0.0, k), torch.tensor([xi / 2]), k, method)
        assert half[0, 1].item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("method", ["eig", "expm"])
def test_conservation_any_thickness(mgb2_crystal, method):
    t = [0.0, 37.0, 512.0, 2800.0, 9000.0]
    _, amplitudes = zone_axis_intensities(mgb2_crystal, (0, 1, 0), t, g_max=1.2, method=method,
                                          tilt_rad=(1e-3, -2e-3), return_amplitudes=True)
    total = (amplitudes.abs() ** 2).sum(-1)
    np.testing.assert_allclose(total.numpy(), 1.0, atol=1e-10)


def test_eig_and_expm_agree(mgb2_crystal):
    t = [100.0, 2800.0]
    _, a = zone_axis_intensities(mgb2_crystal, (0, 1, 0), t, g_max=1.5, method="eig")
    _, b = zone_axis_intensities(mgb2_crystal, (0, 1, 0), t, g_max=1.5, method="expm")
    assert torch.allclose(a, b, atol=1e-10)
    _, c = zone_axis_intensities(mgb2_crystal, (0, 1, 0), t, g_max=1.5, dtype=torch.float32)
    assert c.dtype == torch.float32
    assert torch.allclose(c.double(), a, atol=2e-4)


def test_thin_crystal_kinematic_limit(mgb2_crystal):
    """I_g → (π t |U_g| M_g/K)² sinc²(π S_g t) for small t (first-order perturbation)."""
    c = mgb2_crystal
    voltage = 200.0
    k = wavenumber_for(c, voltage)
    for t in (0.5, 1.0):
        beams, psi = zone_axis_intensities(c, (0, 1, 0), [t], g_max=1.5, return_amplitudes=True)
        from emverse.electron import potential_prefactor
        from emverse_bloch.geometry import zone_axis_orientation
        from emverse_bloch.structure_factors import structure_factors

        u = structure_factors(c, -beams).abs().numpy() * potential_prefactor(voltage) / c.volume
        g = c.g_vectors(beams) @ zone_axis_orientation(c, (0, 1, 0)).T
        s = -g[:, 2] - (g**2).sum(-1) / (2 * k)
        kin = (np.pi * t * u / k) ** 2 * np.sinc(s * t) ** 2
        dyn = (psi.abs() ** 2)[0].numpy()
        strong = kin > 1e-3 * kin[1:].max()
        strong[0] = False
        np.testing.assert_allclose(dyn[strong], kin[strong], rtol=0.01)
    # and the intensities grow as t²
    _, i1 = zone_axis_intensities(c, (0, 1, 0), [0.25, 0.5], g_max=1.5)
    ratio = (i1[1, 1:] / i1[0, 1:]).numpy()
    assert np.all(np.abs(ratio[i1[0, 1:].numpy() > 1e-9] - 4.0) < 0.04)


def test_friedel_pairs_centro_vs_quartz(mgb2_crystal, quartz_crystal):
    def pair_difference(crystal, zone_axis, t):
        beams, intensity = zone_axis_intensities(crystal, zone_axis, [t], g_max=1.2, sg_max=0.02)
        lookup = {tuple(h): i for i, h in enumerate(beams)}
        worst, scale = 0.0, 0.0
        for h, i in lookup.items():
            j = lookup.get(tuple(-v for v in h))
            if j is None or h == (0, 0, 0):
                continue
            a, b = intensity[0, i].item(), intensity[0, j].item()
            if max(a, b) > 1e-3:
                worst = max(worst, abs(a - b) / max(a, b))
                scale = max(scale, max(a, b))
        return worst

    assert pair_difference(mgb2_crystal, (0, 1, 0), 800.0) < 1e-9
    # quartz [001]: the projection lacks an inversion centre, Friedel's law fails dynamically
    assert pair_difference(quartz_crystal, (0, 0, 1), 800.0) > 0.05
    # ... but not kinematically (thin crystal)
    assert pair_difference(quartz_crystal, (0, 0, 1), 0.5) < 2e-2


@pytest.mark.parametrize("method", ["eig", "expm"])
def test_gradients_finite_exactly_on_zone_axis(mgb2_crystal, method):
    """On the zone axis, ±g pairs give degenerate eigenvalues; gradients stay finite and
    agree with finite differences."""
    c = mgb2_crystal
    base = StructureParameters.from_crystal(c)
    tilt = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    thickness = torch.tensor([700.0], dtype=torch.float64, requires_grad=True)
    u = base.u_cif.clone().requires_grad_(True)
    weights = torch.linspace(0.1, 1.0, 31, dtype=torch.float64)

    def objective(tilt, thickness, u):
        _, i = zone_axis_intensities(c, (0, 1, 0), thickness, g_max=1.0, method=method,
                                     tilt_rad=(tilt[0], tilt[1]),
                                     structure=StructureParameters(base.positions, u, base.occupancy))
        return (i[0] * weights[: i.shape[-1]]).sum()

    value = objective(tilt, thickness, u)
    grads = torch.autograd.grad(value, (tilt, thickness, u))
    for g in grads:
        assert torch.isfinite(g).all()
    eps = 1e-6
    for k, arg in enumerate((tilt, thickness, u)):
        direction = torch.ones_like(arg) if k != 2 else torch.eye(3, dtype=torch.float64).expand_as(arg)
        args_p = [a.detach().clone() for a in (tilt, thickness, u)]
        args_m = [a.detach().clone() for a in (tilt, thickness, u)]
        args_p[k] += eps * direction
        args_m[k] -= eps * direction
        fd = (objective(*args_p) - objective(*args_m)) / (2 * eps)
        an = (grads[k] * direction).sum()
        assert an.item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)


def test_eig_route_gradient_matches_autograd_of_expm():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 6, dtype=torch.complex128, generator=gen, requires_grad=True)
    t = torch.tensor([3.0, 11.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: propagate(x + x.mH, t, 2.0, "eig"), (x, t))


def test_bad_input_errors(mgb2_crystal):
    with pytest.raises(EmverseError, match="thickness -5 Å is negative"):
        intensities(two_beam_matrix(0.01, 0.0, 40.0), torch.tensor([-5.0]), 40.0)
    with pytest.raises(EmverseError, match="leave only the direct beam"):
        zone_axis_intensities(mgb2_crystal, (0, 1, 0), [10.0], g_max=0.1)
    with pytest.raises(EmverseError, match=r"zone_axis \[0, 0, 0\] is not a direction"):
        zone_axis_intensities(mgb2_crystal, (0, 0, 0), [10.0])
    with pytest.raises(EmverseError, match="method 'lu' is unknown"):
        intensities(two_beam_matrix(0.01, 0.0, 40.0), torch.tensor([5.0]), 40.0, method="lu")
