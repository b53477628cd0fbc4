"""Read and write ``.gr`` files (PDFgetX2/3, xPDFsuite, diffpy and plain two-column files).

A PDFgetX/xPDFsuite file holds an ini-style configuration (``key = value``
lines, optional ``[PDF]`` sections, comments with ``#``), then the marker
``#### start data``, ``#S 1``, ``#L r($\\AA$) G($\\AA^{-2}$)`` and columns
r (Å), G(r) (Å⁻²) and optionally dr, dG. Files without the marker (e.g. the
DeepStruc simulations: ``# r, Gr`` then numbers) are read from their first
numeric line. Every ``key = value`` pair of the header lands in
``GrData.metadata`` (numbers converted to float).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from emverse.errors import EmverseError
from emverse.io import write_text

__all__ = ["GrData", "header_value", "read_gr", "write_gr"]

_NUMBER_LINE = re.compile(r"^\s*[-+]?(\d|\.\d|nan|inf)", re.IGNORECASE)


@attrs.frozen
class GrData:
    """A measured or simulated G(r): ``r`` in Å, ``g`` in Å⁻², optional ``dr``/``dg``.

    ``metadata`` holds the header's ``key = value`` pairs (qmin, qmax, wavelength,
    composition, ...); ``header`` the raw header text; ``path`` where it came from.
    """

    r: np.ndarray
    g: np.ndarray
    dr: np.ndarray | None = None
    dg: np.ndarray | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    header: str = ""
    path: str = ""

    def get(self, key: str, default=None):
        """A header value by (case-insensitive) key, e.g. ``data.get("qmax")``."""
        lowered = {k.lower(): v for k, v in self.metadata.items()}
        return lowered.get(key.lower(), default)

    @property
    def qmin(self) -> float | None:
        return self.get("qmin")

    @property
    def qmax(self) -> float | None:
        return self.get("qmax")

    @property
    def wavelength(self) -> float | None:
        return self.get("wavelength")

    @property
    def composition(self) -> str | None:
        value = self.get("composition")
        return None if value is None else str(value)

    def tensors(self, dtype=None, device=None):
        """(r, g) as torch tensors (default dtype float64)."""
        import torch

        dtype = dtype or torch.float64
        return (
            torch.as_tensor(self.r, dtype=dtype, device=device),
            torch.as_tensor(self.g, dtype=dtype, device=device),
        )

    def crop(self, rmin: float | None = None, rmax: float | None = None) -> GrData:
        """Only the points with rmin <= r <= rmax (Å)."""
        keep = np.ones_like(self.r, dtype=bool)
        if rmin is not None:
            keep &= self.r >= rmin - 1e-9
        if rmax is not None:
            keep &= self.r <= rmax + 1e-9
        if not keep.any():
            raise EmverseError(
                f"no points of {self.path or 'the G(r)'} lie in r = [{rmin}, {rmax}] Å "
                f"(file covers {self.r[0]:.3f}-{self.r[-1]:.3f} Å); widen the range"
            )
        def sub(a):
            return (None if a is None else a[keep])
        return attrs.evolve(self, r=self.r[keep], g=self.g[keep], dr=sub(self.dr), dg=sub(self.dg))


def _is_start_marker(line: str) -> bool:
    """PDFgetX3/xPDFsuite write '#### start data', PDFgetX2 '##### start data'."""
    text = line.strip()
    return text.startswith("####") and text.lstrip("#").strip().lower() == "start data"


def header_value(data: GrData, key: str) -> float | None:
    """A number from the header by (case-insensitive) key, also where it sits in a comment line.

    First the parsed ``key = value`` metadata; else the first ``key=number`` anywhere in the
    header text, e.g. PDFgetX2's ``## S(q)  qmin=1.0  qmax=30.0`` or PDFgetN's
    ``## Damp Qmin=2.0 Qmax=32``. ``optqmax=`` or ``qmaxinst =`` do not match ``qmax``.
    """
    value = data.get(key)
    if isinstance(value, (int, float)):
        return float(value)
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(key)}\s*=\s*([-+]?\d+\.?\d*(?:[eE][-+]?\d+)?)",
                         re.IGNORECASE)
    match = pattern.search(data.header)
    return float(match.group(1)) if match else None


def _convert(value: str):
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        return text


def _parse_header(lines: list[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    section = ""
    for raw in lines:
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if "=" in line:
            key, _, value = line.partition("=")
            key = key.strip()
            # the [PDF]/[DEFAULT] values are the ones users ask for; others keep their section
            if section and section.upper() not in ("PDF", "DEFAULT") and key in metadata:
                key = f"{section}.{key}"
            metadata.setdefault(key, _convert(value))
    return metadata


def read_gr(path: str | os.PathLike) -> GrData:
    """Read a ``.gr`` file; raise :class:`EmverseError` naming the line for bad data.

    Checks: at least two columns, at least two rows, every value finite, r strictly increasing.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise EmverseError(f"cannot read G(r) file {path}: {exc.strerror}; check the path") from exc
    if text and not text.endswith(("\n", "\r")):
        # writers end the last line; a file cut inside a line may end mid-number (0.0041 -> 0.00)
        raise EmverseError(f"{path}: ends inside a line, so it looks truncated; copy the complete "
                           "file (or end its last line with a newline)")
    if "\0" in text:
        raise EmverseError(f"{path}: contains NUL bytes; it is damaged or not a text .gr file")
    lines = text.splitlines()

    start = None
    for i, line in enumerate(lines):
        if _is_start_marker(line):
            start = i + 1
            break
    if start is None:
        start = next((i for i, line in enumerate(lines) if _NUMBER_LINE.match(line)), len(lines))
    header_lines = lines[: start]

    rows: list[list[float]] = []
    line_numbers: list[int] = []
    for i in range(start, len(lines)):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            continue
        parts = re.split(r"[,\s]+", line)
        try:
            values = [float(p) for p in parts if p]
        except ValueError as exc:
            raise EmverseError(
                f"{path}:{i + 1}: cannot read numbers from {line[:60]!r}; "
                "a .gr data line holds r G [dr dG]"
            ) from exc
        rows.append(values)
        line_numbers.append(i + 1)

    if len(rows) < 2:
        raise EmverseError(f"{path}: found {len(rows)} data rows; a .gr file needs at least 2 (r, G)")
    width = min(len(row) for row in rows)
    if width < 2:
        bad = next(n for n, row in zip(line_numbers, rows, strict=False) if len(row) < 2)
        raise EmverseError(f"{path}:{bad}: a data line has fewer than 2 columns; expected r G [dr dG]")
    data = np.array([row[:width] for row in rows], dtype=np.float64)

    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        k = int(np.argmin(finite))
        raise EmverseError(
            f"{path}:{line_numbers[k]}: non-finite value (NaN or inf) in {lines[line_numbers[k] - 1].strip()!r}; "
            "remove or repair that point"
        )
    r = data[:, 0]
    steps = np.diff(r)
    if not (steps > 0).all():
        k = int(np.argmin(steps > 0))
        raise EmverseError(
            f"{path}:{line_numbers[k + 1]}: r is not strictly increasing (r = {r[k]!r} Å then {r[k + 1]!r} Å); "
            "sort the file by r and remove duplicate points"
        )
    metadata = _parse_header(header_lines)
    return GrData(
        r=r,
        g=data[:, 1].copy(),
        dr=data[:, 2].copy() if width >= 4 else None,
        dg=data[:, 3].copy() if width >= 4 else None,
        metadata=metadata,
        header="\n".join(header_lines),
        path=str(path),
    )


