"""emverse-pdf against the peer code DebyeCalculator 1.1 and its published reference files.

DebyeCalculator's conventions (PEERS.md, verified here): iq = I/2, sq = (S-1)/2,
fq = F/2, gr = G/2, with the same Waasmaier-Kirfel form factors, B applied as
exp(-Q^2 B / (8 pi^2)) and G damped by exp(-(qdamp r)^2/2); no delta2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from emverse_pdf.debye import compute_gr, debye_scattering, to_debyecalculator
from emverse_pdf.params import DebyeParams
from emverse_pdf.structures import fcc_sphere, icosahedron, read_structure

# DebyeCalculator's defaults, without delta2 (it has none)
PEER_SETTINGS = DebyeParams(qmin=1.0, qmax=30.0, qdamp=0.04, delta2=0.0, biso=0.3, rmin=0.0, rmax=20.0, rstep=0.01)


def rw(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.sqrt(((a - b) ** 2).sum() / (b**2).sum()))


@pytest.mark.parametrize(
    "structure",
    [icosahedron("Au", 3, 2.88), fcc_sphere("Au", 4.08, 9.5)],
    ids=["Au55-icosahedron", "Au201-fcc"],
)
@pytest.mark.parametrize("method", ["direct", "grid"])
def test_matches_debyecalculator(structure, method, debyecalculator_cls):
    calc = debyecalculator_cls(
        qmin=1.0, qmax=30.0, qdamp=0.04, rmin=0.0, rmax=20.0, rstep=0.01, biso=0.3,
        device="cpu", dtype=torch.float64,
    )
    source = (list(structure.symbols), structure.positions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_peer, iq_peer = calc.iq(source)
        _, sq_peer = calc.sq(source)
        _, fq_peer = calc.fq(source)
        r_peer, gr_peer = calc.gr(source)

    positions = torch.tensor(structure.positions)
    ours = debye_scattering(positions, structure.symbols, settings=PEER_SETTINGS, method=method)
    r, g = compute_gr(positions, structure.symbols, settings=PEER_SETTINGS)
    np.testing.assert_allclose(ours["q"].numpy(), q_peer, atol=1e-5)
    np.testing.assert_allclose(r.numpy(), r_peer, atol=1e-5)  # its r grid is built in float32
    converted = to_debyecalculator({**ours, "gr": g})
    # Rw of every quantity after the explicit conversion; the requirement is 1e-3, we reach ~1e-6
    assert rw(converted["iq"], iq_peer) < 1e-5
    assert rw(converted["sq"], sq_peer) < 1e-5
    assert rw(converted["fq"], fq_peer) < 1e-5
    assert rw(converted["gr"], gr_peer) < 1e-5
    # and without the conversion they differ by the stated factor 2
    assert rw(g.numpy(), gr_peer) == pytest.approx(1.0, abs=1e-4)


def test_debyecalculator_reference_files(pdf_data):
    """The DebyeCalculator repository's reference outputs (X-ray, qmin 1, qmax 30, qdamp 0.04, B 0.3,
    r 0-20 step 0.01; qstep 0.05 for Co2O, 0.1 for icsd_001504). These older files hold the full
    I(Q) (= ours), while their S, F and G follow the halved convention."""
    base = pdf_data / "debyecalculator_reference"
    cases = [
        ("structure_AntiFluorite_Co2O_radius10.0.xyz", "{}_AntiFluorite_Co2O_radius10.0.dat", 0.05, str.lower),
        ("icsd_001504_cc_r6_lc_2.85_6_tetragonal.xyz", "icsd_001504_cc_r6_lc_2.85_6_tetragonal_{}.dat", 0.1,
         lambda k: k[0].upper() + k[1:]),
    ]
    for xyz, pattern, qstep, case in cases:
        structure = read_structure(base / xyz)
        settings = DebyeParams(qmin=1.0, qmax=30.0, qstep=qstep, qdamp=0.04, delta2=0.0, biso=0.3,
                               rmin=0.0, rmax=20.0, rstep=0.01)
        positions = torch.tensor(structure.positions)
        ours = debye_scattering(positions, structure.symbols, settings=settings)
        _, g = compute_gr(positions, structure.symbols, settings=settings)
        expected = {
            "iq": ours["iq"].numpy(),
            "sq": to_debyecalculator(ours["sq"], "sq").numpy(),
            "fq": to_debyecalculator(ours["fq"], "fq").numpy(),
            "gr": to_debyecalculator(g, "gr").numpy(),
        }
        for key, values in expected.items():
            ref = np.loadtxt(base / pattern.format(case(key)), delimiter=",", skiprows=1)
            assert ref.shape[0] == values.shape[0], (xyz, key)
            # references are float32 outputs: Rw ~1e-5 is their round-off
            assert rw(values, ref[:, 1]) < 1e-4, (xyz, key, rw(values, ref[:, 1]))
