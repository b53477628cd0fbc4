"""Pair weights of a PDF: neutron coherent scattering lengths and X-ray f(Q=0).

A real-space PDF refinement (PDFfit2, PDFgui) weights the pair i-j by
b_i b_j / <b>², with one Q-independent number b per element:

* neutrons: the bound coherent scattering length b_c (fm), from
  V. F. Sears, "Neutron scattering lengths and cross sections",
  Neutron News 3 (3), 26-37 (1992), as tabulated by NIST
  (https://www.ncnr.nist.gov/resources/n-lengths/). Natural isotopic
  abundance; the imaginary (absorption) part of Cd, B, ... is dropped, as
  PDFfit2 does. Negative values (Ti, Mn, H, ...) are real and matter:
  they make Ti-O and Mn-O peaks negative in a neutron PDF.
* X-rays: f(Q=0) = Z, the number of electrons of the neutral atom
  (PDFfit2's choice for X-ray data; its documentation calls it the
  "X-ray scattering factor" of the element). The Q dependence of f is
  ignored, which is the usual approximation of real-space refinements.

Only the elements listed have a neutron value; ask for another and the error
says how to add it (with its source).
"""

from __future__ import annotations

from collections.abc import Sequence

from emverse.crystal import normalise_element
from emverse.errors import EmverseError

__all__ = ["NEUTRON_COHERENT_LENGTH_FM", "pair_weights", "scattering_weight"]

#: Bound coherent scattering lengths b_c in fm (Sears 1992 / NIST table), natural elements.
NEUTRON_COHERENT_LENGTH_FM: dict[str, float] = {
    "H": -3.7390, "Li": -1.90, "Be": 7.79, "B": 5.30, "C": 6.6460, "N": 9.36, "O": 5.803,
    "F": 5.654, "Na": 3.63, "Mg": 5.375, "Al": 3.449, "Si": 4.1491, "P": 5.13, "S": 2.847,
    "Cl": 9.5770, "K": 3.67, "Ca": 4.70, "Sc": 12.29, "Ti": -3.438, "V": -0.3824, "Cr": 3.635,
    "Mn": -3.73, "Fe": 9.45, "Co": 2.49, "Ni": 10.3, "Cu": 7.718, "Zn": 5.680, "Ga": 7.288,
    "Ge": 8.185, "As": 6.58, "Se": 7.970, "Br": 6.795, "Sr": 7.02, "Y": 7.75, "Zr": 7.16,
    "Nb": 7.054, "Mo": 6.715, "Ru": 7.03, "Rh": 5.88, "Pd": 5.91, "Ag": 5.922, "Cd": 4.87,
    "In": 4.065, "Sn": 6.225, "Te": 5.80, "I": 5.28, "Cs": 5.42, "Ba": 5.07, "La": 8.24,
    "Ce": 4.84, "Hf": 7.7, "Ta": 6.91, "W": 4.86, "Re": 9.2, "Os": 10.7, "Ir": 10.6,
    "Pt": 9.60, "Au": 7.63, "Pb": 9.405, "Bi": 8.532,
}

RADIATIONS = ("xray", "neutron")


def scattering_weight(element: str, radiation: str) -> float:
    """b of one element: Z (electrons) for ``"xray"``, b_c (fm) for ``"neutron"``."""
    symbol = normalise_element(element)
    if radiation == "xray":
        from ase.data import atomic_numbers

        return float(atomic_numbers[symbol])
    if radiation == "neutron":
        if symbol not in NEUTRON_COHERENT_LENGTH_FM:
            raise EmverseError(
                f"no neutron scattering length for {symbol!r} in emverse_pdf.scattering_lengths; "
                "add its bound coherent b_c (fm) from Sears 1992 / the NIST table to "
                "NEUTRON_COHERENT_LENGTH_FM"
            )
        return NEUTRON_COHERENT_LENGTH_FM[symbol]
    raise EmverseError(f"radiation {radiation!r} is unknown; use one of {', '.join(RADIATIONS)}")


def pair_weights(elements: Sequence[str], radiation: str) -> list[float]:
    """b for every element of ``elements`` (same order)."""
    return [scattering_weight(e, radiation) for e in elements]
