"""Cells, space-group operations and asymmetric-unit structures (numpy).

Conventions
-----------
* ``direct_matrix(cell)`` ``A`` has the direct basis vectors a, b, c as
  *columns* in a Cartesian frame with a ∥ x and b in the xy plane (Å):
  ``r_cart = A @ r_frac``.
* ``reciprocal_matrix(cell)`` ``B = inv(A).T`` has a*, b*, c* as columns
  (Å⁻¹, no 2π): ``g_cart = B @ hkl``.
* A symmetry operation is ``(R, t)`` acting on fractional coordinates:
  ``x' = R x + t``. ADP tensors in Cartesian form transform with the
  Cartesian rotation ``A R A⁻¹``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import attrs
import numpy as np
from emverse.errors import EmverseError

from emverse_ed3d.cif import cif_number, read_cif


def direct_matrix(cell) -> np.ndarray:
    a, b, c, al, be, ga = cell
    al, be, ga = np.radians([al, be, ga])
    cx = c * np.cos(be)
    cy = c * (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
    cz = np.sqrt(max(c**2 - cx**2 - cy**2, 0.0))
    return np.array([[a, b * np.cos(ga), cx], [0.0, b * np.sin(ga), cy], [0.0, 0.0, cz]])


def reciprocal_matrix(cell) -> np.ndarray:
    return np.linalg.inv(direct_matrix(cell)).T


def cell_volume(cell) -> float:
    return float(abs(np.linalg.det(direct_matrix(cell))))


_TERM = re.compile(r"([+-]?)([^+-]+)")


def parse_symop(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``'-y,x-y,z+2/3'`` -> (R, t) acting on fractional coordinates."""
    parts = text.replace(" ", "").lower().split(",")
    if len(parts) != 3:
        raise EmverseError(f"symmetry operation {text!r} needs three comma-separated parts, like 'x,y,z'")
    rot = np.zeros((3, 3))
    trans = np.zeros(3)
    for row, expr in enumerate(parts):
        for sign, body in _TERM.findall(expr):
            factor = -1.0 if sign == "-" else 1.0
            match = re.fullmatch(r"([0-9./]*)\*?([xyz])", body)
            if match:
                coeff = float(Fraction(match.group(1))) if match.group(1) else 1.0
                rot[row, "xyz".index(match.group(2))] += factor * coeff
            else:
                try:
                    trans[row] += factor * float(Fraction(body))
                except (ValueError, ZeroDivisionError) as err:
                    raise EmverseError(
                        f"symmetry operation {text!r}: cannot read the term {body!r}; "
                        "write terms like 'x', '-y', 'z+1/2'"
                    ) from err
    return rot, trans


#: Enantiomorphic pairs the refinement may be asked to compare (ITA standard settings).
SPACE_GROUP_OPS: dict[str, tuple[str, ...]] = {
    "P3121": ("x,y,z", "-y,x-y,z+1/3", "-x+y,-x,z+2/3", "y,x,-z", "x-y,-y,-z+2/3", "-x,-x+y,-z+1/3"),
    "P3221": ("x,y,z", "-y,x-y,z+2/3", "-x+y,-x,z+1/3", "y,x,-z", "x-y,-y,-z+1/3", "-x,-x+y,-z+2/3"),
}


def _wrap(x):
    return x - np.floor(x)


def _frac_dist(a, b, A):
    d = a - b
    d = d - np.round(d)
    return float(np.linalg.norm(A @ d))


