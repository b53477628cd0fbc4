"""CbLDM's PDF: the settings of the paper's simulated data, on emverse-pdf's Debye forward model.

The paper simulates every PDF with one set of DiffPy-style settings: Q from 0.7 to 25 Å⁻¹,
Qdamp 0.04 Å⁻¹, δ2 = 2.0 Å², B = 0.3 Å², G(r) on r = 0, 0.01, ..., 29.99 Å (3,000 points).
They are plain ``pdf.debye`` parameters (:class:`emverse_pdf.params.DebyeParams`) owned here,
by the one consumer they belong to.
"""

from __future__ import annotations

from emverse_pdf.params import DebyeParams

#: the CbLDM / DeepStruc simulation settings (Å⁻¹, Å², Å)
CBLDM_PDF = DebyeParams(qmin=0.7, qmax=25.0, qdamp=0.04, qbroad=0.0, delta1=0.0, delta2=2.0, biso=0.3,
                        rmin=0.0, rmax=30.0, rstep=0.01)


def cbldm_gr(positions, mask=None, element: str = "Au", *, r=None):
    """G(r) (B, 3000) in Å⁻² with :data:`CBLDM_PDF`, differentiable in ``positions`` (B, N, 3) Å.

    For a one-element particle the form factor cancels in F(Q) (S − 1 is normalised by
    ⟨f⟩²), so ``element`` does not change G(r); it only has to have form factors.
    """
    from emverse_pdf.debye import compute_gr

    return compute_gr(positions, element, mask, CBLDM_PDF, r=r)[1]
