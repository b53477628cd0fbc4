"""Render crystal structures into phase volumes with abTEM's potentials.

``render_phase_volume(structure, ...)`` → torch (depth, H, W) of phases in
radians, φ = σ·V_projected, with V_projected the projected potential of each
slice (V·Å) from ``abtem.Potential`` and σ = ``abtem.core.energy.energy2sigma``
(rad / (V·Å)). Voxels may be anisotropic (the MEP-Diffusion default is
1.6 Å deep × 0.2 Å × 0.2 Å lateral). Axis order: (depth = beam z, H = x, W = y),
abTEM's own (slices, x, y), so these volumes feed
:class:`~emverse_multislice.ptychography.MultislicePtychography` and
reproduce what abTEM simulates for the same atoms.

Any orientation: the crystal is rotated so that the zone axis [uvw]
(direct-lattice direction) points along +z (the beam), then about z by
``in_plane_rotation_deg``; a box of (H·s, W·s, depth·Δz) Å is cut from a
large enough tiling of the crystal. For low-index axes of orthogonal cells
with a box that is a multiple of the lattice repeat, the cut is exactly
periodic; otherwise the lateral box edges are seams (the same as any
rectangular cut of a crystal, e.g. MEP-Diffusion's 20 Å cubes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from emverse.errors import EmverseError


def builtin_structure(name: str):
    """Small reference crystals (lattice constants from the literature, Å)."""
    from ase.spacegroup import crystal

    name = name.lower()
    if name == "srtio3":  # cubic perovskite Pm-3m, a = 3.905 Å
        return crystal(
            ["Sr", "Ti", "O"],
            basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
            spacegroup=221,
            cellpar=[3.905, 3.905, 3.905, 90, 90, 90],
        )
    if name == "si":  # diamond Fd-3m, a = 5.431 Å
        return crystal(["Si"], basis=[(0, 0, 0)], spacegroup=227, cellpar=[5.431] * 3 + [90] * 3)
    if name == "mgb2":  # P6/mmm, a = 3.086 Å, c = 3.524 Å
        return crystal(
            ["Mg", "B"],
            basis=[(0, 0, 0), (1 / 3, 2 / 3, 0.5)],
            spacegroup=191,
            cellpar=[3.086, 3.086, 3.524, 90, 90, 120],
        )
    raise EmverseError(
        f"built-in structure {name!r} is unknown; use one of 'srtio3', 'si', 'mgb2' "
        "or give a CIF path"
    )


def load_structure(structure):
    """An ``ase.Atoms`` from Atoms, ``builtin:<name>``, or a CIF / ase-readable file path."""
    import ase
    import ase.io

    if isinstance(structure, ase.Atoms):
        return structure.copy()
    text = str(structure)
    if text.startswith("builtin:"):
        return builtin_structure(text.split(":", 1)[1])
    path = Path(text)
    if not path.is_file():
        raise EmverseError(
            f"structure file {text!r} does not exist; give a CIF path, an ase.Atoms, "
            "or 'builtin:srtio3'"
        )
    if path.suffix.lower() == ".cif":  # the project's one CIF reader (messages name the problem)
        from emverse.crystal import Crystal

        return Crystal.from_cif(path).to_ase()
    try:
        atoms = ase.io.read(str(path))
    except Exception as error:  # ase raises many kinds, some with an empty message
        reason = " ".join(str(error).split()) or type(error).__name__
        raise EmverseError(f"could not read structure {text!r} ({reason}); give a CIF or another "
                           "file ase can read (xyz, POSCAR, ...)") from error
    if len(atoms) == 0:
        raise EmverseError(f"structure {text!r} holds no atoms")
    return atoms


def _rotation_to_z(direction: np.ndarray) -> np.ndarray:
    """Rotation matrix R with R @ direction ∥ +z (Rodrigues)."""
    d = direction / np.linalg.norm(direction)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(d, z)
    c = float(np.dot(d, z))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def _rotation_about_z(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def orient_structure(
    atoms,
    box_angstrom: tuple[float, float, float],
    *,
    zone_axis: tuple[int, int, int] = (0, 0, 1),
    in_plane_rotation_deg: float = 0.0,
):
    """Atoms of ``atoms`` (periodic crystal) rotated so ``zone_axis`` ∥ +z, cut to a box.

    ``box_angstrom`` (Lx, Ly, Lz) in Å; the returned Atoms has the orthogonal
    cell diag(Lx, Ly, Lz) and holds every atom with 0 ≤ r < L.
    """
    import ase

    uvw = np.asarray(zone_axis, dtype=float)
    if uvw.shape != (3,) or not np.any(uvw):
        raise EmverseError(
            f"zone_axis {tuple(zone_axis)!r} is not a direction; give three integers, not all zero"
        )
    box = np.asarray(box_angstrom, dtype=float)
    if box.shape != (3,) or not np.all(box > 0):
        raise EmverseError(f"box_angstrom {tuple(box_angstrom)!r} must be three lengths > 0 Å")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-6:
        raise EmverseError("the structure has no 3D unit cell; give a periodic crystal (CIF)")
    rotation = _rotation_about_z(in_plane_rotation_deg) @ _rotation_to_z(uvw @ cell)
    rotated_cell = cell @ rotation.T  # rows: rotated lattice vectors
    # fractional ranges needed to cover the box: map the box corners back
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * box
    frac = corners @ np.linalg.inv(rotated_cell)
    lo = np.floor(frac.min(axis=0)).astype(int) - 1
    hi = np.ceil(frac.max(axis=0)).astype(int) + 1
    n_tiles = int(np.prod(hi - lo))
    if n_tiles * len(atoms) > 5_000_000:
        raise EmverseError(
            f"cutting a {tuple(box)} Å box needs {n_tiles} unit cells of {len(atoms)} atoms; "
            "use a smaller box or a low-index zone axis"
        )
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), axis=-1
    ).reshape(-1, 3)
    scaled = atoms.get_scaled_positions(wrap=True)
    all_frac = (grid[:, None, :] + scaled[None, :, :]).reshape(-1, 3)
    positions = all_frac @ rotated_cell
    numbers = np.tile(atoms.numbers, len(grid))
    tol = 1e-8
    keep = np.all((positions >= -tol) & (positions < box - tol), axis=1)
    positions = np.clip(positions[keep], 0.0, None)
    out = ase.Atoms(numbers=numbers[keep], positions=positions, cell=np.diag(box), pbc=True)
    return out


def projected_potential(
    atoms,
    *,
    gpts: tuple[int, int],
    n_slices: int,
    slice_thickness_angstrom: float,
    parametrization: str = "lobato",
    projection: str = "infinite",
) -> np.ndarray:
    """abTEM projected potential (n_slices, H, W) in V·Å of ``atoms`` (orthogonal cell)."""
    import abtem

    thickness = (float(slice_thickness_angstrom),) * int(n_slices)
    potential = abtem.Potential(
        atoms,
        gpts=tuple(int(n) for n in gpts),
        slice_thickness=thickness,
        parametrization=parametrization,
        projection=projection,
    )
    array = np.asarray(potential.build(lazy=False).compute().array)
    if array.shape != (n_slices, *gpts):
        raise EmverseError(
            f"abTEM returned a potential of shape {array.shape}, expected {(n_slices, *gpts)}"
        )
    return array


def render_phase_volume(
    structure,
    *,
    shape: tuple[int, int, int] = (16, 100, 100),
    sampling_angstrom: float = 0.2,
    slice_thickness_angstrom: float = 1.6,
    voltage_kv: float = 300.0,
    zone_axis: tuple[int, int, int] = (0, 0, 1),
    in_plane_rotation_deg: float = 0.0,
    parametrization: str = "lobato",
    projection: str = "infinite",
    vacancy_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
    wrap_phase: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Phase volume (depth, H, W) in radians: σ·V_projected per slice, abTEM potentials.

    * ``structure``: ase.Atoms, a CIF (or any ase-readable) path, or ``builtin:srtio3``;
    * ``shape`` (depth, H, W) voxels of ``slice_thickness_angstrom`` × ``sampling_angstrom``²;
    * ``voltage_kv`` sets σ (rad/(V·Å));
    * ``zone_axis`` / ``in_plane_rotation_deg`` orient the crystal (see module docstring);
    * ``vacancy_fraction`` removes that fraction of atoms at random (needs ``rng``);
    * ``wrap_phase``: return angle(exp(iφ)) ∈ (−π, π] instead of φ.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n <= 0 for n in shape):
        raise EmverseError(f"shape {shape!r} must be three positive integers (depth, H, W)")
    for name, value in (
        ("sampling_angstrom", sampling_angstrom),
        ("slice_thickness_angstrom", slice_thickness_angstrom),
        ("voltage_kv", voltage_kv),
    ):
        if not (isinstance(value, (int, float)) and value > 0):
            raise EmverseError(f"{name} must be > 0, got {value!r}")
    if not 0.0 <= vacancy_fraction < 1.0:
        raise EmverseError(f"vacancy_fraction must lie in [0, 1), got {vacancy_fraction!r}")
    if np.asarray(zone_axis).shape != (3,) or not np.any(np.asarray(zone_axis, dtype=float)):
        raise EmverseError(
            f"zone_axis {tuple(zone_axis)!r} is not a direction; give three integers, not all zero"
        )
    depth, h, w = shape
    box = (h * sampling_angstrom, w * sampling_angstrom, depth * slice_thickness_angstrom)
    atoms = orient_structure(
        load_structure(structure),
        box,
        zone_axis=zone_axis,
        in_plane_rotation_deg=in_plane_rotation_deg,
    )
    if vacancy_fraction > 0:
        if rng is None:
            raise EmverseError("vacancy_fraction > 0 needs an explicit numpy Generator (rng=)")
        keep = rng.random(len(atoms)) >= vacancy_fraction
        atoms = atoms[keep]
    if len(atoms) == 0:
        return torch.zeros(shape, dtype=dtype)
    potential = projected_potential(
        atoms,
        gpts=(h, w),
        n_slices=depth,
        slice_thickness_angstrom=slice_thickness_angstrom,
        parametrization=parametrization,
        projection=projection,
    )
    from abtem.core.energy import energy2sigma

    phase = energy2sigma(voltage_kv * 1e3) * potential
    if wrap_phase:
        phase = np.angle(np.exp(1j * phase))
    return torch.as_tensor(np.ascontiguousarray(phase), dtype=dtype)
