"""X-ray atomic form factors f0(Q) (Waasmaier & Kirfel parametrisation).

f0(s) = c + sum_{i=1..5} a_i exp(-b_i s^2),  s = sin(theta)/lambda = Q / (4 pi)  (Å⁻¹),
D. Waasmaier & A. Kirfel, "New analytical scattering-factor functions for free
atoms and ions", Acta Cryst. A51, 416-431 (1995). f0 is in electrons; no
anomalous (f', f'') part.

The coefficients are *read at run time* from the data file that ships with the
DebyeCalculator package (``debyecalculator/utility/elements_info.yaml``,
rows ``a1..a5, c, b1..b5, b_coh, Z, radius``), located through the package's
installed-files metadata so that debyecalculator itself is never imported.
Using the same table as DebyeCalculator makes the two codes comparable to
round-off. Entries with missing coefficients (e.g. Kr, Xe, Rn) are treated as
"no form factor".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from emverse.errors import EmverseError

_DATA_FILE = "debyecalculator/utility/elements_info.yaml"


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, tuple[float, ...]]:
    """symbol -> (a1..a5, c, b1..b5) for every element/ion with complete coefficients."""
    import importlib.metadata as metadata

    import yaml

    try:
        dist = metadata.distribution("debyecalculator")
    except metadata.PackageNotFoundError as exc:
        raise EmverseError(
            "the X-ray form-factor table (Waasmaier & Kirfel 1995) is read from the data file of "
            "the 'debyecalculator' package, which is not installed; fix: pip install debyecalculator"
        ) from exc
    path = dist.locate_file(_DATA_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise EmverseError(
            f"form-factor data file {path} could not be read ({exc}); fix: reinstall debyecalculator"
        ) from exc
    table = {}
    for symbol, row in raw.items():
        coefficients = row[:11]
        if any(v is None for v in coefficients):
            continue
        table[str(symbol)] = tuple(float(v) for v in coefficients)
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