def write_gr(
    path: str | os.PathLike,
    r,
    g,
    *,
    metadata: dict[str, Any] | None = None,
    dg=None,
    comment: str = "written by emverse-pdf",
) -> Path:
    """Write r (Å), G (Å⁻²) [and dG] as a PDFgetX-style ``.gr`` file, atomically.

    ``metadata`` goes into a ``[PDF]`` section (``key = value``), so :func:`read_gr`
    reads it back.
    """
    r = np.asarray(_to_numpy(r), dtype=np.float64).reshape(-1)
    g = np.asarray(_to_numpy(g), dtype=np.float64).reshape(-1)
    if r.shape != g.shape:
        raise EmverseError(f"r has {r.size} points but G has {g.size}; give one G value per r")
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        raise EmverseError("r or G contains NaN/inf; refusing to write a .gr file with them")
    if r.size > 1 and not (np.diff(r) > 0).all():
        raise EmverseError("r is not strictly increasing; sort by r before writing")
    lines = [f"# {comment}", "[PDF]"]
    for key, value in (metadata or {}).items():
        lines.append(f"{key} = {value}")
    lines += ["", "#### start data", "#S 1"]
    if dg is None:
        lines.append("#L r($\\AA$)  G($\\AA^{-2}$)")
        lines += [f"{a:.6f} {b:.10g}" for a, b in zip(r, g, strict=False)]
    else:
        dg = np.asarray(_to_numpy(dg), dtype=np.float64).reshape(-1)
        lines.append("#L r($\\AA$)  G($\\AA^{-2}$)  dr($\\AA$)  dG($\\AA^{-2}$)")
        lines += [f"{a:.6f} {b:.10g} 0 {c:.10g}" for a, b, c in zip(r, g, dg, strict=False)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, "\n".join(lines) + "\n")  # atomic, mode follows the umask


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def r_step(data: GrData) -> float:
    """Median r spacing in Å (the files' nominal rstep)."""
    return float(np.median(np.diff(data.r))) if data.r.size > 1 else math.nan
