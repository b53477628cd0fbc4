"""Varied, physically plausible crystals for the volume prior's training set.

The MEP-Diffusion paper trains on ICSD, which is not public. This module
draws random *symmetric* crystals instead: a space group from the
orthogonal-cell families (cubic, tetragonal, orthorhombic, and hexagonal via
its orthohexagonal cell), one to three occupied Wyckoff sites with elements
from a list, a cell scaled to a plausible volume per atom, and rejection of
anything with atoms closer than ``min_distance_angstrom`` or a lattice
constant of 20 Å or more (the paper's filter). CIF files can be used instead
(:func:`read_cif_directory`).

Every random draw comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from ase import Atoms
from emverse.errors import EmverseError

#: (space group number, lattice family) — orthogonal cells render along a, b, c directly
SPACE_GROUPS: tuple[tuple[int, str], ...] = (
    (221, "cubic"), (225, "cubic"), (227, "cubic"), (229, "cubic"), (216, "cubic"),
    (198, "cubic"), (223, "cubic"),
    (123, "tetragonal"), (139, "tetragonal"), (136, "tetragonal"), (141, "tetragonal"),
    (129, "tetragonal"), (99, "tetragonal"),
    (47, "orthorhombic"), (62, "orthorhombic"), (63, "orthorhombic"), (65, "orthorhombic"),
    (71, "orthorhombic"), (19, "orthorhombic"), (59, "orthorhombic"),
    (191, "hexagonal"), (194, "hexagonal"), (186, "hexagonal"), (164, "hexagonal"),
)

DEFAULT_ELEMENTS: tuple[str, ...] = (
    "O", "C", "N", "F", "Si", "Al", "Mg", "Ti", "V", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "As", "S", "Se", "Sr", "Ba", "La", "Mo", "W", "Pb", "Bi", "Nb", "Zr", "Ca",
)

MAX_LATTICE_ANGSTROM = 20.0

_SPECIAL = (0.0, 0.25, 0.5, 1.0 / 3.0, 0.75)


def _cellpar(family: str, rng: np.random.Generator) -> list[float]:
    """Relative cell parameters (rescaled to a target volume afterwards)."""
    a = 1.0
    if family == "cubic":
        return [a, a, a, 90, 90, 90]
    if family == "tetragonal":
        return [a, a, a * rng.uniform(0.5, 2.5), 90, 90, 90]
    if family == "orthorhombic":
        return [a, a * rng.uniform(0.6, 1.8), a * rng.uniform(0.5, 2.5), 90, 90, 90]
    if family == "hexagonal":
        return [a, a, a * rng.uniform(0.8, 2.2), 90, 90, 120]
    raise ValueError(f"lattice family {family!r} is unknown")


def _orthohexagonal(atoms: Atoms) -> Atoms:
    """The orthogonal (a, √3 a, c) cell of a hexagonal crystal, built by hand
    (abTEM's orthogonalize_cell is unreliable for some hexagonal cells)."""
    from ase.build import make_supercell

    ortho = make_supercell(atoms, np.array([[1, 0, 0], [1, 2, 0], [0, 0, 1]]))
    a, _, c = atoms.cell.lengths()
    ortho.set_cell(np.diag([a, math.sqrt(3.0) * a, c]), scale_atoms=False)
    ortho.wrap()
    return ortho


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        # a single atom per cell: its nearest neighbour is a lattice vector away
        return float(min(atoms.cell.lengths()))
    d = atoms.get_all_distances(mic=True)
    d[np.diag_indices_from(d)] = np.inf
    return float(min(d.min(), min(atoms.cell.lengths())))


def random_crystal(
    rng: np.random.Generator,
    elements: tuple[str, ...] = DEFAULT_ELEMENTS,
    *,
    max_sites: int = 3,
    max_atoms: int = 160,
    min_distance_angstrom: float = 1.7,
    volume_per_atom_angstrom3: tuple[float, float] = (9.0, 24.0),
    max_lattice_angstrom: float = MAX_LATTICE_ANGSTROM,
    max_tries: int = 200,
) -> Atoms:
    """One random symmetric crystal in an orthogonal cell (Å).

    Raises :class:`EmverseError` when ``max_tries`` draws all fail the
    distance / size filters (too strict settings).
    """
    from ase.spacegroup import crystal

    if not elements:
        raise EmverseError("elements is empty; give at least one chemical symbol, e.g. ['Si', 'O']")
    for _ in range(max_tries):
        number, family = SPACE_GROUPS[rng.integers(len(SPACE_GROUPS))]
        n_sites = int(rng.integers(1, max_sites + 1))
        symbols = [str(elements[rng.integers(len(elements))]) for _ in range(n_sites)]
        basis = []
        for _site in range(n_sites):
            if rng.random() < 0.5:
                basis.append([float(_SPECIAL[rng.integers(len(_SPECIAL))]) for _ in range(3)])
            else:
                basis.append(rng.uniform(0.0, 1.0, size=3).round(3).tolist())
        try:
            atoms = crystal(
                symbols, basis, spacegroup=number, cellpar=_cellpar(family, rng),
                onduplicates="error", symprec=1e-3,
            )
        except Exception:  # coinciding sites for this basis: draw again
            continue
        if family == "hexagonal":
            atoms = _orthohexagonal(atoms)
        if len(atoms) == 0 or len(atoms) > max_atoms:
            continue
        target = rng.uniform(*volume_per_atom_angstrom3) * len(atoms)
        atoms.set_cell(atoms.cell * (target / atoms.get_volume()) ** (1.0 / 3.0), scale_atoms=True)
        if max(atoms.cell.lengths()) >= max_lattice_angstrom:
            continue
        if _min_distance(atoms) < min_distance_angstrom:
            continue
        atoms.info["spacegroup"] = int(number)
        return atoms
    raise EmverseError(
        f"no crystal passed the filters in {max_tries} draws "
        f"(min_distance_angstrom={min_distance_angstrom}, max_atoms={max_atoms}); loosen them"
    )


def read_cif_directory(path: str | Path, max_lattice_angstrom: float = MAX_LATTICE_ANGSTROM):
    """The crystals of every ``*.cif`` in ``path`` with all lattice constants
    below ``max_lattice_angstrom`` (Å) and an orthogonal (or orthogonalisable)
    cell; returns a list of (name, Atoms) sorted by name."""
    directory = Path(path)
    if not directory.is_dir():
        raise EmverseError(
            f"cif_directory {str(directory)!r} is not a directory; give a folder of .cif files "
            "or leave it empty to use the built-in random crystal generator"
        )
    from emverse.crystal import Crystal

    out = []
    for cif in sorted(directory.glob("*.cif")):
        atoms = Crystal.from_cif(cif).to_ase()  # the project's one strict CIF reader
        if max(atoms.cell.lengths()) >= max_lattice_angstrom:
            continue
        if not np.allclose(atoms.cell.angles(), 90.0, atol=1e-3):
            try:
                from abtem import orthogonalize_cell

                atoms = orthogonalize_cell(atoms)
            except Exception:
                continue
            if max(atoms.cell.lengths()) >= 3 * max_lattice_angstrom:
                continue
        out.append((cif.stem, atoms))
    if not out:
        raise EmverseError(
            f"cif_directory {str(directory)!r} holds no usable .cif (lattice constants < "
            f"{max_lattice_angstrom} Å, orthogonalisable cell)"
        )
    return out


def orient_along(atoms: Atoms, axis: int) -> Atoms:
    """Relabel an orthogonal cell so that crystal axis ``axis`` (0=a, 1=b, 2=c)
    becomes the beam direction z (cyclic permutation keeps handedness)."""
    if axis not in (0, 1, 2):
        raise EmverseError(f"axis {axis!r} is not a major axis; use 0 (a), 1 (b) or 2 (c)")
    if not np.allclose(atoms.cell.angles(), 90.0, atol=1e-3):
        raise EmverseError("orient_along needs an orthogonal cell; orthogonalise the crystal first")
    order = [(axis + 1) % 3, (axis + 2) % 3, axis]
    lengths = atoms.cell.lengths()[order]
    out = Atoms(
        numbers=atoms.numbers, positions=atoms.positions[:, order], cell=np.diag(lengths), pbc=True
    )
    return out
