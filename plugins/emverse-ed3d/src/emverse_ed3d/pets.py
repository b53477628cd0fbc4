"""Reader for PETS2 dynamical-refinement files (``.cif_pets``).

A ``.cif_pets`` file (PETS2, Palatinus et al. 2019) holds

* the cell (Å, degrees) and the electron wavelength (Å);
* the orientation matrix ``UB`` (Å⁻¹): its columns are a*, b*, c* in the
  laboratory frame at goniometer zero;
* one row per *virtual frame*: zone axis (u, v, w), precession angle (deg),
  the frame angles alpha (goniometer tilt), beta, omega (deg) and a scale;
* one row per integrated reflection: h k l, I, σ(I) and the frame id.

Bad input is handled loudly: missing columns and reflections that point at
an unknown frame are errors naming the column/value; reflections with σ ≤ 0
or a non-finite I/σ and frames left without reflections are *skipped*, and
the counts are kept in :attr:`PetsData.skipped` (and logged) so a refinement
never silently runs on fewer data than the user thinks. ``strict=True`` turns
every skip into an error.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import attrs
import numpy as np
from emverse.errors import EmverseError

log = logging.getLogger(__name__)

FRAME_COLUMNS = (
    "_diffrn_zone_axis_id",
    "_diffrn_zone_axis_u",
    "_diffrn_zone_axis_v",
    "_diffrn_zone_axis_w",
    "_diffrn_zone_axis_precession_angle",
    "_diffrn_zone_axis_alpha",
    "_diffrn_zone_axis_beta",
    "_diffrn_zone_axis_omega",
    "_diffrn_zone_axis_scale",
)
REFLECTION_COLUMNS = (
    "_refln_index_h",
    "_refln_index_k",
    "_refln_index_l",
    "_refln_intensity_meas",
    "_refln_intensity_sigma",
    "_refln_zone_axis_id",
)
CELL_ITEMS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)


@attrs.frozen
class PetsFrames:
    """Per-frame geometry; every array has one row per frame (angles in degrees)."""

    frame_id: np.ndarray  # (F,) int, as written in the file
    zone_axis: np.ndarray  # (F, 3) float, direct-lattice [u v w]
    precession_angle_deg: np.ndarray  # (F,)
    alpha_deg: np.ndarray  # (F,) goniometer tilt
    beta_deg: np.ndarray  # (F,)
    omega_deg: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)

    def __len__(self) -> int:
        return int(self.frame_id.shape[0])


@attrs.frozen
class PetsData:
    """Everything a dynamical refinement needs from one ``.cif_pets`` file."""

    source: str
    cell: tuple[float, float, float, float, float, float]  # Å, degrees
    wavelength_angstrom: float
    ub: np.ndarray  # (3, 3), Å⁻¹, columns a*, b*, c* in the lab frame
    geometry: str  # "continuous rotation" or "precession"
    dstarmax_inv_angstrom: float
    frames: PetsFrames
    hkl: np.ndarray  # (N, 3) int
    intensity: np.ndarray  # (N,)
    sigma: np.ndarray  # (N,)
    frame_index: np.ndarray  # (N,) int: row in ``frames`` (0-based)
    skipped: dict[str, int] = attrs.field(factory=dict)

    @property
    def n_reflections(self) -> int:
        return int(self.hkl.shape[0])

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def frame_reflections(self, frame: int) -> np.ndarray:
        """Row indices of the reflections of frame ``frame`` (0-based)."""
        return np.flatnonzero(self.frame_index == frame)

    def keep_reflections(self, keep: np.ndarray) -> PetsData:
        """A copy with the reflections where the (N,) mask ``keep`` is true; frames left without
        reflections are dropped (counted in ``skipped["empty_frames"]``)."""
        keep = np.asarray(keep, dtype=bool)
        out = attrs.evolve(self, hkl=self.hkl[keep], intensity=self.intensity[keep], sigma=self.sigma[keep],
                           frame_index=self.frame_index[keep])
        counts = np.bincount(out.frame_index, minlength=out.n_frames)
        if (counts > 0).all():
            return out
        out = out.select_frames(np.flatnonzero(counts > 0))
        dropped = out.skipped.get("empty_frames", 0) + int((counts == 0).sum())
        return attrs.evolve(out, skipped={**out.skipped, "empty_frames": dropped})

    def select_frames(self, frames) -> PetsData:
        """A copy keeping only the frames at the given 0-based rows (re-indexed)."""
        frames = np.asarray(sorted(set(int(f) for f in frames)), dtype=int)
        if frames.size == 0 or frames.min() < 0 or frames.max() >= self.n_frames:
            raise EmverseError(
                f"frame selection {frames.tolist()} is out of range for {self.n_frames} frames "
                f"in {self.source}; give 0-based rows below {self.n_frames}"
            )
        remap = -np.ones(self.n_frames, dtype=int)
        remap[frames] = np.arange(frames.size)
        keep = remap[self.frame_index] >= 0
        f = self.frames
        return attrs.evolve(
            self,
            frames=PetsFrames(
                f.frame_id[frames], f.zone_axis[frames], f.precession_angle_deg[frames],
                f.alpha_deg[frames], f.beta_deg[frames], f.omega_deg[frames], f.scale[frames],
            ),
            hkl=self.hkl[keep], intensity=self.intensity[keep], sigma=self.sigma[keep],
            frame_index=remap[self.frame_index[keep]],
        )


def _require_columns(tags, columns, source, what):
    missing = [c for c in columns if c not in tags]
    if len(missing) == len(columns):
        raise EmverseError(
            f"{source}: no {what} loop found (expected columns {', '.join(columns)}); "
            "is this a PETS2 dynamical-refinement (.cif_pets) file?"
        )
    if missing:
        raise EmverseError(
            f"{source}: the {what} loop lacks column(s) {', '.join(missing)}; "
            "export the file again from PETS2 with dynamical-refinement output"
        )


def _number(value) -> float:
    """A CIF value as a float: ASE's parser gives numbers for numeric fields; ``.``/``?`` -> nan,
    a standard uncertainty in brackets (``0.51538(12)``) is dropped."""
    if isinstance(value, (int, float)):
        return float(value)
    if value is None:
        return float("nan")
    text = str(value).strip()
    if text in (".", "?", ""):
        return float("nan")
    return float(text.split("(")[0])


def _scalar(value, tag, source) -> float:
    """One item's number, finite, or one error naming the item."""
    try:
        number = _number(value)
    except ValueError:
        raise EmverseError(f"{source}: {tag} = {str(value)!r} is not a number; fix the file") from None
    if not np.isfinite(number):
        raise EmverseError(f"{source}: {tag} = {str(value)!r} is not a finite number; fix the file")
    return number


