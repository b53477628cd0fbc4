"""Measured data in: one call, ``read(source)``, for files and in-memory signals.

File formats go through maintained readers (rosettasciio), never through
hand-written parsers:

=================  =====================================  ==========================
extension          reader                                 notes
=================  =====================================  ==========================
.dm3 .dm4          ``rsciio.digitalmicrograph``           Gatan DigitalMicrograph
.emd               ``rsciio.emd``                         Berkeley EMD, Velox
.hspy .h5 .hdf5    ``rsciio.hspy`` (then ``rsciio.emd``)  HyperSpy HDF5
.mib               ``rsciio.quantumdetector``             Merlin/MediPix
.tif .tiff         ``rsciio.tiff``
.npy               numpy, with a metadata table beside it ``NAME.npy.toml`` or ``NAME.toml``
.zarr              zarr; the metadata table is the array's attributes
=================  =====================================  ==========================

From Python, anything with ``.data`` and ``.axes_manager`` (a hyperspy
``Signal2D``/``Signal4D``, or a duck-typed stand-in) is accepted where a path is, and so
is a py4DSTEM ``DataCube`` (``.data`` + ``.calibration`` with its ``get_Q_pixel_size`` …
getters).

Calibrations (:class:`Calibration`) carry units in their names: beam energy
(kV), convergence semi-angle (mrad), reciprocal pixel size (Å⁻¹/px), camera
length (mm), scan step (Å), scan–detector rotation (deg), zone axis ([uvw]).
Each is taken from the file's metadata where present and replaced by the
caller's ``overrides`` (recipe fields) where given; ``Calibration.report()``
says which value came from where, for the run's environment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from emverse.errors import EmverseError

#: calibration fields, their units and what they mean
CALIBRATION_FIELDS = {
    "beam_energy_kv": ("kV", "accelerating voltage"),
    "convergence_semiangle_mrad": ("mrad", "probe convergence semi-angle"),
    "reciprocal_pixel_size": ("1/Å per pixel", "detector pixel size in reciprocal space"),
    "camera_length_mm": ("mm", "camera length"),
    "scan_step_angstrom": ("Å", "probe scan step"),
    "scan_rotation_deg": ("deg", "rotation between scan and detector axes"),
    "zone_axis": ("[uvw]", "crystal direction along the beam"),
}

_RECIPROCAL_UNITS = {"1/å": 1.0, "1/a": 1.0, "1/angstrom": 1.0, "å^-1": 1.0, "a^-1": 1.0,
                     "1/nm": 0.1, "nm^-1": 0.1, "1/m": 1e-10}
_LENGTH_UNITS = {"å": 1.0, "a": 1.0, "angstrom": 1.0, "nm": 10.0, "µm": 1e4, "um": 1e4, "m": 1e10}


@dataclass(frozen=True)
class Calibration:
    """Calibrations with units; ``None`` where neither the file nor the caller gave one."""

    beam_energy_kv: float | None = None
    convergence_semiangle_mrad: float | None = None
    reciprocal_pixel_size: float | None = None  # Å⁻¹ per detector pixel
    camera_length_mm: float | None = None
    scan_step_angstrom: float | None = None
    scan_rotation_deg: float | None = None
    zone_axis: tuple[int, int, int] | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> "file" | "recipe"

    def report(self) -> dict[str, dict[str, Any]]:
        """{field: {"value", "unit", "source"}} for every calibration that is set."""
        out = {}
        for name, (unit, _) in CALIBRATION_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                out[name] = {"value": list(value) if name == "zone_axis" else value, "unit": unit,
                             "source": self.sources.get(name, "file")}
        return out


@dataclass
class Measurement:
    """An array read from a file or signal, with its calibration and provenance."""

    data: np.ndarray
    calibration: Calibration
    source: str  # the path, or a description of the in-memory object
    original_metadata: dict = field(default_factory=dict)

    def require(self, *names: str) -> None:
        """Raise one error naming every calibration in ``names`` that is missing."""
        missing = [n for n in names if getattr(self.calibration, n) is None]
        if missing:
            details = ", ".join(f"{n} ({CALIBRATION_FIELDS[n][0]})" for n in missing)
            raise EmverseError(
                f"{self.source}: no calibration for {details} in the file's metadata and none given; "
                f"set {' and '.join(missing)} in the recipe"
            )


def read(source, *, ndim: int | None = None, overrides: dict | None = None,
         required: tuple[str, ...] = (), lazy: bool = False) -> Measurement:
    """Read ``source`` (a path or a signal object) into a :class:`Measurement`.

    ``ndim``: the number of array dimensions the caller needs (e.g. 4 for 4D-STEM
    (scan_y, scan_x, k_y, k_x), 2 for an image; singleton axes are squeezed first);
    ``overrides``: calibration values from the recipe, which replace the file's;
    ``required``: calibration fields that must be known after overrides;
    ``lazy``: leave the data on disk as a dask array, read chunk by chunk when indexed (Zarr
    stores, and every format rosettasciio reads lazily: EMD, HDF5, MIB, …), for data larger
    than memory; .npy files are memory-mapped.
    """
    if hasattr(source, "data") and hasattr(source, "axes_manager"):
        data, axes, metadata, original, name = _from_signal(source)
    elif hasattr(source, "data") and hasattr(getattr(source, "calibration", None), "get_Q_pixel_size"):
        data, axes, metadata, original, name = _from_datacube(source)
    else:
        path = Path(source)
        if not path.exists():
            raise EmverseError(f"{path}: no such file; check the path (recipe paths may start with shared:)")
        data, axes, metadata, original = _from_file(path, lazy=lazy)
        name = str(path)
    if not lazy:
        data = np.asarray(data)
    squeezed = [i for i, n in enumerate(data.shape) if n == 1]
    if ndim is not None and data.ndim != ndim and data.ndim - len(squeezed) == ndim:
        axes = [a for i, a in enumerate(axes) if i not in squeezed] if len(axes) == data.ndim else axes
        data = data.reshape(tuple(n for n in data.shape if n != 1))
    if ndim is not None and data.ndim != ndim:
        layout = "(scan_y, scan_x, k_y, k_x)" if ndim == 4 else f"{ndim} axes"
        raise EmverseError(
            f"{name}: the data has shape {tuple(data.shape)} ({data.ndim}D) but {ndim}D {layout} is "
            "needed; give a file or signal with that layout"
        )
    found = _calibration_from(metadata, axes, data.ndim)
    calibration = _merge(found, overrides or {}, name)
    measurement = Measurement(data, calibration, name, original)
    measurement.require(*required)
    return measurement


def _merge(found: dict, overrides: dict, name: str) -> Calibration:
    values, sources = {}, {}
    for key, value in found.items():
        if value is not None:
            values[key], sources[key] = value, "file"
    for key, value in overrides.items():
        if key not in CALIBRATION_FIELDS:
            raise EmverseError(f"calibration {key!r} is unknown; use one of {', '.join(CALIBRATION_FIELDS)}")
        if value is None:
            continue
        values[key], sources[key] = value, "recipe"
    for key, value in values.items():
        if key == "zone_axis":
            values[key] = tuple(int(v) for v in value)
            continue
        if key == "scan_rotation_deg":
            ok = math.isfinite(float(value))
        else:
            ok = math.isfinite(float(value)) and float(value) > 0
        if not ok:
            raise EmverseError(
                f"{name}: calibration {key} = {value} ({CALIBRATION_FIELDS[key][0]}, from the "
                f"{sources[key]}) is not a positive finite number; give the {CALIBRATION_FIELDS[key][1]} "
                f"as {key} in the recipe"
            )
        values[key] = float(value)
    return Calibration(**values, sources=sources)


def _from_signal(signal):
    """hyperspy-like object -> (data, axes as dicts, metadata dict, original dict, name)."""
    axes = []
    for axis in signal.axes_manager._axes if hasattr(signal.axes_manager, "_axes") else signal.axes_manager:
        axes.append({"scale": getattr(axis, "scale", 1.0), "units": getattr(axis, "units", ""),
                     "navigate": getattr(axis, "navigate", False),
                     "index_in_array": getattr(axis, "index_in_array", None)})
    axes.sort(key=lambda a: a["index_in_array"] if a["index_in_array"] is not None else 0)
    metadata = _as_dict(getattr(signal, "metadata", {}))
    original = _as_dict(getattr(signal, "original_metadata", {}))
    title = metadata.get("General", {}).get("title", "") if isinstance(metadata, dict) else ""
    return signal.data, axes, metadata, original, f"<{type(signal).__name__} {title}>".replace(" >", ">")


def _from_datacube(cube):
    """py4DSTEM ``DataCube``-like object (``.data`` (R_x, R_y, Q_x, Q_y) + ``.calibration`` with
    ``get_Q_pixel_size/units``, ``get_R_pixel_size/units``, ``get_QR_rotation_degrees``)."""
    cal = cube.calibration

    def value(getter):
        try:
            return getattr(cal, getter)()
        except Exception:  # a calibration that was never set raises or returns None
            return None

    data = cube.data
    q = {"scale": value("get_Q_pixel_size"), "units": value("get_Q_pixel_units") or "", "navigate": False}
    r = {"scale": value("get_R_pixel_size"), "units": value("get_R_pixel_units") or "", "navigate": True}
    axes = [dict(r) for _ in range(data.ndim - 2)] + [dict(q), dict(q)]
    metadata = {}
    rotation = value("get_QR_rotation_degrees")
    if rotation is not None:
        metadata = {"Acquisition_instrument": {"TEM": {"scan_rotation": rotation}}}
    return data, axes, metadata, {}, f"<{type(cube).__name__} {getattr(cube, 'name', '')}>".replace(" >", ">")


def _as_dict(tree) -> dict:
    if isinstance(tree, dict):
        return tree
    if hasattr(tree, "as_dictionary"):
        return tree.as_dictionary()
    return {}


def _from_file(path: Path, lazy: bool = False):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = np.load(path, allow_pickle=False, mmap_mode="r" if lazy else None)
        return data, [], _sidecar_table(path), {}
    if suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").exists()):
        import zarr

        array = zarr.open_array(str(path), mode="r")
        table = dict(array.attrs)
        if lazy:
            import dask.array

            return dask.array.from_zarr(array), [], {"table": table}, table
        return np.asarray(array), [], {"table": table}, table
    module = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd",
              ".hspy": "hspy", ".h5": "hspy", ".hdf5": "hspy", ".mib": "quantumdetector",
              ".tif": "tiff", ".tiff": "tiff"}.get(suffix)
    if module is None:
        raise EmverseError(
            f"{path}: format {suffix!r} is not supported; use .dm3/.dm4, .emd, .hspy/.h5, .mib, "
            ".tif/.tiff, .npy (with a metadata table) or .zarr"
        )
    import importlib

    try:
        reader = importlib.import_module(f"rsciio.{module}").file_reader
    except ImportError as exc:
        raise EmverseError(f"{path}: reading {suffix} needs rosettasciio ({exc}); "
                           "pip install 'emverse[readers]'") from exc
    try:
        signals = reader(str(path), lazy=lazy)
    except Exception as exc:
        if module == "hspy":  # an HDF5 file that is not hyperspy's may be an EMD
            from rsciio.emd import file_reader as emd_reader

            signals = emd_reader(str(path), lazy=lazy)
        else:
            raise EmverseError(f"{path}: rosettasciio could not read it ({type(exc).__name__}: {exc})") from exc
    first = signals[0]
    return first["data"], list(first.get("axes", [])), first.get("metadata", {}), \
        first.get("original_metadata", {})


def _sidecar_table(path: Path) -> dict:
    """The metadata table of an .npy file: ``NAME.npy.toml`` or ``NAME.toml`` (calibration
    field names as keys), or none."""
    for candidate in (path.with_name(path.name + ".toml"), path.with_suffix(".toml")):
        if candidate.exists():
            with candidate.open("rb") as handle:
                return {"table": tomllib.load(handle)}
    return {}


def _number(tree: dict, *keys):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    try:
        return float(tree)
    except (TypeError, ValueError):
        return None


def _calibration_from(metadata: dict, axes: list[dict], ndim: int) -> dict:
    """Calibrations found in a metadata table or rosettasciio's metadata and axes."""
    if "table" in metadata:
        table = metadata["table"]
        return {k: table[k] for k in CALIBRATION_FIELDS if k in table}
    tem = ("Acquisition_instrument", "TEM")
    energy_kev = _number(metadata, *tem, "beam_energy")
    found = {
        "beam_energy_kv": energy_kev,  # 1 keV of kinetic energy per kV of accelerating voltage
        "convergence_semiangle_mrad": _number(metadata, *tem, "convergence_angle"),
        "camera_length_mm": _number(metadata, *tem, "camera_length"),
        "scan_rotation_deg": _number(metadata, *tem, "scan_rotation"),
    }
    if any(a.get("navigate", False) for a in axes):
        signal_axes = [a for a in axes if not a.get("navigate", False)][-2:]
        nav_axes = [a for a in axes if a.get("navigate", False)]
    else:  # some writers (EMD) drop the flags: detector axes are the last two
        signal_axes, nav_axes = axes[-2:], axes[:-2]
    for axis in signal_axes:
        unit = _unit(axis)
        if unit in _RECIPROCAL_UNITS and axis.get("scale"):
            found["reciprocal_pixel_size"] = float(axis["scale"]) * _RECIPROCAL_UNITS[unit]
    for axis in nav_axes:
        unit = _unit(axis)
        if unit in _LENGTH_UNITS and axis.get("scale") is not None:
            found["scan_step_angstrom"] = float(axis["scale"]) * _LENGTH_UNITS[unit]
    return found


