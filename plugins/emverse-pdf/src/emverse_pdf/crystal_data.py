"""Load and check the inputs of a periodic-crystal PDF fit: the ``.gr`` file and the CIFs.

Every check here runs when a recipe is validated (``FitCrystalParams.validate_files``),
so a bad file stops the run before its directory exists, with the file, the field
and the fix in one message.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
from emverse.crystal import Crystal
from emverse.errors import EmverseError

from emverse_pdf.gr_io import GrData, header_value, read_gr
from emverse_pdf.periodic import check_uniform_grid

__all__ = ["LoadedDataset", "check_dataset", "load_crystal", "load_dataset"]

#: two atoms of a crystal closer than this (Å) mean the CIF's symmetry and its sites disagree
MIN_ATOM_DISTANCE = 0.5


@attrs.frozen
class LoadedDataset:
    """A dataset's options with its files read: data (cropped to nothing), Qmax/Qmin (Å⁻¹), crystals."""

    options: object
    name: str
    data: GrData
    qmax: float
    qmin: float | None
    fit_rmax: float
    crystals: tuple[Crystal, ...]


def load_crystal(path: Path, field: str) -> Crystal:
    """Read a CIF and check that no two atoms of its expanded cell overlap."""
    crystal = Crystal.from_cif(path)
    lattice = crystal.lattice
    x = crystal.atom_positions
    d = x[:, None, :] - x[None, :, :]
    d -= np.rint(d)
    dist = np.linalg.norm(d @ lattice, axis=-1)
    np.fill_diagonal(dist, np.inf)
    i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
    if dist[i, j] < MIN_ATOM_DISTANCE:
        site_i = crystal.sites[crystal.atom_site[i]].label
        site_j = crystal.sites[crystal.atom_site[j]].label
        raise EmverseError(
            f"{field} = {str(path)!r}: its symmetry does not match its atoms: applying the "
            f"{len(crystal.operations)} operations puts site {site_i} {dist[i, j]:.3f} Å from site {site_j} "
            f"(fractional {np.round(x[i], 4).tolist()} and {np.round(x[j], 4).tolist()}); list only the "
            "asymmetric unit for this space group, or give the full cell with space group P 1"
        )
    return crystal


def load_dataset(options, resolve, field: str = "options.samples") -> LoadedDataset:
    """Read a ``CrystalDatasetOptions``' files and check them against its settings."""
    path = resolve(options.observation)
    data = read_gr(path)
    name = options.name or Path(path).stem
    source = f"{field}.observation = {options.observation!r}"
    check_uniform_grid(data.r, source)
    qmax = options.qmax if options.qmax is not None else header_value(data, "qmax")
    if qmax is None:
        raise EmverseError(
            f"{source}: the file's header gives no Qmax and the recipe none; set {field}.qmax "
            "to the Qmax (Å⁻¹) the G(r) was transformed with (0 to ignore termination ripples)"
        )
    qmin = options.qmin if options.qmin is not None else header_value(data, "qmin")
    fit_rmax = options.fit_rmax if options.fit_rmax is not None else float(data.r[-1])
    low, high = float(data.r[0]), float(data.r[-1])
    if options.fit_rmin < low - 1e-6 or fit_rmax > high + 1e-6:
        raise EmverseError(
            f"{source}: the fit range {options.fit_rmin}-{fit_rmax} Å reaches beyond the data "
            f"({low:.3f}-{high:.3f} Å); set {field}.fit_rmin/fit_rmax inside it"
        )
    crystals = tuple(
        load_crystal(resolve(phase.structure), f"{field}.phases[{k}].structure")
        for k, phase in enumerate(options.phases)
    )
    return LoadedDataset(options, name, data, float(qmax), qmin, fit_rmax, crystals)


def check_dataset(options, resolve, field: str = "options.samples") -> None:
    """:func:`load_dataset` for its errors only."""
    load_dataset(options, resolve, field)