def _numbers(values, column, source) -> np.ndarray:
    try:
        return np.array([_number(v) for v in values], dtype=float)
    except ValueError as err:
        raise EmverseError(f"{source}: column {column} holds a non-number ({err}); fix the file") from err


def _read_block(path: str | Path) -> tuple[dict, str]:
    """Tags of the first data block (ASE's CIF parser, the project's one), lower-case keys."""
    from emverse.crystal import parse_cif_blocks

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise EmverseError(f"PETS2 file {source!r} does not exist; check the path")
    raw = path.read_bytes()
    if raw and not raw.endswith((b"\n", b"\r")):
        # PETS2 ends its last line; a file cut inside a line may end mid-number (13 -> 1)
        raise EmverseError(f"{source}: ends inside a line, so it looks truncated (a cut row can still read as "
                           "numbers); copy the complete file, or end its last line with a newline")
    try:
        blocks = parse_cif_blocks(source)
    except EmverseError:
        raise
    except Exception as err:  # the parser raises many types
        raise EmverseError(f"{source}: not a readable CIF ({err}); give a PETS2 .cif_pets file") from err
    if not blocks:
        raise EmverseError(f"{source}: no data block; give a PETS2 .cif_pets file")
    return {k.lower(): v for k, v in blocks[0].items()}, source