def _unit(axis: dict) -> str:
    return str(axis.get("units") or "").replace(" ", "").lower()


# ------------------------------------------------------------------ diffraction patterns
def read_pattern(source, overrides: dict | None = None) -> Measurement:
    """A single diffraction pattern (2D): every pixel finite and ≥ 0, else one error naming the
    source and the first bad pixel."""
    measurement = read(source, ndim=2, overrides=overrides)
    data = np.asarray(measurement.data, dtype=np.float64)
    bad = ~np.isfinite(data)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise EmverseError(f"{measurement.source}: {int(bad.sum())} pixel(s) are NaN or infinite (first at "
                           f"row {row}, column {col}); mask or interpolate them before inference")
    if (data < 0).any():
        row, col = (int(v) for v in np.argwhere(data < 0)[0])
        raise EmverseError(f"{measurement.source}: {int((data < 0).sum())} pixel(s) are negative (first at "
                           f"row {row}, column {col}: {data[row, col]:.4g}); subtract the dark level so that "
                           "counts are >= 0")
    measurement.data = data
    return measurement


def check_pattern(path) -> None:
    """Content check for a recipe's pattern file (see :func:`read_pattern`)."""
    read_pattern(path)


def is_signal(value) -> bool:
    """Whether ``value`` is an in-memory measurement :func:`read` accepts (a hyperspy signal or a
    py4DSTEM DataCube, or a duck-typed stand-in)."""
    return hasattr(value, "data") and (hasattr(value, "axes_manager")
                                       or hasattr(getattr(value, "calibration", None), "get_Q_pixel_size"))