@attrs.frozen
class AsymmetricUnit:
    """Atoms of the asymmetric unit with the space group that expands them.

    ``u_cart`` holds Cartesian ADP tensors (Å²), one 3×3 per atom, for both
    isotropic (``u_iso · I``) and anisotropic atoms; ``anisotropic`` flags which.
    """

    cell: tuple[float, float, float, float, float, float]
    space_group: str
    rotations: np.ndarray  # (S, 3, 3)
    translations: np.ndarray  # (S, 3)
    labels: tuple[str, ...]
    elements: tuple[str, ...]
    frac: np.ndarray  # (N, 3)
    u_cart: np.ndarray  # (N, 3, 3)
    anisotropic: np.ndarray  # (N,) bool
    occupancy: np.ndarray  # (N,)

    @property
    def n_atoms(self) -> int:
        return int(self.frac.shape[0])

    def site_symmetry(self, atom: int, tol: float = 1e-3) -> list[int]:
        """Indices of the operations that map atom ``atom`` onto itself (mod lattice)."""
        A = direct_matrix(self.cell)
        x = self.frac[atom]
        return [
            s
            for s, (R, t) in enumerate(zip(self.rotations, self.translations, strict=False))
            if _frac_dist(R @ x + t, x, A) < tol
        ]

    def snapped(self, tol: float = 1e-3) -> AsymmetricUnit:
        """The same structure with atoms near a special position moved exactly onto it
        (the average of the site-symmetry images; CIFs round 5/6 to 0.833333)."""
        frac = self.frac.copy()
        for i in range(self.n_atoms):
            x = self.frac[i]
            images = []
            for s in self.site_symmetry(i, tol):
                y = self.rotations[s] @ x + self.translations[s]
                images.append(y - np.round(y - x))
            frac[i] = np.mean(images, axis=0)
        return attrs.evolve(self, frac=frac)

    def orbit_ops(self, atom: int, tol: float = 1e-3) -> list[int]:
        """One operation per distinct image of atom ``atom`` in the unit cell."""
        A = direct_matrix(self.cell)
        x = self.frac[atom]
        images: list[np.ndarray] = []
        ops: list[int] = []
        for s, (R, t) in enumerate(zip(self.rotations, self.translations, strict=False)):
            y = _wrap(R @ x + t)
            if all(_frac_dist(y, z, A) > tol for z in images):
                images.append(y)
                ops.append(s)
        return ops

    def expand(self) -> tuple[np.ndarray, list[str]]:
        """Unit-cell fractional positions (wrapped to [0, 1)) and their elements."""
        positions, elements = [], []
        for i in range(self.n_atoms):
            for s in self.orbit_ops(i):
                positions.append(_wrap(self.rotations[s] @ self.frac[i] + self.translations[s]))
                elements.append(self.elements[i])
        return np.array(positions), elements

    def enantiomer(self, space_group: str) -> AsymmetricUnit:
        """The inverted structure (x -> -x) described in ``space_group`` (e.g. P3221 -> P3121)."""
        if space_group not in SPACE_GROUP_OPS:
            raise EmverseError(
                f"space group {space_group!r} has no stored operations; use one of {sorted(SPACE_GROUP_OPS)}"
            )
        ops = [parse_symop(s) for s in SPACE_GROUP_OPS[space_group]]
        return attrs.evolve(
            self,
            space_group=space_group,
            rotations=np.array([o[0] for o in ops]),
            translations=np.array([o[1] for o in ops]),
            frac=_wrap(-self.frac),
        )


def _element_from(label: str, symbol: str | None) -> str:
    text = symbol if symbol not in (None, ".", "?") else label
    match = re.match(r"([A-Z][a-z]?)", text)
    if not match:
        raise EmverseError(f"atom {label!r}: cannot tell the element from {text!r}; add _atom_site_type_symbol")
    return match.group(1)


