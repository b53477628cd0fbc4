"""Refined structures out: ``write_cif(crystal, path, ...)`` writes a CIF readable by ase.

Cell, symmetry operations (as x,y,z strings), the asymmetric unit with
positions and U_iso (Å²) — or the anisotropic U_ij of sites marked
``anisotropic`` — and standard uncertainties in the CIF's parenthesis notation
where the caller computed them. Values are written, never rounded to fewer
digits than their uncertainty warrants.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from emverse.crystal import Crystal, SymmetryOperation


def _operation_xyz(op: SymmetryOperation) -> str:
    terms = []
    for row, shift in zip(np.asarray(op.rotation), np.asarray(op.translation), strict=True):
        text = ""
        for coefficient, axis in zip(row, "xyz", strict=True):
            if coefficient:
                sign = "-" if coefficient < 0 else ("+" if text else "")
                text += f"{sign}{'' if abs(coefficient) == 1 else abs(int(coefficient))}{axis}"
        shift = float(shift) % 1.0
        if shift > 1e-9:
            text += f"+{Fraction(shift).limit_denominator(48)}"
        terms.append(text or "0")
    return ",".join(terms)


def with_uncertainty(value: float, su: float | None) -> str:
    """``0.253(12)`` style: the su in units of the last written digit, two digits when it
    starts with 1, else one (the usual crystallographic rule)."""
    if su is None or not math.isfinite(su) or su <= 0:
        return f"{value:.6f}"
    decimals = -int(math.floor(math.log10(su)))
    if su * 10**decimals < 2:
        decimals += 1
    decimals = max(0, decimals)
    digits = round(su * 10**decimals)
    return f"{value:.{decimals}f}({digits})"


def write_cif(crystal: Crystal, path: str | Path, *, u_iso: dict[str, float] | None = None,
              u_iso_su: dict[str, float] | None = None, title: str = "",
              extra: dict[str, str] | None = None) -> Path:
    """Write ``crystal`` (with optional refined U_iso per site label, Å², and their su) as CIF.

    ``extra``: further data items (name without the leading underscore -> text value),
    e.g. the refined thickness, so the file records what the refinement found.
    """
    path = Path(path)
    u_iso = u_iso or {}
    u_iso_su = u_iso_su or {}
    a, b, c = crystal.cell_lengths
    alpha, beta, gamma = crystal.cell_angles
    block = "".join(ch if ch.isalnum() else "_" for ch in (crystal.name or "refined"))
    lines = [f"# {title}" if title else "# written by emverse.cif_out", f"data_{block}"]
    for name, value in (("a", a), ("b", b), ("c", c)):
        lines.append(f"_cell_length_{name} {value:.5f}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        lines.append(f"_cell_angle_{name} {value:.4f}")
    if crystal.spacegroup:
        lines.append(f"_space_group_name_H-M_alt '{crystal.spacegroup}'"
                     if not str(crystal.spacegroup).isdigit()
                     else f"_space_group_IT_number {crystal.spacegroup}")
    lines += ["loop_", "_space_group_symop_operation_xyz"]
    lines += [f"'{_operation_xyz(op)}'" for op in crystal.operations]
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_U_iso_or_equiv",
              "_atom_site_adp_type", "_atom_site_occupancy"]
    metric = crystal.reciprocal_metric
    for site in crystal.sites:
        # U_eq = trace(U_cart)/3 of the CIF tensor: U_cart = A N U N Aᵀ (N = diag(a*, b*, c*))
        n = np.diag(np.sqrt(np.diag(metric)))
        u_cart = crystal.lattice.T @ n @ site.u_cif @ n @ crystal.lattice
        u_value = u_iso.get(site.label, float(np.trace(u_cart)) / 3)
        x, y, z = (float(v) for v in site.position)
        lines.append(f"{site.label} {site.element} {x:.6f} {y:.6f} {z:.6f} "
                     f"{with_uncertainty(u_value, u_iso_su.get(site.label))} Uiso {site.occupancy:.4f}")
    for key, value in (extra or {}).items():
        lines.append(f"_{key} {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