def write_zarr(path, data, calibration: Calibration) -> Path:
    """Write an array with its calibration (the fields as attributes) as a Zarr store that
    :func:`read` gives back the same: data chunked by the first axis, so a lazy reader reads
    only what it indexes."""
    import zarr

    path = Path(path)
    data = np.asarray(data)
    chunks = (1, *data.shape[1:]) if data.ndim > 2 else data.shape
    array = zarr.open_array(str(path), mode="w", shape=data.shape, dtype=data.dtype, chunks=chunks)
    array[...] = data
    array.attrs.update({k: v["value"] for k, v in calibration.report().items()})
    return path


def materialise_signal(signal, directory) -> Path:
    """An in-memory signal written once as ``directory/<content hash>.zarr`` (data and
    calibration), so that a recipe can name it by path: a run records where its input came from
    and can be resumed."""
    import hashlib

    measurement = read(signal)
    data = np.ascontiguousarray(measurement.data)
    digest = hashlib.sha256(data.tobytes() + repr((data.shape, data.dtype.str,
                                                    sorted(measurement.calibration.report().items()))).encode())
    path = Path(directory) / f"{digest.hexdigest()[:16]}.zarr"
    if not (path / "zarr.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_zarr(path, data, measurement.calibration)
    return path


def check_4dstem(path) -> None:
    """Content check for a recipe's 4D-STEM file: it opens (lazily) as (scan_y, scan_x, k_y, k_x),
    else one error naming the file and its shape."""
    read(path, ndim=4, lazy=True)


def resample_pattern(data: np.ndarray, from_pixel: float, to_pixel: float, shape: tuple[int, int],
                     source: str = "pattern") -> np.ndarray:
    """A centred pattern of pixel size ``from_pixel`` onto ``shape`` pixels of size ``to_pixel``
    (same units, e.g. Å⁻¹), both with the optic axis at pixel (n//2, n//2). Bilinear; each new
    pixel holds the counts of its area (scaled by (to/from)²). Refused when the new grid
    reaches beyond the measured one."""
    from scipy.ndimage import map_coordinates

    ratio = to_pixel / from_pixel
    rows, cols = shape
    need = (max(rows, cols) / 2) * ratio
    have = min(data.shape) / 2
    if need > have + 0.5:
        raise EmverseError(
            f"{source}: the model's detector spans {2 * need:.1f} measured pixels but the pattern has "
            f"{min(data.shape)}; give a smaller detector (detector_pixels) or a larger pattern")
    r = (np.arange(rows) - rows // 2) * ratio + data.shape[0] // 2
    c = (np.arange(cols) - cols // 2) * ratio + data.shape[1] // 2
    rr, cc = np.meshgrid(r, c, indexing="ij")
    out = map_coordinates(data, [rr, cc], order=1, mode="nearest")
    return out * ratio**2
