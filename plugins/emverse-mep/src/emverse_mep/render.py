"""Crystal → phase volume (depth, H, W) at anisotropic voxel sampling.

The volume is what the multislice model consumes: the phase shift of each
slice, φ = σ·V_projected (rad), with V_projected the slice's projected
potential (V·Å) from abTEM's Lobato potentials and σ abTEM's interaction
parameter (rad/(V·Å)) at the beam energy. Axis order: volume[d, i, j] is
slice d (depth d·Δz), x = i·Δx, y = j·Δx (abTEM's (slices, nx, ny) layout).

When emverse-multislice offers its structure renderer this module calls it
(one thin call in :func:`_render_potential`); otherwise it builds the same
abTEM potential itself.
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from emverse.errors import EmverseError

from emverse_mep.crystals import orient_along


def interaction_parameter(voltage_kv: float) -> float:
    """σ in rad/(V·Å) (relativistic), as abTEM computes it."""
    from abtem.core.energy import energy2sigma

    return float(energy2sigma(voltage_kv * 1e3))


def _tile_rotate_cut(
    atoms: Atoms,
    box_xy_angstrom: float,
    depth_angstrom: float,
    angle_rad: float,
    offset: np.ndarray,
) -> Atoms:
    """Atoms of the infinite crystal inside a box (box_xy², depth) after an
    in-plane rotation by ``angle_rad`` about z and a shift by ``offset`` (Å)."""
    a, b, c = atoms.cell.lengths()
    half_diag = box_xy_angstrom * math.sqrt(0.5) + 1.0
    reps = (
        int(math.ceil(2 * half_diag / a)) + 2,
        int(math.ceil(2 * half_diag / b)) + 2,
        int(math.ceil(depth_angstrom / c)) + 2,
    )
    big = atoms.repeat(reps)
    pos = big.positions - np.array([reps[0] * a / 2, reps[1] * b / 2, c]) - offset
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    x = cos * pos[:, 0] - sin * pos[:, 1] + box_xy_angstrom / 2
    y = sin * pos[:, 0] + cos * pos[:, 1] + box_xy_angstrom / 2
    z = pos[:, 2]
    keep = (x >= 0) & (x < box_xy_angstrom) & (y >= 0) & (y < box_xy_angstrom)
    keep &= (z >= 0) & (z < depth_angstrom)
    return Atoms(
        numbers=big.numbers[keep],
        positions=np.stack([x[keep], y[keep], z[keep]], axis=1),
        cell=np.diag([box_xy_angstrom, box_xy_angstrom, depth_angstrom]),
        pbc=True,
    )


def _render_potential(atoms: Atoms, gpts: int, slice_angstrom: float, n_slices: int) -> np.ndarray:
    """Projected potential per slice, (n_slices, gpts, gpts) in V·Å."""
    try:  # the peer renderer, when it is installed and offers this call
        from emverse_multislice.render import projected_potential  # type: ignore
    except ImportError:
        projected_potential = None
    if projected_potential is not None:
        return np.asarray(
            projected_potential(
                atoms, gpts=(gpts, gpts), n_slices=n_slices, slice_thickness_angstrom=slice_angstrom
            )
        )
    import abtem

    potential = abtem.Potential(
        atoms, gpts=(gpts, gpts), slice_thickness=slice_angstrom,
        parametrization="lobato", projection="infinite", periodic=False,
    )
    array = np.asarray(potential.build(lazy=False).array)
    return array[:n_slices]


def render_volume(
    atoms: Atoms,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    axis: int = 2,
    sampling_angstrom: tuple[float, float, float] = (1.6, 0.2, 0.2),
    voltage_kv: float = 300.0,
    vacancy_fraction: float = 0.01,
    rotate: bool = True,
    margin_angstrom: float = 3.0,
) -> np.ndarray:
    """A (depth, H, W) phase volume (rad, float32) of ``atoms`` viewed along
    crystal axis ``axis``, with a random in-plane rotation (when ``rotate``),
    a random lateral/depth offset, and ``vacancy_fraction`` of the atoms
    removed at random."""
    depth, height, width = shape
    dz, dx, dy = sampling_angstrom
    if height != width or not math.isclose(dx, dy):
        raise EmverseError(
            f"volume shape {shape} / sampling {sampling_angstrom}: lateral axes must be square "
            "with equal sampling; give (D, N, N) and (dz, d, d)"
        )
    if not 0.0 <= vacancy_fraction < 1.0:
        raise EmverseError(f"vacancy_fraction {vacancy_fraction!r} must lie in [0, 1); use e.g. 0.01")
    margin_px = int(math.ceil(margin_angstrom / dx))
    gpts = width + 2 * margin_px
    box = gpts * dx
    oriented = orient_along(atoms, axis)
    angle = float(rng.uniform(0.0, 2 * math.pi)) if rotate else 0.0
    offset = rng.uniform(0.0, 1.0, size=3) * oriented.cell.lengths()
    cut = _tile_rotate_cut(oriented, box, depth * dz, angle, offset)
    if vacancy_fraction > 0 and len(cut):
        keep = rng.random(len(cut)) >= vacancy_fraction
        cut = cut[keep]
    if len(cut) == 0:
        return np.zeros(shape, dtype=np.float32)
    potential = _render_potential(cut, gpts, dz, depth)
    if potential.shape[0] < depth:
        pad = np.zeros((depth - potential.shape[0], gpts, gpts), dtype=potential.dtype)
        potential = np.concatenate([potential, pad])
    crop = potential[:, margin_px : margin_px + height, margin_px : margin_px + width]
    return (interaction_parameter(voltage_kv) * crop).astype(np.float32)
