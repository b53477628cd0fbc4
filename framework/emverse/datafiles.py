"""Content checks for the input files a recipe names (run by ``emverse recipe validate``).

Each check opens the file as its kind and raises :class:`ValueError` with a
message that says what is wrong and how to fix it; nothing here imports torch,
so validating a recipe stays fast. The kinds:

``file``, ``directory``
    exists and is a regular file / a folder.
``cif``
    a CIF with a cell and atom sites (:meth:`emverse.crystal.Crystal.from_cif`).
``checkpoint``
    a safetensors file whose header parses and whose tensors fit in the file.
``zarr``
    a Zarr store (a folder with ``zarr.json``, ``.zgroup`` or ``.zarray``).
``xyz``
    an XYZ file read by ase.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from emverse.errors import EmverseError

KINDS = ("file", "directory", "cif", "checkpoint", "zarr", "xyz", "any")
_FILE_NAMES = {"file": "a file", "cif": "a CIF file", "checkpoint": "a .safetensors checkpoint file",
               "xyz": "an XYZ file"}


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"path kind {kind!r} is unknown; use one of {', '.join(KINDS)}")


def check_input(kind: str, path: Path, label: str | None = None) -> None:
    """Raise :class:`ValueError` unless ``path`` exists and opens as ``kind``; messages name
    the file as ``label`` (default: the path)."""
    check_kind(kind)
    label = label or repr(str(path))
    if not path.exists():
        raise ValueError(f"{label} does not exist; fix the path "
                         "(relative paths start at the recipe's folder, shared:... at the shared data)")
    if kind in ("directory", "zarr"):
        if not path.is_dir():
            raise ValueError(f"{label} is a file; give a {'Zarr store' if kind == 'zarr' else 'folder'}")
    elif kind != "any" and not path.is_file():
        raise ValueError(f"{label} is a directory; give {_FILE_NAMES[kind]}")
    if kind == "checkpoint":
        check_safetensors(path, label)
    elif kind == "zarr":
        if not any((path / marker).exists() for marker in ("zarr.json", ".zgroup", ".zarray")):
            raise ValueError(f"{label} is not a Zarr store (no zarr.json or .zgroup inside); "
                             "give the store an emverse simulate task wrote")
    elif kind == "cif":
        _via_reader("emverse.crystal:Crystal.from_cif", path)
    elif kind == "xyz":
        _read_xyz(path)


def check_with_reader(reader: str, path: Path) -> None:
    """Run a plugin's reader (``"pkg.module:function"``) on ``path``; its error becomes a ValueError."""
    _via_reader(reader, path)


def _via_reader(reader: str, path: Path) -> None:
    from emverse.components import import_path

    read = import_path(reader)
    try:
        read(path)
    except EmverseError as exc:
        raise ValueError(str(exc)) from None
    except ImportError as exc:
        raise ValueError(f"cannot check {str(path)!r}: {exc}; install the missing package") from None
    except Exception as exc:  # a reader that failed without a message of its own
        raise ValueError(f"{str(path)!r} could not be read ({type(exc).__name__}: {exc})") from None


def check_safetensors(path: Path, label: str | None = None) -> dict:
    """Parse a safetensors header without torch; return it. The layout is an 8-byte
    little-endian header length, a JSON header, then the tensor bytes."""
    label = label or repr(str(path))
    size = path.stat().st_size
    fix = "it is damaged or not a safetensors checkpoint; give the .safetensors file a run wrote"
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{label} is {size} bytes, too short for a safetensors header; {fix}")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > 100_000_000:
            raise ValueError(f"{label}: header length {length} exceeds the file ({size} bytes); {fix}")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{label}: the safetensors header is not JSON; {fix}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{label}: the safetensors header is not a table; {fix}")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise ValueError(f"{label}: tensor {name!r} has no data_offsets; {fix}")
        end = max(end, int(offsets[1]))
    if 8 + length + end > size:
        raise ValueError(f"{label} is truncated: its tensors need {8 + length + end} bytes, "
                         f"the file has {size}; {fix}")
    return header


def _read_xyz(path: Path) -> None:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        count = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"{path}:1: an XYZ file starts with the number of atoms; fix the file") from None
    if count < 1 or len(lines) < count + 2:
        raise ValueError(f"{path}: the header says {count} atoms but {max(len(lines) - 2, 0)} "
                         "lines follow; fix the count or the file")
    for number, line in enumerate(lines[2:count + 2], start=3):
        parts = line.split()
        try:
            coords = [float(v) for v in parts[1:4]]
        except ValueError:
            coords = []
        if len(coords) != 3 or not all(math.isfinite(v) for v in coords):
            raise ValueError(f"{path}:{number}: expected 'Element x y z' with finite numbers, "
                             f"got {line.strip()[:60]!r}")
