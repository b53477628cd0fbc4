"""Crystal input: CIF parsing, space-group expansion, site symmetry, bad input."""

import numpy as np
import pytest
from ase.io import read
from emverse.errors import EmverseError
from emverse_bloch.crystal import Crystal, data_path


def test_mgb2_expands_to_three_atoms(mgb2_crystal):
    c = mgb2_crystal
    assert c.n_atoms == 3
    assert c.atom_elements.count("B") == 2
    assert c.volume == pytest.approx(3.086**2 * 3.524 * np.sqrt(3) / 2, rel=1e-9)
    # the same cell as ASE's own CIF reader (an independent expansion)
    ref = read(data_path("MgB2.cif"))
    ours = sorted(map(tuple, np.round(c.atom_positions, 6)))
    theirs = sorted(map(tuple, np.round(np.mod(ref.get_scaled_positions(), 1.0), 6)))
    assert ours == theirs


def test_quartz_expansion_and_bond_length(quartz_crystal):
    from ase.geometry import get_distances

    q = quartz_crystal
    assert q.n_atoms == 9 and q.atom_elements.count("Si") == 3
    assert not q.is_centrosymmetric
    cart = q.atom_positions @ q.lattice
    d = get_distances(cart[:3], cart[3:], cell=q.lattice, pbc=True)[1]
    # Si-O in alpha-quartz: 1.605-1.614 Å (published); the refined CIF gives 1.605/1.617
    assert 1.59 < d.min() < 1.62
    # atoms made by x = R x_site + t, exactly
    for a in range(q.n_atoms):
        site = q.sites[q.atom_site[a]]
        x = q.atom_rotation[a] @ site.position + q.atom_translation[a]
        np.testing.assert_allclose(x, q.atom_positions[a], atol=1e-12)


def test_site_symmetry_and_constraints(mgb2_crystal, quartz_crystal):
    c = mgb2_crystal
    assert len(c.site_symmetry(0)) == 24  # Mg on 1a: 6/mmm
    assert len(c.site_symmetry(1)) == 12  # B on 2d: -6m2
    assert c.position_basis(0)[1].shape == (3, 0)
    assert c.position_basis(1)[1].shape == (3, 0)
    basis = c.adp_basis(0)  # U11 = U22, U12 = U11/2, U13 = U23 = 0 on a hexagonal 6/mmm site
    assert basis.shape == (6, 2)
    for v in basis.T:
        assert v[0] == pytest.approx(v[1], abs=1e-9)
        assert v[3] == pytest.approx(v[0] / 2, abs=1e-9)
        assert abs(v[4]) < 1e-9 and abs(v[5]) < 1e-9
    q = quartz_crystal
    assert q.position_basis(0)[1].shape == (3, 1)  # Si on a 2-fold axis (3a): one free coordinate
    assert q.position_basis(1)[1].shape == (3, 3)  # O general position
    assert q.adp_basis(1).shape == (6, 6)


def test_anisotropic_u_read_from_cif(quartz_crystal):
    si = quartz_crystal.sites[0]
    assert si.anisotropic
    assert si.u_cif[0, 0] == pytest.approx(0.012306)
    assert si.u_cif[0, 1] == pytest.approx(0.006153)


def test_bad_cif_is_reported(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("this is not a cif\n")
    with pytest.raises(EmverseError, match="bad.cif"):
        Crystal.from_cif(bad)
    with pytest.raises(EmverseError, match="does not exist"):
        Crystal.from_cif(tmp_path / "missing.cif")


def test_unknown_element_is_reported():
    with pytest.raises(EmverseError, match="element 'Xx' is unknown"):
        Crystal.from_sites([3.0] * 3, [90.0] * 3, [dict(element="Xx", position=[0, 0, 0])])


def test_unknown_space_group_is_reported():
    with pytest.raises(EmverseError, match="space group"):
        Crystal.from_sites([3.0] * 3, [90.0] * 3, [dict(element="Si", position=[0, 0, 0])],
                           spacegroup=999)
