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
