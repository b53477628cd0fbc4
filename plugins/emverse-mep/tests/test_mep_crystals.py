"""Random crystals, orientation and rendering into phase volumes."""

import math

import numpy as np
import pytest
from ase import Atoms
from emverse.errors import EmverseError
from emverse_mep.crystals import orient_along, random_crystal, read_cif_directory
from emverse_mep.render import interaction_parameter, render_volume

# h² / (2π m₀ e) in V·Å²: ∫ V(r) d³r = C · f_e(0) for an atom with electron
# scattering factor f_e (Å) — the first Born approximation (Kirkland, eq. 5.16).
BORN_CONSTANT_V_A2 = 47.878


def test_random_crystals_are_reproducible_and_plausible():
    a = random_crystal(np.random.default_rng(5))
    b = random_crystal(np.random.default_rng(5))
    assert a.get_chemical_formula() == b.get_chemical_formula()
    np.testing.assert_allclose(a.positions, b.positions)
    rng = np.random.default_rng(0)
    groups = set()
    for _ in range(12):
        atoms = random_crystal(rng, min_distance_angstrom=1.7)
        assert max(atoms.cell.lengths()) < 20.0
        np.testing.assert_allclose(atoms.cell.angles(), 90.0, atol=1e-6)
        d = atoms.get_all_distances(mic=True) + np.eye(len(atoms)) * 1e9
        assert d.min() >= 1.7 - 1e-9
        groups.add(atoms.info["spacegroup"])
    assert len(groups) >= 5  # varied symmetry


def test_random_crystal_has_its_space_group_symmetry():
    from ase.spacegroup import Spacegroup

    rng = np.random.default_rng(3)
    for _ in range(5):
        atoms = random_crystal(rng)
        if atoms.info["spacegroup"] >= 143:  # orthohexagonal cells: skip the check of the setting
            continue
        sg = Spacegroup(atoms.info["spacegroup"])
        frac = atoms.get_scaled_positions()
        for rot, trans in sg.get_symop()[:8]:
            image = (frac @ rot.T + trans) % 1.0
            diff = (image[:, None, :] - frac[None, :, :] + 0.5) % 1.0 - 0.5
            assert np.all(np.min(np.abs(diff).max(axis=2), axis=1) < 1e-6)


def test_orient_along_permutes_axes():
    atoms = Atoms("Si", positions=[[1.0, 2.0, 3.0]], cell=np.diag([4.0, 5.0, 6.0]), pbc=True)
    along_a = orient_along(atoms, 0)
    np.testing.assert_allclose(along_a.cell.lengths(), [5.0, 6.0, 4.0])
    np.testing.assert_allclose(along_a.positions[0], [2.0, 3.0, 1.0])
    with pytest.raises(EmverseError, match="major axis"):
        orient_along(atoms, 3)


def test_cif_directory_errors(tmp_path):
    with pytest.raises(EmverseError, match="not a directory"):
        read_cif_directory(tmp_path / "missing")
    with pytest.raises(EmverseError, match="no usable"):
        read_cif_directory(tmp_path)


def _simple_cubic(a=3.2, symbol="Si"):
    return Atoms(symbol, positions=[[0.0, 0.0, 0.0]], cell=np.diag([a, a, a]), pbc=True)


def test_rendered_mean_phase_matches_mean_inner_potential():
    """Mean phase per voxel = σ · Δz · V_mean with V_mean = C f_e(0) / V_cell
    (the mean inner potential), independent of how abTEM slices the atoms.
    f_e(0) for Si from abTEM's Lobato table (f(0) = 2 Σ a_i)."""
    import json
    import os

    import abtem

    table = json.load(open(os.path.join(os.path.dirname(abtem.__file__), "parametrizations", "data", "lobato.json")))
    f0 = 2.0 * float(np.sum(table["Si"][0]))
    a = 3.2
    shape = (4, 48, 48)
    vol = render_volume(_simple_cubic(a), shape, np.random.default_rng(0), vacancy_fraction=0.0, rotate=False)
    v_mean = BORN_CONSTANT_V_A2 * f0 / a**3  # V
    expected = interaction_parameter(300.0) * v_mean * 1.6  # rad per 1.6 Å slice
    assert vol.mean() == pytest.approx(expected, rel=0.05)


def test_rendered_volume_is_periodic_with_the_lattice():
    """Unrotated simple cubic (a = 4 Å = 20 px): the depth sum repeats every 20 px."""
    vol = render_volume(_simple_cubic(4.0), (4, 64, 64), np.random.default_rng(1), vacancy_fraction=0.0,
                        rotate=False)
    img = vol.sum(0)
    a, b = img[:, :44], img[:, 20:]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # a half-period shift must not match
    c = img[:, 10:54]
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] < 0.5


def test_vacancies_and_rotation_change_the_volume():
    atoms = _simple_cubic(3.2)
    full = render_volume(atoms, (4, 64, 64), np.random.default_rng(2), vacancy_fraction=0.0, rotate=True)
    holes = render_volume(atoms, (4, 64, 64), np.random.default_rng(2), vacancy_fraction=0.5, rotate=True)
    # ~60 atoms in the field: removing half of them leaves 30-70 % of the phase
    assert 0.3 < holes.sum() / full.sum() < 0.7
    turned = render_volume(atoms, (4, 64, 64), np.random.default_rng(3), vacancy_fraction=0.0, rotate=True)
    assert not np.allclose(turned, full)
    with pytest.raises(EmverseError, match="vacancy_fraction"):
        render_volume(atoms, (4, 32, 32), np.random.default_rng(2), vacancy_fraction=1.5)
    with pytest.raises(EmverseError, match="square"):
        render_volume(atoms, (4, 32, 16), np.random.default_rng(2))
    assert math.isfinite(float(full.std()))
