"""Structures, symmetry, the refinable model's constraints."""

import numpy as np
import pytest
import torch
from emverse.crystal import Crystal, SymmetryOperation
from emverse.errors import EmverseError
from emverse_ed3d.model import RefinableStructure, SiteArrays
from emverse_ed3d.problem import check_cell_matches


@pytest.mark.parametrize("name,n_cell,site_orders", [
    ("quartz/quartz_refined_P3221.cif", 9, [2, 1]),       # Si on a 2-fold axis (3a), O general (6c)
    ("cspbbr3/cspbbr3_Pbnm.cif", 20, [2, 2, 1, 2]),       # Cs, Br2 on mirrors, Pb on -1, Br1 general
    ("paracetamol_formII/paracetamol_Pbca.cif", 160, [1] * 20),
])
def test_expansion_and_site_symmetry(pets_dir, name, n_cell, site_orders):
    crystal = Crystal.from_cif(pets_dir / name)
    s = SiteArrays(crystal)
    positions = crystal.atom_positions
    assert len(positions) == n_cell
    assert [len(ops) for ops in s.site_ops] == site_orders
    # no two atoms of the cell coincide
    A = s.cell_matrix
    d = positions[:, None] - positions[None]
    d -= np.round(d)
    dist = np.linalg.norm(d @ A.T, axis=-1) + np.eye(len(positions)) * 10
    assert dist.min() > 0.8  # Å (shortest bond in these structures is > 0.8 Å)


def test_anisotropic_adps_read_from_cif(quartz_structure):
    s = SiteArrays(quartz_structure)
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
    sites = st.asu
    A = sites.cell_matrix
    # Si stays on its 2-fold axis: the site-symmetry operation maps it onto itself
    for s in sites.site_ops[0]:
        R, t = sites.rotations[s], sites.translations[s]
        d = R @ frac[0] + t - frac[0]
        d -= np.round(d)
        assert np.linalg.norm(A @ d) < 1e-10
    # the general-position O moved, by at most Δ·√3
    shift = A @ (frac[1] - sites.frac[1])
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
    sites = st.asu
    A = sites.cell_matrix
    for i in range(sites.n_atoms):
        for s in sites.site_ops[i]:
            Rc = A @ sites.rotations[s] @ np.linalg.inv(A)
            assert np.allclose(Rc @ U[i] @ Rc.T, U[i], atol=1e-12)
    # the refined structure starts at the CIF's ADPs (round trip through the Cholesky factor)
    st2 = RefinableStructure(quartz_structure)
    assert np.allclose(st2.u_asu().detach().numpy(), sites.u_cart, atol=2e-6)


def test_isotropic_adps(pets_dir):
    s = Crystal.from_cif(pets_dir / "paracetamol_formII" / "paracetamol_Pbca.cif")
    st = RefinableStructure(s)
    assert not st.anisotropic and st.adp.shape == (20, 1)
    U = st.u_asu().detach().numpy()
    assert np.allclose(U[0], np.eye(3) * 0.0106, atol=2e-6)


def test_structure_whose_cell_disagrees_with_data_is_refused(pets_dir, quartz_exp):
    cspbbr3 = Crystal.from_cif(pets_dir / "cspbbr3" / "cspbbr3_Pbnm.cif")
    with pytest.raises(EmverseError, match="disagrees with the data cell"):
        check_cell_matches(cspbbr3, quartz_exp.cell)


def test_space_group_that_breaks_the_data_metric_is_refused(quartz_structure):
    # a 4-fold axis on a hexagonal cell does not preserve the metric
    bad = Crystal(quartz_structure.cell_lengths, quartz_structure.cell_angles, quartz_structure.sites[:1],
                  tuple(SymmetryOperation.from_xyz(t) for t in ("x,y,z", "-y,x,z")), spacegroup="P4")
    with pytest.raises(EmverseError, match="does not fit the data cell"):
        check_cell_matches(bad, (4.9226, 4.9226, 5.4003, 90, 90, 120))


def test_enantiomer(quartz_structure):
    other = quartz_structure.inverted(name="P3121")
    # P3₂21 -> P3₁21: the screw translations change sign
    assert sorted(round(op.translation[2], 6) for op in other.operations) == sorted(
        round((-op.translation[2]) % 1.0, 6) for op in quartz_structure.operations)
    pos = other.atom_positions
    ref = quartz_structure.atom_positions
    # inversion maps one cell onto the other
    inv = (-ref) % 1.0
    d = np.abs(((pos[:, None] - inv[None]) + 0.5) % 1.0 - 0.5).sum(-1)
    assert np.all(d.min(1) < 1e-6) and len(pos) == len(ref)
    # spglib names the groups from the operations alone: P3₂21 (154) -> P3₁21 (152)
    assert "_space_group_IT_number 154" in quartz_structure.to_cif()
    assert "_space_group_IT_number 152" in other.to_cif()


def test_refined_crystal_round_trips_through_a_cif(quartz_structure, tmp_path):
    """The refined structure written as a CIF reads back (ASE's parser) with the same
    positions, U tensors and symmetry."""
    st = RefinableStructure(quartz_structure)
    st.perturb(0.05, torch.Generator().manual_seed(4))
    refined = st.refined_crystal()
    refined.to_cif(tmp_path / "refined.cif")
    again = RefinableStructure(Crystal.from_cif(tmp_path / "refined.cif"))
    assert torch.allclose(again.frac_asu(), st.frac_asu().detach(), atol=1e-8)
    assert torch.allclose(again.u_asu(), st.u_asu().detach(), atol=1e-8)
    assert len(again.crystal.operations) == 6 and again.crystal.n_atoms == 9
