"""Nanoparticle structures: read (xyz, CIF), build (icosahedron, FCC sphere), pad into a batch.

Positions are Cartesian in Å. A batch of particles with different atom
counts is a :class:`StructureBatch`: ``positions`` (B, N_max, 3) padded with
zeros, ``mask`` (B, N_max) True for real atoms, and per-structure element
symbol lists (padding atoms carry the first symbol but are masked out).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.io import write_text

from emverse_pdf.form_factors import normalise_symbol

__all__ = [
    "Structure",
    "StructureBatch",
    "read_structure",
    "write_xyz",
    "icosahedron",
    "fcc_sphere",
    "cut_sphere",
    "parse_structure_spec",
    "kabsch_rmsd",
]


@attrs.frozen
class Structure:
    """One particle: ``symbols`` (N,), ``positions`` (N, 3) in Å, optional ``biso`` (N,) in Å²."""

    symbols: tuple[str, ...]
    positions: np.ndarray
    biso: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.symbols)

    def centred(self) -> Structure:
        return attrs.evolve(self, positions=self.positions - self.positions.mean(axis=0))


@attrs.frozen
class StructureBatch:
    """Padded batch: positions (B, N, 3) Å, mask (B, N) bool, elements: B tuples of symbols."""

    positions: torch.Tensor
    mask: torch.Tensor
    elements: tuple[tuple[str, ...], ...]
    biso: torch.Tensor | None = None

    @classmethod
    def from_structures(
        cls, structures: Sequence[Structure], dtype=torch.float64, device=None
    ) -> StructureBatch:
        if not structures:
            raise EmverseError("an empty list of structures cannot form a batch; give at least one")
        n_max = max(len(s) for s in structures)
        batch = len(structures)
        positions = torch.zeros(batch, n_max, 3, dtype=dtype, device=device)
        mask = torch.zeros(batch, n_max, dtype=torch.bool, device=device)
        have_biso = any(s.biso is not None for s in structures)
        biso = torch.zeros(batch, n_max, dtype=dtype, device=device) if have_biso else None
        elements = []
        for b, s in enumerate(structures):
            n = len(s)
            positions[b, :n] = torch.as_tensor(s.positions, dtype=dtype)
            mask[b, :n] = True
            elements.append(tuple(s.symbols) + (s.symbols[0],) * (n_max - n))
            if have_biso:
                if s.biso is None:
                    raise EmverseError(
                        f"structure {b} has no B values while others do; give biso for all or none"
                    )
                biso[b, :n] = torch.as_tensor(s.biso, dtype=dtype)
        return cls(positions, mask, tuple(elements), biso)

    def __len__(self) -> int:
        return self.positions.shape[0]


def read_structure(path: str | os.PathLike, *, radius: float | None = None) -> Structure:
    """Read a particle from ``.xyz`` (ase) or ``.cif`` (:meth:`emverse.crystal.Crystal.from_cif`).

    A CIF describes a periodic crystal: give ``radius`` (Å) to cut a spherical
    particle centred on the origin of the cell (atoms with |r| <= radius).
    B values: CIF Uiso/Biso are read (B = 8 pi^2 U) when present.
    """
    path = Path(path)
    if not path.exists():
        raise EmverseError(f"structure file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".xyz":
        from ase.io import read

        _check_last_line(path)
        try:
            atoms = read(str(path), format="xyz")
        except Exception as exc:  # ase raises several types for malformed files
            raise EmverseError(f"cannot read xyz file {path}: {exc}; expected N, comment, then 'El x y z' lines") from exc
        symbols = tuple(normalise_symbol(s) for s in atoms.get_chemical_symbols())
        return Structure(symbols, np.asarray(atoms.positions, dtype=np.float64))
    if suffix == ".cif":
        from emverse.crystal import Crystal

        crystal = Crystal.from_cif(path)  # the project's one strict CIF reader (errors name the file)
        symbols = tuple(normalise_symbol(_strip_charge(e)) for e in crystal.atom_elements)
        fractional = crystal.atom_positions
        lattice = np.asarray(crystal.lattice, dtype=np.float64)  # rows = a, b, c in Å
        u_eq = np.array([np.trace(crystal.u_cartesian(crystal.sites[i].u_cif)) / 3.0 for i in crystal.atom_site])
        biso = 8 * np.pi**2 * u_eq if np.any(u_eq > 0) else None
        if radius is None:
            return Structure(symbols, fractional @ lattice, biso)
        return cut_sphere(symbols, fractional, lattice, radius, biso)
    raise EmverseError(f"structure file {path} has suffix {suffix!r}; use .xyz or .cif")


def _decimals(token: str) -> int:
    mantissa = token.lower().split("e")[0]
    return len(mantissa.split(".", 1)[1]) if "." in mantissa else -1


def _check_last_line(path: Path) -> None:
    """Refuse an xyz file cut inside its last number. A file that ends without a newline (as
    DebyeCalculator writes them) is accepted only when its last line's numbers are printed with
    the decimals of the line before: a cut ``1.21636`` -> ``1.2`` would otherwise read as 1.2."""
    text = path.read_bytes()
    if not text or text.endswith(b"\n"):
        return
    lines = text.decode("utf-8", errors="replace").splitlines()
    if len(lines) < 2:
        return
    last, previous = lines[-1].split(), lines[-2].split()
    if len(last) != len(previous) or [_decimals(t) for t in last[1:]] != [_decimals(t) for t in previous[1:]]:
        raise EmverseError(f"xyz file {path} ends inside its last line ({lines[-1].strip()!r}), so it looks "
                           "truncated; copy the complete file (a complete last line ends like the others)")


def _strip_charge(element: str) -> str:
    return "".join(c for c in element if c.isalpha())


def cut_sphere(
    symbols: Sequence[str],
    fractional: np.ndarray,
    lattice: np.ndarray,
    radius: float,
    biso: np.ndarray | None = None,
) -> Structure:
    """Atoms of the crystal (fractional coords, lattice rows in Å) within ``radius`` Å of the origin."""
    if not radius > 0:
        raise EmverseError(f"radius must be > 0 Å, got {radius!r}")
    heights = 1.0 / np.linalg.norm(np.linalg.inv(lattice).T, axis=1)  # interplanar spacings
    reach = np.ceil(radius / heights).astype(int) + 1
    grid = np.stack(
        np.meshgrid(*[np.arange(-n, n + 1) for n in reach], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    frac = (fractional[None, :, :] + grid[:, None, :]).reshape(-1, 3)
    cart = frac @ lattice
    index = np.tile(np.arange(len(symbols)), grid.shape[0])
    keep = np.linalg.norm(cart, axis=1) <= radius + 1e-9
    if not keep.any():
        raise EmverseError(f"no atom lies within {radius} Å of the origin; increase radius")
    sel_symbols = tuple(symbols[i] for i in index[keep])
    sel_biso = None if biso is None else biso[index[keep]]
    return Structure(sel_symbols, cart[keep], sel_biso)


def icosahedron(element: str = "Au", shells: int = 2, nn_distance: float = 2.88) -> Structure:
    """Mackay icosahedron (ase.cluster) with ``shells`` shells (2 -> 13 atoms, 3 -> 55, 4 -> 147)
    and surface nearest-neighbour distance ``nn_distance`` (Å; 2.88 for Au)."""
    from ase.cluster import Icosahedron

    if shells < 1:
        raise EmverseError(f"shells must be >= 1, got {shells}")
    atoms = Icosahedron(normalise_symbol(element), shells, latticeconstant=nn_distance * np.sqrt(2.0))
    return Structure(tuple(atoms.get_chemical_symbols()), np.asarray(atoms.positions)).centred()


def fcc_sphere(element: str = "Au", lattice_constant: float = 4.08, radius: float = 8.0) -> Structure:
    """Spherical FCC particle (Å) centred on an atom; radius 9.5 Å for Au (a = 4.08 Å) gives 201 atoms."""
    symbol = normalise_symbol(element)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=np.float64)
    return cut_sphere((symbol,) * 4, basis, np.eye(3) * lattice_constant, radius)


def parse_structure_spec(spec: str, resolve=lambda p: Path(p)) -> Structure:
    """``"icosahedron:Au:3:2.88"``, ``"fcc:Au:4.08:8.0"``, ``"file.xyz"`` or ``"file.cif@10.0"`` (radius Å)."""
    if spec.startswith("icosahedron:"):
        parts = spec.split(":")
        try:
            return icosahedron(parts[1], int(parts[2]), float(parts[3]) if len(parts) > 3 else 2.88)
        except (IndexError, ValueError) as exc:
            raise EmverseError(
                f"structure {spec!r} should read icosahedron:<element>:<shells>:<nn_distance_angstrom>"
            ) from exc
    if spec.startswith("fcc:"):
        parts = spec.split(":")
        try:
            return fcc_sphere(parts[1], float(parts[2]), float(parts[3]))
        except (IndexError, ValueError) as exc:
            raise EmverseError(
                f"structure {spec!r} should read fcc:<element>:<lattice_constant_angstrom>:<radius_angstrom>"
            ) from exc
    path, _, radius = spec.partition("@")
    return read_structure(resolve(path), radius=float(radius) if radius else None)


def write_xyz(path: str | os.PathLike, structure: Structure, comment: str = "") -> Path:
    """Write an xyz file atomically (positions in Å)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(len(structure)), comment.replace("\n", " ")]
    lines += [
        f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(structure.symbols, structure.positions, strict=False)
    ]
    return write_text(path, "\n".join(lines) + "\n")  # atomic, mode follows the umask


def kabsch_rmsd(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, allow_reflection: bool = True) -> float:
    """RMSD (Å) between two (N, 3) position sets with the same atom order after optimal
    translation and rotation (Kabsch). A PDF cannot tell a structure from its mirror image,
    so by default improper rotations are allowed too."""
    a = np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    rotation = u @ vt
    return float(np.sqrt(((a @ rotation - b) ** 2).sum(1).mean()))
