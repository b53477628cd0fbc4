"""Scattering and structure factors against abTEM's implementation; gradients; overrides."""

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse_bloch.scattering_factors import scattering_factor
from emverse_bloch.structure_factors import (
    Overrides,
    StructureParameters,
    forbidden,
    structure_factors,
)

HKL = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 1], [0, 0, 2], [1, 1, 0], [2, 0, 1], [-1, 0, 3],
                [3, -1, 2], [0, 0, 0]])


@pytest.mark.parametrize("name", ["lobato", "kirkland"])
def test_scattering_factors_match_abtem(name):
    from abtem.parametrizations import validate_parametrization

    g = np.linspace(0.0, 4.0, 41)
    par = validate_parametrization(name)
    for element in ("B", "Mg", "O", "Si"):
        ours = scattering_factor(element, torch.tensor(g**2), name).numpy()
        theirs = par.scattering_factor(element)(g**2)
        # abTEM evaluates in float32 (cancellation between large alternating Lobato terms: ~1e-5)
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("crystal_name", ["mgb2_crystal", "quartz_crystal"])
def test_structure_factors_match_abtem(crystal_name, request):
    from abtem.bloch.dynamical import calculate_structure_factors

    c = request.getfixturevalue(crystal_name)
    u_iso = 0.006
    structure = StructureParameters.from_crystal(c)
    structure.u_cif = StructureParameters.isotropic_u(c, torch.full((len(c.sites),), u_iso,
                                                                    dtype=torch.float64))
    ours = structure_factors(c, HKL, structure).numpy() / c.volume
    theirs = calculate_structure_factors(HKL, c.to_ase(), "lobato", g_max=100.0,
                                         thermal_sigma=np.sqrt(u_iso), cutoff="hard")
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7)  # abTEM works in float32


def test_friedel_and_centrosymmetry(mgb2_crystal, quartz_crystal):
    f = structure_factors(mgb2_crystal, np.concatenate([HKL, -HKL]))
    n = len(HKL)
    assert torch.allclose(f[:n], f[n:].conj(), atol=1e-12)
    assert f.imag.abs().max() < 1e-12  # Mg at the inversion centre: F real
    fq = structure_factors(quartz_crystal, np.concatenate([HKL, -HKL]))
    assert torch.allclose(fq[:n], fq[n:].conj(), atol=1e-12)
    assert fq.imag.abs().max() > 0.1  # non-centrosymmetric: phases


def test_gradients_match_finite_differences(quartz_crystal):
    c = quartz_crystal
    base = StructureParameters.from_crystal(c)
    weights = torch.randn(len(HKL), generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def objective(positions, u, occ):
        f = structure_factors(c, HKL, StructureParameters(positions, u, occ))
        return (weights * f.abs() ** 2).sum()

    args = [base.positions.clone().requires_grad_(True), base.u_cif.clone().requires_grad_(True),
            base.occupancy.clone().requires_grad_(True)]
    grads = torch.autograd.grad(objective(*args), args)
    gen = torch.Generator().manual_seed(2)
    for k in range(3):
        direction = torch.randn(args[k].shape, generator=gen, dtype=torch.float64)
        if k == 1:
            direction = direction + direction.transpose(-1, -2)
        eps = 1e-6
        plus = [a.detach().clone() for a in args]
        minus = [a.detach().clone() for a in args]
        plus[k] += eps * direction
        minus[k] -= eps * direction
        fd = (objective(*plus) - objective(*minus)) / (2 * eps)
        analytic = (grads[k] * direction).sum()
        assert analytic.item() == pytest.approx(fd.item(), rel=1e-6)


def test_batched_parameters_give_batched_factors(mgb2_crystal):
    base = StructureParameters.from_crystal(mgb2_crystal)
    u = base.u_cif.expand(4, -1, -1, -1) * torch.linspace(0.5, 2.0, 4, dtype=torch.float64)[:, None, None, None]
    f = structure_factors(mgb2_crystal, HKL, StructureParameters(base.positions, u, base.occupancy))
    assert f.shape == (4, len(HKL))
    single = structure_factors(mgb2_crystal, HKL, StructureParameters(base.positions, u[2], base.occupancy))
    assert torch.allclose(f[2], single, atol=1e-14)
    assert (f[0].abs()[:-1] > f[3].abs()[:-1]).all()  # more thermal damping, smaller |F|


def test_overrides_fill_equivalents(mgb2_crystal):
    table = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [1, -1, 0], [0, 0, 1], [0, 0, -1], [1, 0, 1]])
    plan = Overrides([(1, 0, 0), (0, 0, 1)]).plan(mgb2_crystal, table)
    f = structure_factors(mgb2_crystal, table)
    out = plan.apply(f, torch.tensor([0.5, -2.0], dtype=torch.float64))
    np.testing.assert_allclose(out.real.numpy(), [0.5, 0.5, 0.5, 0.5, -2.0, -2.0, f.real[-1].item()])


def test_override_errors(mgb2_crystal, silicon_crystal):
    table = np.array([[1, 0, 0], [0, 0, 1]])
    with pytest.raises(EmverseError, match=r"\(2, 0, 1\).*couples no pair"):
        Overrides([(2, 0, 1)]).plan(mgb2_crystal, table)
    assert forbidden(silicon_crystal, [[2, 0, 0]])[0]  # diamond glide: 200 forbidden
    with pytest.raises(EmverseError, match=r"\(2, 0, 0\).*forbidden"):
        Overrides([(2, 0, 0)]).plan(silicon_crystal, np.array([[2, 0, 0]]))
