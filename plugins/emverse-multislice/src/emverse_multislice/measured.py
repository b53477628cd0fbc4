"""Measured 4D-STEM in: calibrations → model geometry, patterns → the model's detector.

A measured dataset (scan_y, scan_x, k_y, k_x) in counts, read by
:func:`emverse.readers.read`, meets :class:`MultislicePtychography` here:

* :func:`model_geometry` turns the calibration (beam energy, convergence
  semi-angle, reciprocal pixel size, scan step, scan rotation) and the
  recipe's choices (detector window ``probe_gpts``, binning, vacuum padding)
  into the forward model's fields: the real-space pixel is
  1 / (window × model detector pixel), the object covers the scan plus the
  probe window plus the padding on every side;
* :class:`PatternStack` serves the patterns on the model's detector: each
  centred pattern is resampled from the measured pixel to the model's
  (bilinear, counts per area conserved: :func:`emverse.readers.resample_pattern`)
  and cropped to the window, then divided by the mean counts per pattern so
  that patterns sum to about 1, as the model's do. Patterns are read on
  demand (``rows``) from a lazy (dask / Zarr / memory-mapped) array, a
  mini-batch at a time, so datasets larger than memory stream.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.readers import resample_pattern


def _rotation(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def model_geometry(
    data_shape: tuple[int, int, int, int],
    calibration,
    *,
    probe_gpts: tuple[int, int],
    detector_binning: float,
    depth: int,
    padding_px: int,
    scan_affine,
) -> dict:
    """Forward-model fields for a measured dataset (see the module docstring).

    Returns ``voltage_kv``, ``semiangle_mrad``, ``sampling_angstrom``,
    ``scan_shape``, ``scan_step_angstrom``, ``scan_affine`` (the recipe's affine
    after the calibrated scan rotation), ``object_shape``, ``probe_gpts`` and
    ``model_pixel`` (the model's detector pixel, Å⁻¹).
    """
    scan_rows, scan_cols, k_rows, k_cols = (int(n) for n in data_shape)
    kh, kw = (int(n) for n in probe_gpts)
    if kh != kw:
        raise EmverseError(f"forward_model.probe_gpts {list(probe_gpts)}: a measured detector needs a square "
                           "window (the same pixel size along both axes); give two equal numbers")
    if not (math.isfinite(detector_binning) and detector_binning > 0):
        raise EmverseError(f"options.detector_binning = {detector_binning!r}: give a positive number "
                           "(model detector pixel ÷ measured pixel; 1 = crop only)")
    needed = kh * detector_binning
    if needed > min(k_rows, k_cols) + 1e-9:
        raise EmverseError(
            f"forward_model.probe_gpts = {kh} model pixels × options.detector_binning {detector_binning:g} span "
            f"{needed:g} measured pixels, but the patterns are {k_rows} × {k_cols}; give a smaller window or binning")
    model_pixel = calibration.reciprocal_pixel_size * detector_binning  # Å⁻¹
    sampling = 1.0 / (kh * model_pixel)
    rotation = calibration.scan_rotation_deg or 0.0
    affine = _rotation(rotation) @ np.asarray(scan_affine, dtype=float)
    step = calibration.scan_step_angstrom
    grid = np.stack(np.meshgrid(np.arange(scan_rows) - (scan_rows - 1) / 2,
                                np.arange(scan_cols) - (scan_cols - 1) / 2, indexing="ij"), -1).reshape(-1, 2)
    reach = np.abs(grid * step @ affine.T).max(axis=0)  # Å from the scan centre, per axis
    lateral = [int(math.ceil(2 * r / sampling)) + n + 2 * int(padding_px) + 2 for r, n in zip(reach, (kh, kw), strict=True)]
    return {
        "voltage_kv": float(calibration.beam_energy_kv),
        "semiangle_mrad": float(calibration.convergence_semiangle_mrad),
        "sampling_angstrom": sampling,
        "scan_shape": (scan_rows, scan_cols),
        "scan_step_angstrom": float(step),
        "scan_origin_angstrom": None,
        "scan_affine": tuple(tuple(float(v) for v in row) for row in affine),
        "object_shape": (int(depth), *lateral),
        "probe_gpts": (kh, kw),
        "model_pixel": model_pixel,
    }


class PatternStack:
    """Measured patterns on the model's detector, read a mini-batch at a time.

    ``data`` (scan_y, scan_x, k_y, k_x) counts, any array with numpy-style
    indexing (numpy, memory map, dask); ``measured_pixel`` / ``model_pixel``
    the detector pixel sizes (Å⁻¹); ``window`` (kH, kW) model pixels. ``shape``
    is (1, n_scan, kH, kW) like an in-memory observation; ``rows(indices)`` the
    selected patterns (1, n, kH, kW) divided by ``scale`` (the mean counts per
    pattern on the window, computed in one streamed pass). ``transpose`` swaps the detector
    axes of every pattern (k_y ↔ k_x), for detectors mounted mirrored relative to the scan.
    ``keep`` holds the patterns in memory after the scale pass instead of reading them again
    (for data that fit in memory).
    """

    def __init__(self, data, measured_pixel: float, model_pixel: float, window: tuple[int, int], *,
                 source: str = "observation", dtype=torch.float32, device="cpu", chunk: int = 256,
                 transpose: bool = False, keep: bool = False):
        if data.ndim != 4:
            raise EmverseError(f"{source}: 4D (scan_y, scan_x, k_y, k_x) data needed, got shape {tuple(data.shape)}")
        self.data = data
        self.source = source
        self.n_scan = int(data.shape[0]) * int(data.shape[1])
        self.measured_pixel = float(measured_pixel)
        self.model_pixel = float(model_pixel)
        self.window = tuple(int(n) for n in window)
        self.transpose = bool(transpose)
        self.dtype = dtype
        self.device = torch.device(device)
        self.shape = (1, self.n_scan, *self.window)
        self.scale = 1.0
        self._kept = None
        total, count, kept = 0.0, 0, []
        for part in np.array_split(np.arange(self.n_scan), max(1, math.ceil(self.n_scan / chunk))):
            counts = self._counts(part)
            if keep:
                kept.append(counts)
            bad = ~np.isfinite(counts)
            if bad.any():
                raise EmverseError(f"{source}: NaN or infinite counts in scan position {int(part[np.argwhere(bad)[0, 0]])}; "
                                   "mask or interpolate them first")
            if (counts < 0).any():
                raise EmverseError(f"{source}: negative counts (min {counts.min():.4g}); subtract the dark level "
                                   "so that counts are >= 0")
            total += float(counts.sum())
            count += len(part)
        if keep:  # the pass that finds the scale read every pattern: hold them, do not read again
            self._kept = np.concatenate(kept)
        self.scale = total / count
        if not self.scale > 0:
            raise EmverseError(f"{source}: the patterns hold no counts inside the model's detector window")

    def _counts(self, indices: np.ndarray) -> np.ndarray:
        """Patterns of flat scan ``indices`` (n, kH, kW) in counts on the model's detector."""
        if self._kept is not None:
            return self._kept[indices]
        order = np.argsort(indices)
        sorted_indices = np.asarray(indices)[order]
        rows, cols = np.divmod(sorted_indices, self.data.shape[1])
        raw = np.stack([np.asarray(self.data[int(r), int(c)], dtype=np.float64) for r, c in zip(rows, cols, strict=True)])
        if self.transpose:  # detector axes swapped relative to the scan's (a mirror no rotation undoes)
            raw = raw.transpose(0, 2, 1)
        out = np.empty((len(indices), *self.window))
        for k, pattern in enumerate(raw):
            if self.model_pixel == self.measured_pixel:
                out[order[k]] = _crop(pattern, self.window)
            else:
                out[order[k]] = resample_pattern(pattern, self.measured_pixel, self.model_pixel, self.window,
                                                 source=self.source)
        return out

    def rows(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(indices).cpu().numpy().astype(np.int64)
        values = self._counts(idx) / self.scale
        return torch.as_tensor(values, dtype=self.dtype, device=self.device)[None]

    def to_tensor(self) -> torch.Tensor:
        """All patterns at once (1, n_scan, kH, kW) (for data that fit in memory)."""
        return self.rows(np.arange(self.n_scan))


def _crop(pattern: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """The window (kH, kW) of a pattern around its centre pixel (n//2, n//2)."""
    r0 = pattern.shape[0] // 2 - window[0] // 2
    c0 = pattern.shape[1] // 2 - window[1] // 2
    return pattern[r0:r0 + window[0], c0:c0 + window[1]]


def simulate_measurement(
    path,
    *,
    structure: str = "builtin:srtio3",
    zone_axis=(0, 0, 1),
    in_plane_rotation_deg: float = 0.0,
    vacancy_fraction: float = 0.0,
    voltage_kv: float = 300.0,
    semiangle_mrad: float = 25.0,
    defocus_angstrom: float = 60.0,
    reciprocal_pixel_size: float = 0.125,
    detector_pixels: int = 32,
    depth: int = 2,
    slice_thickness_angstrom: float = 1.9525,
    scan_shape=(12, 12),
    scan_step_angstrom: float = 0.6,
    padding_px: int = 8,
    true_affine=((1.0, 0.0), (0.0, 1.0)),
    jitter_angstrom: float = 0.0,
    source_size_angstrom: float = 0.0,
    detector_blur_px: float = 0.0,
    dose_e_per_angstrom2: float = 1e4,
    seed: int = 0,
) -> dict:
    """Realistic simulated 4D-STEM counts written as a measured file (``.emd`` through
    rosettasciio, ``.zarr`` with its calibration as attributes, or ``.npy`` + TOML table).

    The crystal (turned by ``in_plane_rotation_deg`` about the beam, with ``vacancy_fraction``
    of its atoms removed at random: point defects break the periodicity that would otherwise
    let a strained object mimic a distorted scan) is rendered on the grid a reconstruction of this file computes
    (:func:`model_geometry` with the nominal scan); the data are made with the scan distorted
    by ``true_affine`` about its centre plus Gaussian jitter (σ ``jitter_angstrom`` per axis,
    zero mean), a Gaussian source (``source_size_angstrom``), a detector blur and Poisson
    noise at ``dose_e_per_angstrom2``. Returns the truth: ``phase`` (depth, H, W) rad,
    ``positions`` (n, 2) Å, ``affine`` (2, 2), ``nominal`` (n, 2) Å.
    """
    from pathlib import Path

    from emverse.readers import Calibration

    from emverse_multislice.ptychography import MultislicePtychography
    from emverse_multislice.render import render_phase_volume

    path = Path(path)
    cal = Calibration(beam_energy_kv=voltage_kv, convergence_semiangle_mrad=semiangle_mrad,
                      reciprocal_pixel_size=reciprocal_pixel_size, scan_step_angstrom=scan_step_angstrom)
    geometry = model_geometry((*scan_shape, detector_pixels, detector_pixels), cal,
                              probe_gpts=(detector_pixels, detector_pixels), detector_binning=1.0, depth=depth,
                              padding_px=padding_px, scan_affine=((1.0, 0.0), (0.0, 1.0)))
    geometry.pop("model_pixel")
    geometry["scan_affine"] = tuple(tuple(float(v) for v in row) for row in true_affine)
    phase = render_phase_volume(structure, shape=geometry["object_shape"],
                                sampling_angstrom=geometry["sampling_angstrom"],
                                slice_thickness_angstrom=slice_thickness_angstrom, voltage_kv=voltage_kv,
                                zone_axis=tuple(zone_axis), in_plane_rotation_deg=in_plane_rotation_deg,
                                vacancy_fraction=vacancy_fraction, rng=np.random.default_rng(int(seed)),
                                dtype=torch.float64)
    model = MultislicePtychography(**geometry, defocus_angstrom=defocus_angstrom,
                                   slice_thickness_angstrom=slice_thickness_angstrom,
                                   source_size_angstrom=source_size_angstrom, detector_blur_px=detector_blur_px,
                                   dose_e_per_angstrom2=dose_e_per_angstrom2)
    generator = torch.Generator().manual_seed(int(seed))
    jitter = jitter_angstrom * torch.randn(model.n_scan, 2, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        model.position_offsets.copy_(jitter - jitter.mean(dim=0))
        model._check_positions(model.positions_angstrom)
        counts = model.simulate(phase[None], generator=generator)[0]  # (n, k, k) counts / dose scale
    counts = (counts * model.noise.dose).round().reshape(*scan_shape, detector_pixels, detector_pixels)
    counts = counts.to(torch.float32).numpy()
    write_4dstem(path, counts, cal)
    return {"phase": phase, "positions": model.positions_angstrom.detach().clone(),
            "nominal": model.nominal_positions.clone(), "affine": torch.tensor(true_affine, dtype=torch.float64),
            "geometry": geometry}


def _integer_counts(counts: np.ndarray) -> np.ndarray:
    """Whole counts as the smallest unsigned type that holds them (detectors write integers)."""
    if np.all(counts == np.round(counts)) and counts.min() >= 0:
        return counts.astype(np.uint16 if counts.max() < 2**16 else np.uint32)
    return counts


def effective_affine(nominal: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The least-squares affine A (2, 2) of ``positions`` ≈ centre + A·(nominal − centre) + shift
    (n, 2 Å each): the global part of a scan distortion, which is what a reconstruction can
    recover (jitter has a random linear part of its own)."""
    relative = nominal - nominal.mean(dim=0)
    design = torch.cat([relative, torch.ones_like(relative[:, :1])], dim=1)
    solution = torch.linalg.lstsq(design, positions - nominal.mean(dim=0)).solution
    return solution[:2].T


def write_4dstem(path, counts: np.ndarray, calibration) -> None:
    """Write (scan_y, scan_x, k_y, k_x) counts with their calibration, in the format of the
    suffix: ``.emd`` (Berkeley EMD through rosettasciio: scan axes in Å, detector axes in 1/Å;
    that format keeps no beam energy or semi-angle), ``.zarr`` (calibration fields as
    attributes) or ``.npy`` (calibration table ``NAME.npy.toml``)."""
    from pathlib import Path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".emd":
        from rsciio.emd import file_writer

        step, pixel = calibration.scan_step_angstrom, calibration.reciprocal_pixel_size
        axes = [{"name": n, "size": int(counts.shape[i]), "scale": float(sc), "offset": 0.0, "units": u,
                 "navigate": i < 2}
                for i, (n, sc, u) in enumerate((("scan_y", step, "Å"), ("scan_x", step, "Å"),
                                                 ("k_y", pixel, "1/Å"), ("k_x", pixel, "1/Å")))]
        # whole patterns, one scan row, per chunk (the writer reverses the axes of data and chunks)
        file_writer(str(path), {"data": _integer_counts(counts), "axes": axes, "metadata": {"General": {"title": path.stem},
                                                                             "Signal": {"signal_type": ""}},
                                "original_metadata": {}},
                    chunks=(int(counts.shape[1]), 1, int(counts.shape[2]), int(counts.shape[3])))
    elif suffix == ".zarr":
        from emverse.readers import write_zarr

        write_zarr(path, _integer_counts(counts), calibration)
    elif suffix == ".npy":
        np.save(path, _integer_counts(counts))
        lines = [f"{k} = {v['value']!r}" for k, v in calibration.report().items()]
        path.with_name(path.name + ".toml").write_text("\n".join(lines) + "\n")
    else:
        raise EmverseError(f"{path}: write .emd, .zarr or .npy")


__all__ = ["PatternStack", "effective_affine", "model_geometry", "simulate_measurement", "write_4dstem"]
