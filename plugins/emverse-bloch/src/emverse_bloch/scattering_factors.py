"""Electron scattering factors f_e(g) of neutral atoms (Å), in torch.

The parameter tables are read at run time from abTEM's files
``abtem/parametrizations/data/{lobato,kirkland}.json`` (``{symbol: rows}``),
never retyped here. Both take g = |g| = 1/d in Å⁻¹ (no 2π) and return f_e in Å
*without* the relativistic factor γ (it enters through U_g = γF_g/(πΩ)).

* Lobato & Van Dyck (2014), rows (a, b), 5 terms:
  f(g) = Σ_i a_i (2 + b_i g²) / (1 + b_i g²)²
* Kirkland (2010), rows (a, b, c, d), 3 + 3 terms:
  f(g) = Σ_i a_i / (b_i + g²) + c_i exp(-d_i g²)
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from emverse.errors import EmverseError

PARAMETRIZATIONS = ("lobato", "kirkland")


@functools.cache
def _table(parametrization: str) -> dict[str, np.ndarray]:
    if parametrization not in PARAMETRIZATIONS:
        raise EmverseError(
            f"parametrization {parametrization!r} is unknown; use one of {', '.join(PARAMETRIZATIONS)}"
        )
    try:
        # find abTEM's files without importing abtem (its import pulls in dask and numba)
        spec = importlib.util.find_spec("abtem")
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError("abtem is not installed")
        root = Path(spec.origin).parent / "parametrizations" / "data"
        text = (root / f"{parametrization}.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise EmverseError(
            f"the {parametrization} scattering-factor table could not be read from abTEM ({err}); "
            "install abtem (pip install abtem), which ships the parameter files"
        ) from err
    return {symbol: np.asarray(rows, dtype=float) for symbol, rows in json.loads(text).items()}


def parameters(element: str, parametrization: str = "lobato") -> np.ndarray:
    """The raw parameter rows of one element ((2, 5) Lobato, (4, 3) Kirkland)."""
    table = _table(parametrization)
    if element not in table:
        raise EmverseError(
            f"element {element!r} has no {parametrization} scattering factor; "
            "check the element symbol (e.g. 'Mg', 'Si', 'O')"
        )
    return table[element]


def scattering_factor(
    element: str, g_squared: torch.Tensor, parametrization: str = "lobato"
) -> torch.Tensor:
    """f_e(g) in Å of a neutral atom at g² = |g|² (Å⁻², no 2π); same shape as ``g_squared``."""
    p = torch.as_tensor(parameters(element, parametrization), dtype=g_squared.dtype,
                        device=g_squared.device)
    g2 = g_squared[..., None]
    if parametrization == "lobato":
        a, b = p[0], p[1]
        bg = 1.0 + b * g2
        return (a * (2.0 + b * g2) / bg**2).sum(-1)
    a, b, c, d = p[0], p[1], p[2], p[3]
    return (a / (b + g2) + c * torch.exp(-d * g2)).sum(-1)
