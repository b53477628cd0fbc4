"""Monometallic nanoparticles (MMNPs) of seven structure types and their weight matrices.

The structure types and size grids follow DeepStruc / CbLDM: simple cubic (SC),
face-centred cubic (FCC), body-centred cubic (BCC), hexagonal close packed (HCP),
icosahedral (Ico), decahedral (Dec) and octahedral (Oct) clusters, built with
``ase.cluster``. Every length is in Å.

The *nearest-neighbour distance* d of a metal is twice its metallic radius and every
type is built with that nearest-neighbour distance: SC ``a = d``, BCC ``a = 2d/√3``
(DeepStruc used ``a = d`` for BCC, which compresses its neighbours to 0.87 d),
FCC/Ico/Dec/Oct ``a = √2 d`` and HCP ``a = d``, ``c = 1.633 a``.

A structure is represented by the weight ("Laplacian") matrix

    W_ij = exp(−‖x_i − x_j‖² / t),   t = 260 Å²,

zero-padded to 256 × 256 and split into four 128 × 128 blocks
``[W[:128,:128], W[:128,128:], W[128:,:128], W[128:,128:]]``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
from emverse.errors import EmverseError

#: t in W_ij = exp(-d_ij^2 / t), Å²
WEIGHT_T_ANGSTROM2 = 260.0
#: the padded matrix side and the block side
MAX_ATOMS = 256
BLOCK = 128

STRUCTURE_TYPES = ("SC", "FCC", "BCC", "HCP", "Ico", "Dec", "Oct")

#: Metallic radii for 12-fold coordination (Å; half the nearest-neighbour
#: distance in the metal), 28 transition metals Sc…Hg (Tc left out as in DeepStruc).
METALLIC_RADIUS_ANGSTROM = {
    "Sc": 1.64, "Ti": 1.47, "V": 1.34, "Cr": 1.28, "Mn": 1.27, "Fe": 1.26, "Co": 1.25,
    "Ni": 1.24, "Cu": 1.28, "Zn": 1.37, "Y": 1.80, "Zr": 1.60, "Nb": 1.46, "Mo": 1.39,
    "Ru": 1.34, "Rh": 1.34, "Pd": 1.37, "Ag": 1.44, "Cd": 1.51, "Hf": 1.59, "Ta": 1.46,
    "W": 1.39, "Re": 1.37, "Os": 1.35, "Ir": 1.36, "Pt": 1.39, "Au": 1.44, "Hg": 1.51,
}  # fmt: skip


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster recipe: type, size parameters and element.

    ``size`` holds the type's own size numbers: (h, k, l) layers for SC/FCC/BCC,
    (n1, n2, n3) layers for HCP, (shells,) for Ico, (p, q, r) for Dec, (length,) for Oct.
    ``nn_distance_angstrom`` is the nearest-neighbour distance (2 × metallic radius).
    """

    structure_type: str
    size: tuple[int, ...]
    element: str
    nn_distance_angstrom: float

    @property
    def name(self) -> str:
        return f"{self.structure_type}_{'_'.join(map(str, self.size))}_{self.element}"


def nn_distance(element: str) -> float:
    """Nearest-neighbour distance 2 r_metallic (Å)."""
    if element not in METALLIC_RADIUS_ANGSTROM:
        raise EmverseError(
            f"element {element!r} has no metallic radius here; use one of "
            f"{', '.join(METALLIC_RADIUS_ANGSTROM)}"
        )
    return 2.0 * METALLIC_RADIUS_ANGSTROM[element]


def build_cluster(spec: ClusterSpec) -> np.ndarray:
    """Atom positions (N, 3) in Å, centred on their centroid and sorted by
    distance from it (a canonical atom order for the weight matrix)."""
    from ase.cluster import (
        BodyCenteredCubic,
        Decahedron,
        FaceCenteredCubic,
        HexagonalClosedPacked,
        Icosahedron,
        Octahedron,
        SimpleCubic,
    )

    d = float(spec.nn_distance_angstrom)
    el = spec.element
    cubic_surfaces = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    st = spec.structure_type
    if st == "SC":
        atoms = SimpleCubic(el, cubic_surfaces, list(spec.size), latticeconstant=d)
    elif st == "BCC":
        atoms = BodyCenteredCubic(
            el, cubic_surfaces, list(spec.size), latticeconstant=2 * d / 3**0.5
        )
    elif st == "FCC":
        atoms = FaceCenteredCubic(el, cubic_surfaces, list(spec.size), latticeconstant=d * 2**0.5)
    elif st == "HCP":
        atoms = HexagonalClosedPacked(
            el,
            [(2, -1, -1, 0), (0, 1, -1, 0), (0, 0, 0, 1)],
            list(spec.size),
            latticeconstant={"a": d, "c": 1.633 * d},
        )
    elif st == "Ico":
        atoms = Icosahedron(el, spec.size[0], latticeconstant=d * 2**0.5)
    elif st == "Dec":
        p, q, r = spec.size
        atoms = Decahedron(el, p, q, r, latticeconstant=d * 2**0.5)
    elif st == "Oct":
        atoms = Octahedron(el, spec.size[0], cutoff=0, latticeconstant=d * 2**0.5)
    else:
        raise EmverseError(
            f"structure_type {st!r} is unknown; use one of {', '.join(STRUCTURE_TYPES)}"
        )
    return canonical_order(atoms.get_positions())