def read_pets(path: str | Path, *, strict: bool = False) -> PetsData:
    """Read a PETS2 ``.cif_pets`` file (see the module docstring for the rules)."""
    tags, source = _read_block(path)

    cell = []
    for tag in CELL_ITEMS:
        value = tags.get(tag)
        if value is None:
            raise EmverseError(f"{source}: cell item {tag} is missing; the file needs a full cell")
        cell.append(_scalar(value, tag, source))
    if not (all(v > 0 for v in cell[:3]) and all(0 < v < 180 for v in cell[3:])):
        raise EmverseError(f"{source}: cell {cell} is not a cell (lengths > 0 Å, angles between 0 and "
                           "180°); fix the file")
    wavelength = tags.get("_diffrn_radiation_wavelength")
    if wavelength is None:
        raise EmverseError(f"{source}: _diffrn_radiation_wavelength is missing (Å); add it")
    wavelength = _scalar(wavelength, "_diffrn_radiation_wavelength", source)
    if not wavelength > 0:
        raise EmverseError(f"{source}: wavelength {wavelength} Å is not positive; fix the file")

    ub = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            tag = f"_diffrn_orient_matrix_ub_{i + 1}{j + 1}"
            value = tags.get(tag)
            if value is None:
                raise EmverseError(f"{source}: orientation matrix item {tag} is missing; add the UB matrix")
            ub[i, j] = _scalar(value, tag, source)
    if abs(np.linalg.det(ub)) < 1e-12:
        raise EmverseError(f"{source}: the UB matrix is singular; fix the orientation matrix")

    details = str(tags.get("_diffrn_measurement_details", "") or "")
    geometry_match = re.search(r"data collection geometry:\s*([a-z ]+)", details, re.I)
    geometry = geometry_match.group(1).strip().lower() if geometry_match else "continuous rotation"
    dstar_match = re.search(r"dstarmax:\s*([0-9.]+)", details, re.I)
    dstarmax = float(dstar_match.group(1)) if dstar_match else float("nan")

    _require_columns(tags, FRAME_COLUMNS, source, "frame (zone axis)")
    _require_columns(tags, REFLECTION_COLUMNS, source, "reflection")

    fcol = {c: _numbers(tags[c], c, source) for c in FRAME_COLUMNS}
    frame_id = fcol["_diffrn_zone_axis_id"].astype(int)
    if len(set(frame_id.tolist())) != frame_id.size:
        raise EmverseError(f"{source}: frame ids in _diffrn_zone_axis_id repeat; each frame needs one id")
    bad_frames = ~np.isfinite(np.stack([fcol[c] for c in FRAME_COLUMNS[1:]], axis=1)).all(axis=1)
    if bad_frames.any():
        raise EmverseError(
            f"{source}: frame(s) {frame_id[bad_frames].tolist()} have non-numeric geometry; fix the zone-axis loop"
        )

    rcol = {c: _numbers(tags[c], c, source) for c in REFLECTION_COLUMNS}
    hkl_float = np.stack([rcol[c] for c in REFLECTION_COLUMNS[:3]], axis=1)
    if not np.all(np.isfinite(hkl_float)) or not np.all(hkl_float == np.round(hkl_float)):
        raise EmverseError(f"{source}: some h k l indices are not integers; fix the reflection loop")
    hkl = hkl_float.astype(int)
    intensity = rcol["_refln_intensity_meas"]
    sigma = rcol["_refln_intensity_sigma"]
    refl_frame = rcol["_refln_zone_axis_id"].astype(int)

    id_to_row = {int(fid): row for row, fid in enumerate(frame_id)}
    unknown = sorted(set(refl_frame.tolist()) - set(id_to_row))
    if unknown:
        raise EmverseError(
            f"{source}: reflections refer to frame id(s) {unknown[:10]} that the zone-axis loop does not "
            "define; the file is truncated or mixed up"
        )

    skipped: dict[str, int] = {}
    nonfinite = ~(np.isfinite(intensity) & np.isfinite(sigma))
    bad_sigma = np.isfinite(sigma) & (sigma <= 0)
    for name, mask, fix in (
        ("nonfinite_intensity_or_sigma", nonfinite, "remove or re-integrate them"),
        ("sigma_not_positive", bad_sigma, "σ(I) must be > 0"),
    ):
        count = int(mask.sum())
        if count:
            message = f"{source}: {count} reflection(s) with {name.replace('_', ' ')} ({fix})"
            if strict:
                raise EmverseError(message + "; strict reading refuses them")
            log.warning("%s: skipped", message)
            skipped[name] = count
    keep = ~(nonfinite | bad_sigma)
    hkl, intensity, sigma, refl_frame = hkl[keep], intensity[keep], sigma[keep], refl_frame[keep]
    frame_index = np.array([id_to_row[int(f)] for f in refl_frame], dtype=int)

    frames = PetsFrames(
        frame_id=frame_id,
        zone_axis=np.stack([fcol[c] for c in FRAME_COLUMNS[1:4]], axis=1),
        precession_angle_deg=fcol["_diffrn_zone_axis_precession_angle"],
        alpha_deg=fcol["_diffrn_zone_axis_alpha"],
        beta_deg=fcol["_diffrn_zone_axis_beta"],
        omega_deg=fcol["_diffrn_zone_axis_omega"],
        scale=fcol["_diffrn_zone_axis_scale"],
    )
    data = PetsData(
        source=source, cell=tuple(cell), wavelength_angstrom=wavelength, ub=ub, geometry=geometry,
        dstarmax_inv_angstrom=dstarmax, frames=frames, hkl=hkl, intensity=intensity, sigma=sigma,
        frame_index=frame_index, skipped=skipped,
    )
    counts = np.bincount(frame_index, minlength=len(frames))
    empty = np.flatnonzero(counts == 0)
    trailing = empty.size and np.array_equal(empty, np.arange(len(frames) - empty.size, len(frames)))
    if trailing and np.all(np.diff(frame_index) >= 0):
        # reflections listed frame by frame and the last frames have none: the signature of a
        # file cut at a row boundary (PETS2 does not count its rows), not of a real data set
        raise EmverseError(
            f"{source}: the last {empty.size} frame(s) (ids {frame_id[empty][:10].tolist()}) have no "
            "reflections while the reflections are listed frame by frame, so the file looks truncated; "
            "copy the complete file from PETS2"
        )
    if empty.size:
        message = (
            f"{source}: {empty.size} frame(s) have no reflections (ids {frame_id[empty][:10].tolist()})"
        )
        if strict:
            raise EmverseError(message + "; strict reading refuses them")
        log.warning("%s: dropped", message)
        keep_rows = np.flatnonzero(counts > 0)
        data = data.select_frames(keep_rows)
        data = attrs.evolve(data, skipped={**skipped, "frames_without_reflections": int(empty.size)})
    if data.n_reflections == 0:
        raise EmverseError(f"{source}: no usable reflections left; nothing to refine")
    return data


def summary(data: PetsData) -> str:
    a, b, c, al, be, ga = data.cell
    return (
        f"{Path(data.source).name}: cell {a:.4f} {b:.4f} {c:.4f} Å {al:.2f} {be:.2f} {ga:.2f}°, "
        f"λ = {data.wavelength_angstrom:.5f} Å, {data.n_frames} frames, {data.n_reflections} reflections, "
        f"{data.geometry}, d*max {data.dstarmax_inv_angstrom} Å⁻¹"
        + (f", skipped {data.skipped}" if data.skipped else "")
    )


def wavelength_to_voltage_kv(wavelength_angstrom: float) -> float:
    """Accelerating voltage (kV) whose relativistic electron wavelength is ``wavelength_angstrom``
    (the inverse of :func:`emverse.electron.wavelength_angstrom`, solved by bisection)."""
    from emverse.electron import wavelength_angstrom as wavelength_at

    if not wavelength_angstrom > 0:
        raise EmverseError(f"wavelength {wavelength_angstrom} Å is not positive; give λ in Å")
    low, high = 1e-3, 1e5  # kV; λ falls monotonically with the voltage
    for _ in range(200):
        mid = math.sqrt(low * high)
        if wavelength_at(mid) > wavelength_angstrom:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)
