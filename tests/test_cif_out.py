"""Crystal.to_cif (the one CIF writer): a refined structure reloads in ase and in emverse.crystal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from emverse.crystal import Crystal, with_uncertainty

pytest.importorskip("ase")


def test_written_cif_reloads_with_the_same_structure(tmp_path):
    crystal = Crystal.from_sites((5.1376, 5.1376, 13.8497), (90, 90, 120), [
        {"label": "Nb1", "element": "Nb", "position": (0, 0, 0), "u_iso": 0.005},
        {"label": "Li1", "element": "Li", "position": (0, 0, 0.2829), "u_iso": 0.006},
        {"label": "O1", "element": "O", "position": (0.0492, 0.3446, 0.0647), "u_iso": 0.007},
    ], spacegroup=161)
    path = tmp_path / "out.cif"
    crystal.to_cif(path, u_iso={"O1": 0.0081}, u_iso_su={"O1": 0.0004},
                   extra={"emverse_refined_thickness_angstrom": "1234.5"})
    text = path.read_text()
    assert "0.0081(4)" in text and "_emverse_refined_thickness_angstrom 1234.5" in text
    from ase.io import read

    atoms = read(path)
    assert len(atoms) == crystal.n_atoms == 30
    np.testing.assert_allclose(atoms.cell.cellpar(), [5.1376, 5.1376, 13.8497, 90, 90, 120], atol=1e-4)
    again = Crystal.from_cif(path)
    assert again.n_atoms == 30
    np.testing.assert_allclose(np.sort(again.atom_positions, axis=0), np.sort(crystal.atom_positions, axis=0),
                               atol=1e-6)
    o1 = next(s for s in again.sites if s.label == "O1")
    u_eq = np.trace(again.lattice.T @ np.diag(np.sqrt(np.diag(again.reciprocal_metric))) @ o1.u_cif
                    @ np.diag(np.sqrt(np.diag(again.reciprocal_metric))) @ again.lattice) / 3
    assert u_eq == pytest.approx(0.0081, abs=1e-6)


def test_uncertainty_notation():
    assert with_uncertainty(0.25314, 0.0123) == "0.253(12)"
    assert with_uncertainty(2203.4, 4.2) == "2203(4)"
    assert with_uncertainty(1.0, math.nan) == "1.00000000"


def test_written_cif_reads_in_gemmi_with_the_same_cell_symmetry_and_sites(tmp_path):
    """gemmi (an independent CIF reader) sees the cell, the space group and every site."""
    gemmi = pytest.importorskip("gemmi")
    crystal = Crystal.from_sites((4.9134, 4.9134, 5.4052), (90, 90, 120), [
        {"label": "Si1", "element": "Si", "position": (0.4697, 0.0, 0.0), "u_iso": 0.0066},
        {"label": "O1", "element": "O", "position": (0.4135, 0.2669, 0.1191),
         "u_aniso": (0.013, 0.010, 0.011, 0.008, -0.002, -0.004)},
    ], spacegroup=154, name="quartz")
    path = tmp_path / "quartz.cif"
    crystal.to_cif(path, u_iso_su={"Si1": 0.0003})
    small = gemmi.read_small_structure(str(path))
    assert small.cell.a == pytest.approx(4.9134) and small.cell.gamma == pytest.approx(120.0)
    assert small.spacegroup is not None and small.spacegroup.number == 154
    assert small.check_spacegroup() == ""  # the symmetry operations agree with the H-M symbol
    labels = {site.label: site for site in small.sites}
    assert set(labels) == {"Si1", "O1"}
    assert labels["O1"].aniso.u11 == pytest.approx(0.013)
    assert labels["Si1"].u_iso == pytest.approx(0.0066)
    assert (labels["O1"].fract.x, labels["O1"].fract.y) == pytest.approx((0.4135, 0.2669))
    # gemmi's expansion of the asymmetric unit gives the same number of atoms as ours
    assert len(small.get_all_unit_cell_sites()) == crystal.n_atoms
