"""The DeepStruc simulated PDFs reproduced from their xyz models.

Measured here (Rw after a least-squares scale, on the files' 3000 points):
* with the stated CbLDM settings (qmin 0.7, qmax 25, qdamp 0.04, delta2 2, B 0.3): Rw 0.074-0.168;
* with DEEPSTRUC_FILE_SETTINGS (qmin 0.79, qdamp 0, delta2 0, B 0.3, found by a Nelder-Mead
  fit on two files and then checked on all twelve): Rw 0.0005-0.0023, provided the values are
  read as G(0, 0.01, ..., 29.99 Å) — the files' r column is np.linspace(0, 30, 3000), a 0.03 %
  stretch (reading them at the labelled r gives Rw 0.008-0.021 instead).
"""

from __future__ import annotations

import pytest
import torch
from emverse_pdf.debye import compute_gr
from emverse_pdf.gr_io import read_gr
from emverse_pdf.metrics import rwp
from emverse_pdf.params import DEEPSTRUC_FILE_SETTINGS, DebyeParams
from emverse_pdf.structures import read_structure

#: the settings the DeepStruc/CbLDM papers state (Å⁻¹, Å², Å)
STATED = DebyeParams(qmin=0.7, qmax=25.0, qdamp=0.04, delta2=2.0, biso=0.3, rmin=0.0, rmax=30.0, rstep=0.01)


def _gr(positions, mask=None, element="Au"):
    return compute_gr(positions, element, mask, STATED)[1]


NAMES = [
    "BCC_h_2_k_9_l_9", "BCC_h_4_k_7_l_8", "Decahedron_p_1_q_1_r_1", "Decahedron_p_5_q_1_r_0",
    "FCC_h_3_k_6_l_7", "HCP_Size1_2_Size2_2_Size3_7", "HCP_Size1_4_Size2_4_Size3_4",
    "Icosahedron_shell_2", "Icosahedron_shell_3", "Octahedron_length_6", "SC_h_2_k_2_l_7", "SC_h_4_k_4_l_5",
]


def _load(pdf_data, name):
    base = pdf_data / "deepstruc"
    (xyz,) = sorted((base / "structures_xyz").glob(f"{name}_atom_*.xyz"))
    structure = read_structure(xyz)
    data = read_gr(base / "simulated" / f"{name}.gr")
    return structure, data


def test_deepstruc_simulated_pdfs_reproduced(pdf_data):
    stated, fitted, labelled = [], [], []
    for name in NAMES:
        structure, data = _load(pdf_data, name)
        assert data.r.size == 3000
        g_obs = torch.as_tensor(data.g)
        positions = torch.tensor(structure.positions)[None]
        stated.append(float(rwp(_gr(positions, element=structure.symbols[0]), g_obs)[0]))
        _, g = compute_gr(positions, structure.symbols[0], settings=DEEPSTRUC_FILE_SETTINGS)
        fitted.append(float(rwp(g, g_obs)[0]))
        _, g_lab = compute_gr(positions, structure.symbols[0], settings=DEEPSTRUC_FILE_SETTINGS,
                              r=torch.as_tensor(data.r))
        labelled.append(float(rwp(g_lab, g_obs)[0]))
    print("Rw stated settings:", [f"{v:.4f}" for v in stated])
    print("Rw file settings:", [f"{v:.4f}" for v in fitted])
    assert max(fitted) < 0.003, fitted
    assert max(stated) < 0.2, stated
    assert min(stated) > 0.05  # the stated settings are not the ones that made the files
    # the r relabelling matters: the labelled grid is measurably worse for every file
    assert all(lab > fit for lab, fit in zip(labelled, fitted, strict=False))


def test_batched_padded_deepstruc_equals_one_by_one(pdf_data):
    """A padded batch of particles with 13..177 atoms gives each particle's own G(r)."""
    from emverse_pdf.structures import StructureBatch

    structures = [_load(pdf_data, name)[0] for name in ("Icosahedron_shell_2", "SC_h_4_k_4_l_5", "BCC_h_2_k_9_l_9")]
    batch = StructureBatch.from_structures(structures)
    assert batch.positions.shape == (3, 177, 3)
    together = _gr(batch.positions, batch.mask)
    for k, s in enumerate(structures):
        alone = _gr(torch.tensor(s.positions)[None])[0]
        torch.testing.assert_close(together[k], alone, rtol=1e-9, atol=1e-9 * float(alone.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stated_settings_precision(pdf_data, dtype):
    structure, _ = _load(pdf_data, "FCC_h_3_k_6_l_7")
    x = torch.tensor(structure.positions)[None]
    exact = compute_gr(x, "Zn", max_chunk_elements=2**22)[1]
    from emverse_pdf.debye import debye_scattering, fq_to_gr, q_grid, r_grid

    direct = debye_scattering(x, "Zn", settings=STATED, method="direct")["fq"]
    g_direct = fq_to_gr(direct, q_grid(STATED), r_grid(STATED), 3.14159265358979 / 30.01, 0.04)
    g = _gr(x.to(dtype), element="Zn")
    assert g.dtype == dtype
    tolerance = 1e-4 if dtype == torch.float32 else 1e-8
    assert float(rwp(g.double(), g_direct, fit_scale=False)[0]) < tolerance
    assert float(rwp(exact, g_direct, fit_scale=False)[0]) < 1e-8
