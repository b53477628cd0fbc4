"""X-ray atomic form factors f0(Q) (Waasmaier & Kirfel parametrisation).

f0(s) = c + sum_{i=1..5} a_i exp(-b_i s^2),  s = sin(theta)/lambda = Q / (4 pi)  (Å⁻¹),
D. Waasmaier & A. Kirfel, "New analytical scattering-factor functions for free
atoms and ions", Acta Cryst. A51, 416-431 (1995). f0 is in electrons; no
anomalous (f', f'') part.

The coefficients ship with this plugin (``emverse_pdf/data/waasmaier_kirfel_1995.csv``),
copied from DebyeCalculator's ``elements_info.yaml`` (Apache-2.0; source, version and
checksum in the file's header), so debyecalculator and its heavy dependencies are not
needed at run time. Using the same table as DebyeCalculator makes the two codes
comparable to round-off (a test compares the copy with the installed file). Entries
with missing coefficients (e.g. Kr, Xe, Rn) are treated as "no form factor".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from emverse.errors import EmverseError

_DATA_FILE = "data/waasmaier_kirfel_1995.csv"


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, tuple[float, ...]]:
    """symbol -> (a1..a5, c, b1..b5) for every element/ion with complete coefficients."""
    from importlib import resources

    text = resources.files("emverse_pdf").joinpath(_DATA_FILE).read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    table = {}
    for row in rows[1:]:  # rows[0] is the column header
        symbol, *coefficients = row.split(",")
        table[symbol] = tuple(float(v) for v in coefficients)
    return table


@functools.lru_cache(maxsize=1)
def _atomic_numbers() -> dict[int, str]:
    from ase.data import chemical_symbols

    return {z: s for z, s in enumerate(chemical_symbols) if z > 0}


def available_elements() -> tuple[str, ...]:
    """Symbols (elements and ions such as ``'O2-'``) that have X-ray form factors."""
    return tuple(_table())


def normalise_symbol(element: str | int) -> str:
    """``'au'``/``'Au'``/``79`` -> ``'Au'``; raises for unknown elements or ones without data."""
    if isinstance(element, (int,)) and not isinstance(element, bool):
        symbol = _atomic_numbers().get(int(element))
        if symbol is None:
            raise EmverseError(f"atomic number {element} is not an element; give 1..118")
    else:
        text = str(element).strip()
        symbol = text[:1].upper() + text[1:].lower() if text[1:2].isalpha() else text[:1].upper() + text[1:]
    table = _table()
    if symbol not in table:
        hint = "an element symbol such as 'Au'" if symbol not in _atomic_numbers().values() else (
            "an element with Waasmaier-Kirfel coefficients (missing for this one)"
        )
        raise EmverseError(
            f"element {element!r} has no X-ray form factor in the Waasmaier-Kirfel table; use {hint}"
        )
    return symbol


def form_factors(elements: Sequence[str | int], q: torch.Tensor) -> torch.Tensor:
    """X-ray form factors f0(Q) in electrons, shape (len(elements), len(q)).

    ``q`` is the scattering-vector magnitude Q = 4 pi sin(theta)/lambda in Å⁻¹.
    """
    table = _table()
    rows = torch.tensor(
        [table[normalise_symbol(e)] for e in elements], dtype=torch.float64, device=q.device
    )
    a, c, b = rows[:, :5], rows[:, 5], rows[:, 6:11]
    s2 = (q.to(torch.float64) / (4 * math.pi)) ** 2
    f = c[:, None] + (a[:, :, None] * torch.exp(-b[:, :, None] * s2[None, None, :])).sum(dim=1)
    return f.to(q.dtype)
