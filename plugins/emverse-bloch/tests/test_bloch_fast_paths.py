"""The fast paths of the Bloch solver against the full complex Hermitian solve:
the real symmetric eigh (exact), the chunked backward (exact), float32 (measured),
Bethe potentials (approximate, within the bound stated in docs/emverse-bloch.md)."""

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse_bloch import bloch
from emverse_bloch.bloch import propagate
from emverse_bloch.cbed import BlochCBED
from emverse_bloch.simulate import zone_axis_intensities
from emverse_bloch.structure_factors import is_real_potential, structure_factors

THICKNESS = [100.0, 1000.0, 2800.0]  # Å
TILT = (torch.tensor([0.0, 1.3e-3, -2.1e-3], dtype=torch.float64),
        torch.tensor([0.0, -0.7e-3, 2.6e-3], dtype=torch.float64))  # rad
BEAMS_117 = dict(g_max=2.0, sg_max=0.05, mip_corrected=False)  # MgB2 [010]: 117 beams


def test_real_potential_detection(mgb2_crystal, silicon_crystal, quartz_crystal):
    hkl = np.array([[1, 0, 0], [1, 0, 1], [1, 1, 1], [0, 0, 2], [2, 1, 3]])
    assert is_real_potential(mgb2_crystal, structure_factors(mgb2_crystal, hkl))
    # Si in Fd-3m origin choice 1: centrosymmetric, but the origin is not the inversion centre
    assert silicon_crystal.is_centrosymmetric
    assert not is_real_potential(silicon_crystal, structure_factors(silicon_crystal, hkl))
    assert not is_real_potential(quartz_crystal, structure_factors(quartz_crystal, hkl))


def test_real_symmetric_solve_is_exact(mgb2_crystal):
    kw = dict(BEAMS_117, tilt_rad=TILT, return_amplitudes=True)
    beams, psi_real = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, **kw)
    _, psi_complex = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, real_symmetric=False, **kw)
    assert len(beams) == 117
    intensity = lambda psi: psi.abs() ** 2  # noqa: E731
    assert (intensity(psi_real) - intensity(psi_complex)).abs().max() < 1e-12
    # amplitudes agree too: the real route is the same solution, not only its modulus
    assert (psi_real - psi_complex).abs().max() < 1e-10
    with pytest.raises(EmverseError, match="structure factors are complex"):
        zone_axis_intensities(mgb2_crystal.__class__.from_sites(
            [5.431] * 3, [90.0] * 3, [dict(element="Si", position=[0, 0, 0], u_iso=0.0045)],
            spacegroup=227, name="Si"), (1, 1, 0), [10.0], real_symmetric=True)


def test_real_symmetric_gradient():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.tensor([2.0, 9.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: propagate(x + x.T, t, 2.0, "eig"), (x, t))
    # and it is the real part of the complex route's gradient
    weights = torch.rand(2, 7, dtype=torch.float64, generator=gen)
    (grad_real,) = torch.autograd.grad((propagate(x + x.T, t, 2.0).abs() ** 2 * weights).sum(), x)
    xc = torch.complex(x.detach(), torch.zeros_like(x)).requires_grad_(True)
    (grad_complex,) = torch.autograd.grad((propagate(xc + xc.mH, t, 2.0).abs() ** 2 * weights).sum(), xc)
    assert torch.allclose(grad_real, grad_complex.real, atol=1e-12)


def test_chunked_backward_equals_one_chunk(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(5, 3, 6, 6, dtype=torch.complex128, generator=gen)
    a = (a + a.mH).requires_grad_(True)
    t = torch.tensor([4.0, 7.0], dtype=torch.float64)

    def gradient():
        return torch.autograd.grad((propagate(a, t, 2.0).abs() ** 2).sum(), a)[0]

    whole = gradient()
    monkeypatch.setattr(bloch, "BACKWARD_CHUNK_ELEMENTS", 2 * 6 * 6 * 2)  # 2 matrices per chunk
    assert torch.equal(gradient(), whole)


def test_float32_within_1e4_at_117_beams(mgb2_crystal):
    _, ref = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, tilt_rad=TILT, **BEAMS_117)
    _, single = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, dtype=torch.float32,
                                      tilt_rad=(TILT[0].float(), TILT[1].float()), **BEAMS_117)
    assert single.dtype == torch.float32
    assert (single.double() - ref).abs().max() < 1e-4


