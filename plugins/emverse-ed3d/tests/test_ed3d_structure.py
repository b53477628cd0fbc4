"""Structures, symmetry, the refinable model's constraints."""

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse_ed3d.crystal import (
    check_cell_matches,
    direct_matrix,
    parse_symop,
    read_structure,
)
from emverse_ed3d.model import RefinableStructure


def test_parse_symop():
    R, t = parse_symop("-y,x-y,z+2/3")
    assert np.array_equal(R, [[0, -1, 0], [1, -1, 0], [0, 0, 1]])
    assert np.allclose(t, [0, 0, 2 / 3])
    R, t = parse_symop("-x+1/2, y+1/2, -z")
    assert np.array_equal(R, np.diag([-1, 1, -1])) and np.allclose(t, [0.5, 0.5, 0])
    with pytest.raises(EmverseError, match="three comma-separated"):
        parse_symop("x,y")


@pytest.mark.parametrize("name,n_cell,site_orders", [
    ("quartz/quartz_refined_P3221.cif", 9, [2, 1]),       # Si on a 2-fold axis (3a), O general (6c)
    ("cspbbr3/cspbbr3_Pbnm.cif", 20, [2, 2, 1, 2]),       # Cs, Br2 on mirrors, Pb on -1, Br1 general
    ("paracetamol_formII/paracetamol_Pbca.cif", 160, [1] * 20),
])
def test_expansion_and_site_symmetry(pets_dir, name, n_cell, site_orders):
    s = read_structure(pets_dir / name)
    positions, elements = s.expand()
    assert len(positions) == n_cell
    assert [len(s.site_symmetry(i)) for i in range(s.n_atoms)] == site_orders
    # no two atoms of the cell coincide
    A = direct_matrix(s.cell)
    d = positions[:, None] - positions[None]
    d -= np.round(d)
    dist = np.linalg.norm(d @ A.T, axis=-1) + np.eye(len(positions)) * 10
    assert dist.min() > 0.8  # Å (shortest bond in these structures is > 0.8 Å)


def test_anisotropic_adps_read_from_cif(quartz_structure):
    s = quartz_structure
    # Si1 lies on the 2-fold axis along a: the CIF has U12 = U22/2 and U23 = 2·U13 (hexagonal rules)
    assert s.anisotropic.all()
    u = s.u_cart[0]
    assert np.all(np.linalg.eigvalsh(u) > 0)
    # U_eq = trace/3 against the hexagonal closed form (a·a* = 2/√3, γ = 120°):
    # U_eq = [4/3 (U11 + U22) + U33 − 4/3 U12] / 3 with the CIF values of Si1
    u11, u22, u33, u12 = 0.012306, 0.011452, 0.005230, 0.006153
    assert np.trace(u) / 3 == pytest.approx((4 / 3 * (u11 + u22) + u33 - 4 / 3 * u12) / 3, rel=1e-9)


def test_perturbation_keeps_special_positions_and_symmetry(quartz_structure):
    st = RefinableStructure(quartz_structure)
    st.perturb(0.2, torch.Generator().manual_seed(3))
    frac = st.frac_asu().detach().numpy()
    A = direct_matrix(quartz_structure.cell)
    # Si stays on its 2-fold axis: the site-symmetry operation maps it onto itself
    for s in quartz_structure.site_symmetry(0):
        R, t = quartz_structure.rotations[s], quartz_structure.translations[s]
        d = R @ frac[0] + t - frac[0]
        d -= np.round(d)
        assert np.linalg.norm(A @ d) < 1e-10
    # the general-position O moved, by at most Δ·√3
    shift = A @ (frac[1] - quartz_structure.frac[1])
    assert 0.01 < np.linalg.norm(shift) <= 0.2 * np.sqrt(3) + 1e-9
    # the expanded cell keeps 9 distinct atoms
    cell_frac, _, _ = st.cell_atoms()
    assert cell_frac.shape == (9, 3)


def test_adp_cholesky_is_positive_definite_and_site_symmetric(quartz_structure):
    st = RefinableStructure(quartz_structure)
    with torch.no_grad():
        st.adp.copy_(torch.randn(st.adp.shape, generator=torch.Generator().manual_seed(0), dtype=st.adp.dtype) * 0.2)
    U = st.u_asu().detach().numpy()
    assert np.all(np.linalg.eigvalsh(U) > 0)
    A = direct_matrix(quartz_structure.cell)
    for i in range(quartz_structure.n_atoms):
        for s in quartz_structure.site_symmetry(i):
            Rc = A @ quartz_structure.rotations[s] @ np.linalg.inv(A)
            assert np.allclose(Rc @ U[i] @ Rc.T, U[i], atol=1e-12)
    # the refined structure starts at the CIF's ADPs (round trip through the Cholesky factor)
    st2 = RefinableStructure(quartz_structure)
    assert np.allclose(st2.u_asu().detach().numpy(), quartz_structure.u_cart, atol=2e-6)


def test_isotropic_adps(pets_dir):
    s = read_structure(pets_dir / "paracetamol_formII" / "paracetamol_Pbca.cif")
    st = RefinableStructure(s)
    assert not st.anisotropic and st.adp.shape == (20, 1)
    U = st.u_asu().detach().numpy()
    assert np.allclose(U[0], np.eye(3) * 0.0106, atol=2e-6)


def test_structure_whose_cell_disagrees_with_data_is_refused(pets_dir, quartz_exp):
    cspbbr3 = read_structure(pets_dir / "cspbbr3" / "cspbbr3_Pbnm.cif")
    with pytest.raises(EmverseError, match="disagrees with the data cell"):
        check_cell_matches(cspbbr3, quartz_exp.cell)


def test_space_group_that_breaks_the_data_metric_is_refused(quartz_structure):
    import attrs

    # a 4-fold axis on a hexagonal cell does not preserve the metric
    bad = attrs.evolve(quartz_structure, space_group="P4", rotations=np.array([np.eye(3), [[0, -1, 0], [1, 0, 0], [0, 0, 1]]]),
                       translations=np.zeros((2, 3)))
    with pytest.raises(EmverseError, match="does not fit the data cell"):
        check_cell_matches(bad, quartz_structure.cell)


def test_enantiomer(quartz_structure):
    other = quartz_structure.enantiomer("P3121")
    assert other.space_group == "P3121"
    pos, _ = other.expand()
    ref, _ = quartz_structure.expand()
    # inversion maps one cell onto the other
    inv = (-ref) % 1.0
    d = np.abs(((pos[:, None] - inv[None]) + 0.5) % 1.0 - 0.5).sum(-1)
    assert np.all(d.min(1) < 1e-6)
