"""Structures shipped with emverse-bloch, and the recipe's way of naming a crystal.

The crystal model itself is the core's (:mod:`emverse.crystal`); it is re-exported
here for the code that imported it from this module.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from emverse.crystal import (  # noqa: F401 - re-exported
    POSITION_TOLERANCE,
    Crystal,
    Site,
    SymmetryOperation,
    isotropic_u_cif,
    normalise_element,
)


def data_path(name: str) -> Path:
    """Path of a file shipped in ``emverse_bloch/data``."""
    return Path(str(importlib.resources.files("emverse_bloch") / "data" / name))


def mgb2() -> Crystal:
    """MgB2 (P6/mmm, a = 3.086 Å, c = 3.524 Å; Mg 1a, B 2d), shipped as a CIF."""
    return Crystal.from_cif(data_path("MgB2.cif"))


def load_structure(structure: str | Path, resolve=None) -> Crystal:
    """A crystal from a recipe value: a built-in name ('MgB2') or a CIF path."""
    if str(structure).lower() in {"mgb2", "mgb2.cif"}:
        return mgb2()
    path = resolve(structure) if resolve is not None else Path(structure)
    return Crystal.from_cif(path)