def read_structure(path: str | Path, space_group: str | None = None) -> AsymmetricUnit:
    """Read an asymmetric unit from a CIF (symmetry operations taken from the file).

    ``space_group`` (a key of :data:`SPACE_GROUP_OPS`) overrides the file's operations.
    """
    block = read_cif(path)
    src = block.source
    cell = []
    for tag in ("_cell_length_a", "_cell_length_b", "_cell_length_c",
                "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma"):
        value = block.item(tag)
        if value is None:
            raise EmverseError(f"{src}: {tag} is missing; the structure needs a full cell")
        cell.append(cif_number(value))
    name = (block.item("_symmetry_space_group_name_h-m") or block.item("_space_group_name_h-m_alt") or "?")
    name = name.replace(" ", "")
    if space_group is not None:
        if space_group not in SPACE_GROUP_OPS:
            raise EmverseError(f"space group {space_group!r} unknown here; use one of {sorted(SPACE_GROUP_OPS)}")
        op_texts = list(SPACE_GROUP_OPS[space_group])
        name = space_group
    else:
        loop = block.loop_with("_symmetry_equiv_pos_as_xyz") or block.loop_with("_space_group_symop_operation_xyz")
        if loop is None:
            raise EmverseError(
                f"{src}: no symmetry operations (_symmetry_equiv_pos_as_xyz or "
                "_space_group_symop_operation_xyz); add them or pass space_group"
            )
        op_texts = loop.get("_symmetry_equiv_pos_as_xyz") or loop.get("_space_group_symop_operation_xyz")
    ops = [parse_symop(t) for t in op_texts]

    atoms = block.loop_with("_atom_site_fract_x")
    if atoms is None:
        raise EmverseError(f"{src}: no _atom_site_fract_x loop; the file holds no atoms")
    labels = tuple(atoms["_atom_site_label"])
    symbols = atoms.get("_atom_site_type_symbol", [None] * len(labels))
    elements = tuple(_element_from(lab, sym) for lab, sym in zip(labels, symbols, strict=False))
    frac = np.array(
        [[cif_number(atoms[f"_atom_site_fract_{c}"][i]) for c in "xyz"] for i in range(len(labels))]
    )
    occ = np.array([cif_number(v) for v in atoms.get("_atom_site_occupancy", ["1"] * len(labels))])
    occ = np.where(np.isfinite(occ), occ, 1.0)
    uiso = np.array([cif_number(v) for v in atoms.get("_atom_site_u_iso_or_equiv", ["0.01"] * len(labels))])
    A = direct_matrix(cell)
    u_cart = np.stack([np.eye(3) * (u if np.isfinite(u) else 0.01) for u in uiso])
    aniso = np.zeros(len(labels), dtype=bool)
    aniso_loop = block.loop_with("_atom_site_aniso_label")
    if aniso_loop is not None:
        # U_ij given on the reciprocal-length-normalised basis (IUCr): U_cart = N_A U* N_A^T with
        # N_A = A diag(|a*|, |b*|, |c*|)
        B = np.linalg.inv(A).T
        norm = A @ np.diag(np.linalg.norm(B, axis=0))
        for k, label in enumerate(aniso_loop["_atom_site_aniso_label"]):
            if label not in labels:
                raise EmverseError(f"{src}: anisotropic ADP for unknown atom {label!r}")
            u = {c: cif_number(aniso_loop[f"_atom_site_aniso_u_{c}"][k]) for c in ("11", "22", "33", "12", "13", "23")}
            ustar = np.array([[u["11"], u["12"], u["13"]], [u["12"], u["22"], u["23"]], [u["13"], u["23"], u["33"]]])
            i = labels.index(label)
            u_cart[i] = norm @ ustar @ norm.T
            aniso[i] = True
    return AsymmetricUnit(
        cell=tuple(cell), space_group=name,
        rotations=np.array([o[0] for o in ops]), translations=np.array([o[1] for o in ops]),
        labels=labels, elements=elements, frac=frac, u_cart=u_cart, anisotropic=aniso, occupancy=occ,
    )


def check_cell_matches(structure: AsymmetricUnit, data_cell, *, rel_tol: float = 0.02, angle_tol: float = 1.0):
    """Raise if the structure's cell disagrees with the data's cell (lengths within
    ``rel_tol``, angles within ``angle_tol`` degrees), or its symmetry contradicts
    the data's metric (e.g. a hexagonal group on an orthorhombic cell)."""
    s = np.asarray(structure.cell, float)
    d = np.asarray(data_cell, float)
    bad = [
        name for k, name in enumerate(("a", "b", "c"))
        if abs(s[k] - d[k]) > rel_tol * d[k]
    ] + [name for k, name in zip(range(3, 6), ("alpha", "beta", "gamma"), strict=False) if abs(s[k] - d[k]) > angle_tol]
    if bad:
        raise EmverseError(
            f"structure cell {tuple(round(x, 4) for x in s)} ({structure.space_group}) disagrees with the "
            f"data cell {tuple(round(x, 4) for x in d)} in {', '.join(bad)}; use the structure that belongs "
            "to this data set (or transform it to the data's setting)"
        )
    # every rotation must preserve the data's metric tensor G = AᵀA
    A = direct_matrix(data_cell)
    G = A.T @ A
    for R in structure.rotations:
        if not np.allclose(R.T @ G @ R, G, rtol=2e-2, atol=2e-2 * G.max()):
            raise EmverseError(
                f"space group {structure.space_group} does not fit the data cell {tuple(round(x, 4) for x in d)}: "
                "one of its operations does not preserve the metric; check the space group and cell setting"
            )
