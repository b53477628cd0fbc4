"""Readers/writers: .gr (PDFgetX3 / xPDFsuite / DeepStruc), xyz, CIF; experimental data vs a candidate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse_pdf.debye import compute_gr
from emverse_pdf.gr_io import read_gr, write_gr
from emverse_pdf.metrics import fit_scale_offset, rwp
from emverse_pdf.params import DebyeParams
from emverse_pdf.structures import fcc_sphere, icosahedron, kabsch_rmsd, read_structure, write_xyz
from emverse_pdf.tasks import comparison_figure


def test_experimental_headers(pdf_data):
    base = pdf_data / "deepstruc" / "experimental"
    au = read_gr(base / "Au144PET_100K-00000.gr")  # PDFgetXgui header
    assert au.wavelength == pytest.approx(0.18597)
    assert (au.qmin, au.qmax) == (pytest.approx(0.8), pytest.approx(26.0))
    assert au.composition == "Au144 S60 C180"
    assert au.get("rstep") == pytest.approx(0.01) and au.get("mode") == "xray"
    assert au.r[0] == 0.0 and au.r.size == 3001 and au.r[-1] == pytest.approx(30.0)
    pmba = read_gr(base / "Au144pMBA.gr")  # pdfgetx3 [DEFAULT] header with comments
    assert pmba.get("version").startswith("pdfgetx3")
    assert (pmba.qmin, pmba.qmax) == (pytest.approx(1.33), pytest.approx(28.0))
    assert pmba.r[-1] == pytest.approx(20.0)
    pt = read_gr(base / "JQ_S1.gr")  # xPDFsuite header
    assert pt.wavelength == pytest.approx(0.1) and pt.composition == "Pt"
    assert pt.qmax == pytest.approx(21.998245281) and pt.get("qmaxinst") == pytest.approx(22.0)
    assert pt.r[-1] == pytest.approx(50.0)
    simulated = read_gr(pdf_data / "deepstruc" / "simulated" / "FCC_h_3_k_6_l_7.gr")
    assert simulated.r.size == 3000 and simulated.metadata == {}


def test_experimental_pdfs_against_candidates(pdf_data, tmp_path):
    """Au144(PET) vs a 147-atom Au Mackay icosahedron (nearest-neighbour 2.79 Å) and Pt (JQ_S1)
    vs a 2 nm FCC Pt sphere, each computed with the file's own qmin/qmax on its r grid
    (B 1.0 Å², qdamp 0.04, delta2 2); figure written and Rw stated (measured: 0.44 and 0.31)."""
    base = pdf_data / "deepstruc" / "experimental"
    results = {}
    for name, candidate, label in [
        ("Au144PET_100K-00000.gr", icosahedron("Au", 4, 2.79), "Au147 icosahedron"),
        ("JQ_S1.gr", fcc_sphere("Pt", 3.92, 10.0), "Pt FCC sphere r=10 Å"),
    ]:
        data = read_gr(base / name).crop(1.5, 30.0)
        settings = DebyeParams(qmin=data.qmin, qmax=data.qmax, qdamp=0.04, delta2=2.0, biso=1.0,
                               rmin=0.0, rmax=30.0)
        r, g_obs = data.tensors()
        _, g = compute_gr(torch.tensor(candidate.positions)[None], candidate.symbols[0], settings=settings, r=r)
        scale, offset = fit_scale_offset(g[0], g_obs)
        value = float(rwp(g[0], g_obs))
        results[name] = value
        fig = comparison_figure(data.r, data.g, {label: (scale * g[0]).numpy()},
                                title=f"{name}: Rw {value:.3f}")
        out = tmp_path / f"{name}.png"
        fig.savefig(out)
        assert out.stat().st_size > 10_000
        # a candidate of the right element and size fits better than the wrong lattice scale
        _, g_wrong = compute_gr(torch.tensor(candidate.positions * 1.08)[None], candidate.symbols[0],
                                settings=settings, r=r)
        assert float(rwp(g_wrong[0], g_obs)) > value + 0.1
        assert 0.0 < float(scale)
    print("Rw experimental vs candidate:", results)
    assert results["Au144PET_100K-00000.gr"] < 0.5
    assert results["JQ_S1.gr"] < 0.4


def test_gr_round_trip(tmp_path):
    r = np.arange(0.0, 5.0, 0.01)
    g = np.sin(3 * r) * np.exp(-r)
    path = write_gr(tmp_path / "x.gr", r, g, metadata={"qmin": 0.7, "qmax": 25.0, "composition": "Au"})
    back = read_gr(path)
    np.testing.assert_allclose(back.r, r, atol=1e-6)
    np.testing.assert_allclose(back.g, g, rtol=1e-9, atol=1e-12)
    assert back.qmax == 25.0 and back.composition == "Au"
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    with_dg = read_gr(write_gr(tmp_path / "y.gr", r, g, dg=0.01 + 0 * g))
    np.testing.assert_allclose(with_dg.dg, 0.01)


@pytest.mark.parametrize(
    "body, message",
    [
        ("0 0\n0.01 nan\n0.02 0.1\n", r"x\.gr:5: non-finite value"),
        ("0 0\n0.02 0.1\n0.01 0.2\n", r"x\.gr:6: r is not strictly increasing"),
        ("0 0\n0.01 0.1\n0.01 0.2\n", "not strictly increasing"),
        ("0 0\n0.01 abc\n", "cannot read numbers"),
        ("0 0\n", "at least 2"),
        ("0\n0.01\n0.02\n", "fewer than 2 columns"),
    ],
)
def test_bad_gr_files(tmp_path, body, message):
    path = tmp_path / "x.gr"
    path.write_text("[PDF]\nqmax = 25\n#### start data\n" + body)
    with pytest.raises(EmverseError, match=message):
        read_gr(path)


def test_missing_gr_file(tmp_path):
    with pytest.raises(EmverseError, match="cannot read G\\(r\\) file"):
        read_gr(tmp_path / "nope.gr")


def test_xyz_and_cif_readers(pdf_data, tmp_path):
    base = pdf_data / "debyecalculator_reference"
    cell = read_structure(base / "AntiFluorite_Co2O.cif")  # emverse.crystal (ase symmetry)
    assert sorted(set(cell.symbols)) == ["Co", "O"] and cell.symbols.count("Co") == 8 and len(cell) == 12
    particle = read_structure(base / "AntiFluorite_Co2O.cif", radius=10.0)
    assert np.linalg.norm(particle.positions, axis=1).max() <= 10.0 + 1e-9
    # anti-fluorite: the shortest Co-O distance is a sqrt(3)/4 = 2.1068 Å
    pos = particle.positions
    co = pos[np.array(particle.symbols) == "Co"]
    o = pos[np.array(particle.symbols) == "O"]
    d = np.linalg.norm(co[:, None] - o[None], axis=-1).min()
    assert d == pytest.approx(4.86543 * np.sqrt(3) / 4, abs=1e-4)
    xyz = read_structure(base / "structure_AntiFluorite_Co2O_radius10.0.xyz")
    assert len(xyz) == 473
    write_xyz(tmp_path / "p.xyz", xyz, comment="round trip")
    again = read_structure(tmp_path / "p.xyz")
    assert again.symbols == xyz.symbols
    assert kabsch_rmsd(again.positions, xyz.positions) < 1e-5
    with pytest.raises(EmverseError, match="use .xyz or .cif"):
        (tmp_path / "a.pdb").write_text("x")
        read_structure(tmp_path / "a.pdb")


def test_kabsch_rmsd_removes_rotation_translation_and_mirror():
    s = icosahedron("Au", 3, 2.88).positions
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    moved = -(s @ rotation) + np.array([1.0, 2.0, 3.0])
    assert kabsch_rmsd(moved, s) < 1e-10
    assert kabsch_rmsd(moved, s, allow_reflection=np.linalg.det(-rotation) < 0) < 1e-10
    assert kabsch_rmsd(s + 0.1 * np.random.default_rng(1).normal(size=s.shape), s) > 0.05