def canonical_order(positions: np.ndarray) -> np.ndarray:
    """Centre on the centroid; order atoms by distance from it (ties by z, y, x)."""
    x = np.asarray(positions, dtype=np.float64)
    x = x - x.mean(axis=0)
    r = np.round(np.linalg.norm(x, axis=1), 6)
    order = np.lexsort((np.round(x[:, 0], 6), np.round(x[:, 1], 6), np.round(x[:, 2], 6), r))
    return x[order]


def _size_grid(structure_type: str) -> list[tuple[int, ...]]:
    if structure_type in ("SC", "BCC", "FCC"):
        return [s for s in itertools.product(range(1, 11), repeat=3) if s[0] <= s[1] <= s[2]]
    if structure_type == "HCP":
        return [s for s in itertools.product(range(1, 9), repeat=3) if s[0] <= s[1]]
    if structure_type == "Ico":
        return [(n,) for n in range(2, 5)]
    if structure_type == "Dec":
        return list(itertools.product(range(1, 6), range(1, 6), range(0, 5)))
    if structure_type == "Oct":
        return [(n,) for n in range(2, 9)]
    raise EmverseError(f"structure_type {structure_type!r} is unknown")


@functools.cache
def _atom_counts(structure_type: str) -> tuple[tuple[tuple[int, ...], int], ...]:
    """(size, N) for every size of the grid (atom counts do not depend on the element)."""
    return tuple(
        (size, build_cluster(ClusterSpec(structure_type, size, "Cu", 2.56)).shape[0])
        for size in _size_grid(structure_type)
    )


def catalogue(
    structure_types=STRUCTURE_TYPES,
    elements=tuple(METALLIC_RADIUS_ANGSTROM),
    min_atoms: int = 5,
    max_atoms: int = MAX_ATOMS,
) -> list[tuple[ClusterSpec, int]]:
    """Every (cluster, atom count) of the size grids with ``min_atoms ≤ N ≤ max_atoms``.

    Atom counts do not depend on the element, so each geometry is built once.
    """
    if max_atoms > MAX_ATOMS:
        raise EmverseError(
            f"max_atoms {max_atoms} exceeds the weight-matrix size {MAX_ATOMS}; use ≤ {MAX_ATOMS}"
        )
    out = []
    for st in structure_types:
        if st not in STRUCTURE_TYPES:
            raise EmverseError(
                f"structure_type {st!r} is unknown; use one of {', '.join(STRUCTURE_TYPES)}"
            )
        for size, n in _atom_counts(st):
            if min_atoms <= n <= max_atoms:
                out.extend((ClusterSpec(st, size, el, nn_distance(el)), n) for el in elements)
    return out


def weight_matrix(positions: np.ndarray, t: float = WEIGHT_T_ANGSTROM2, size: int = MAX_ATOMS):
    """W_ij = exp(−d_ij²/t) for N atoms, zero-padded to (size, size)."""
    x = np.asarray(positions, dtype=np.float64)
    n = x.shape[0]
    if n > size:
        raise EmverseError(
            f"the cluster has {n} atoms but the weight matrix holds at most {size}; "
            f"use a smaller cluster (≤ {size} atoms)"
        )
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    w = np.zeros((size, size), dtype=np.float64)
    w[:n, :n] = np.exp(-d2 / t)
    return w


def to_blocks(w):
    """(…, 256, 256) → (…, 4, 128, 128): [top-left, top-right, bottom-left, bottom-right]."""
    b = w.shape[-1] // 2
    parts = [w[..., :b, :b], w[..., :b, b:], w[..., b:, :b], w[..., b:, b:]]
    if isinstance(w, np.ndarray):
        return np.stack(parts, axis=-3)
    import torch

    return torch.stack(parts, dim=-3)


def from_blocks(blocks):
    """(…, 4, 128, 128) → (…, 256, 256); the inverse of :func:`to_blocks`."""
    tl, tr, bl, br = (blocks[..., i, :, :] for i in range(4))
    if isinstance(blocks, np.ndarray):
        return np.concatenate(
            [np.concatenate([tl, tr], axis=-1), np.concatenate([bl, br], axis=-1)], axis=-2
        )
    import torch

    return torch.cat([torch.cat([tl, tr], dim=-1), torch.cat([bl, br], dim=-1)], dim=-2)