def test_bethe_potentials_against_full_solve(mgb2_crystal):
    kw = dict(BEAMS_117, tilt_rad=TILT)
    _, full = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, **kw)
    _, all_strong = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, bethe_strong_beams=117, **kw)
    assert (all_strong - full).abs().max() < 1e-12  # nothing folded: the exact solve
    errors = {}
    for n in (60, 80, 100):
        _, folded = zone_axis_intensities(mgb2_crystal, (0, 1, 0), THICKNESS, bethe_strong_beams=n, **kw)
        errors[n] = (folded - full).abs().max().item()
    # the bound stated in docs/emverse-bloch.md for 80 of 117 beams, t <= 2800 Å
    assert errors[80] < 5e-3, errors
    assert errors[100] < errors[60], errors  # more strong beams, smaller error
    with pytest.raises(EmverseError, match="strong_beams 0 must be >= 1"):
        from emverse_bloch.bethe import propagate_bethe

        propagate_bethe(torch.eye(3), torch.tensor([1.0]), 40.0, 0)


def test_cbed_picks_the_real_route_and_matches_the_complex_one():
    model = BlochCBED(detector_pixels=16, g_max=1.0)
    assert model.real_symmetric
    x = model.default_parameters()
    with torch.no_grad():
        fast = model(x)
        model.real_symmetric = False
        slow = model(x)
    assert (fast - slow).abs().max() < 1e-12
    bethe = BlochCBED(detector_pixels=16, g_max=1.0, bethe_strong_beams=model.n_beams)
    with torch.no_grad():
        assert (bethe(x) - fast).abs().max() < 1e-12
    assert not BlochCBED(detector_pixels=16, g_max=1.0, method="expm").real_symmetric


def test_bethe_switch_reaches_the_model_from_recipe_params():
    from emverse_bloch.params import CbedParams

    model = BlochCBED.from_params(CbedParams(detector_pixels=8, g_max=1.0, bethe_strong_beams=12))
    assert model.bethe_strong_beams == 12
    assert CbedParams().bethe_strong_beams == 0  # off by default


def _grid(n=3, step=0.8e-3):
    axis = torch.arange(-n, n + 1, dtype=torch.float64) * step
    tx, ty = torch.meshgrid(axis, axis, indexing="xy")
    return tx.reshape(-1), ty.reshape(-1)


@pytest.mark.parametrize("broken", [False, True])
def test_symmetric_directions_share_solves_exactly(mgb2_crystal, broken):
    """Directions related by the 2mm symmetry of MgB2 [010] share one solve; a U tensor
    that breaks the mirrors (U13 ≠ 0 on Mg: U(h0l) ≠ U(-h0l)) must switch those off and
    keep the 2-fold axis, so both cases agree with solving every direction."""
    from emverse_bloch.direction_symmetry import share_directions, zone_axis_operations
    from emverse_bloch.geometry import select_beams, zone_axis_orientation
    from emverse_bloch.structure_factors import StructureParameters
    from emverse_bloch.structure_matrix import CouplingTable

    structure = StructureParameters.from_crystal(mgb2_crystal)
    if broken:
        u = structure.u_cif.clone()
        u[0] = torch.tensor([[0.006, 0.003, 0.002], [0.003, 0.006, 0.0], [0.002, 0.0, 0.004]])
        structure = StructureParameters(structure.positions, u, structure.occupancy)
    tx, ty = _grid()
    kw = dict(g_max=1.2, thickness=[300.0, 2800.0], structure=structure, tilt_rad=(tx, ty))
    with torch.no_grad():
        _, shared = zone_axis_intensities(mgb2_crystal, (0, 1, 0), **kw)
        _, every = zone_axis_intensities(mgb2_crystal, (0, 1, 0), share_symmetric_directions=False, **kw)
    assert (shared - every).abs().max() < 1e-12
    orientation = zone_axis_orientation(mgb2_crystal, (0, 1, 0))
    beams = select_beams(mgb2_crystal, orientation, 40.0, 1.2, 0.05)
    table = CouplingTable(beams)
    operations = zone_axis_operations(mgb2_crystal, (0, 1, 0), orientation, beams, table.hkl,
                                      structure_factors(mgb2_crystal, table.hkl, structure))
    representatives, _, _ = share_directions(torch.tan(tx).numpy(), torch.tan(ty).numpy(), operations)
    if broken:
        assert len(operations) == 1  # only the 2-fold axis (h, l) -> (-h, -l) holds
        assert len(representatives) == 25
    else:
        assert len(operations) == 3  # 2mm: two mirrors and the 2-fold axis
        assert len(representatives) == 16  # 49 grid directions, 16 orbits
