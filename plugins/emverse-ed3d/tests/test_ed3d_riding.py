"""Riding hydrogens (fixed X–H vector, U_iso(H) = k·U_eq(parent)) and bucketed Bloch batches."""

import numpy as np
import pytest
import torch
from emverse.crystal import Crystal
from emverse.errors import EmverseError
from emverse_bloch.ed3d import size_groups
from emverse_ed3d.model import RefinableStructure
from emverse_ed3d.problem import build_model


@pytest.fixture(scope="module")
def paracetamol(pets_dir):
    return Crystal.from_cif(pets_dir / "paracetamol_formII" / "paracetamol_Pbca.cif")


def _toy(h_frac, c_frac=(0.05, 0.0, 0.0)):
    """P-1 cell of 10 Å with one C and one H: the inversion image of C is at −x."""
    return Crystal.from_sites((10.0, 10.0, 10.0), (90.0, 90.0, 90.0), [
        {"label": "C1", "element": "C", "position": c_frac, "u_iso": 0.02},
        {"label": "H1", "element": "H", "position": h_frac, "u_iso": 0.05},
    ], spacegroup=["x,y,z", "-x,-y,-z"])


def test_parents_and_adp_factors_of_paracetamol(paracetamol):
    st = RefinableStructure(paracetamol, hydrogens="riding")
    parents = {h: p for h, p, _d in st.riding}
    # chemistry: hydroxyl H3 on O1, amide H6 on N1, the methyl H7–H9 on C8, aromatic H on ring C
    assert parents == {"H1": "C5", "H2": "C4", "H3": "O1", "H4": "C2", "H5": "C1", "H6": "N1",
                       "H7": "C8", "H8": "C8", "H9": "C8"}
    assert all(0.9 < d < 1.2 for _h, _p, d in st.riding)
    factors = dict(zip([h for h, _p, _d in st.riding], st.ride_u_factor.tolist(), strict=True))
    assert factors["H3"] == factors["H7"] == 1.5 and factors["H1"] == factors["H6"] == 1.2
    # with the default ("free") nothing rides
    assert RefinableStructure(paracetamol).riding == []


def test_riding_h_keeps_its_offset_and_passes_gradients_to_the_parent(paracetamol):
    st = RefinableStructure(paracetamol, anisotropic=False, hydrogens="riding")
    labels = [s.label for s in paracetamol.sites]
    h, c8 = labels.index("H7"), labels.index("C8")
    A = st.A
    offset0 = (st.frac_asu()[h] - st.frac_asu()[c8]).detach() @ A.T
    st.perturb(0.2, torch.Generator().manual_seed(5))
    # a loss that only sees the H atoms pulls them to a target: the parents must move
    target = st.x0[st.ride_h] + 0.01
    opt = torch.optim.Adam(st.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad()
        x = st.frac_asu()
        loss = ((x[st.ride_h] - target) ** 2).sum() + st.u_asu()[st.ride_h].diagonal(dim1=-2, dim2=-1).sum()
        loss.backward()
        assert st.delta.grad[c8].abs().sum() > 0  # gradient reaches the parent
        assert st.delta.grad[h].abs().sum() == 0  # the H's own shift is not a parameter
        assert st.adp.grad[c8].abs().sum() > 0 and st.adp.grad[h].abs().sum() == 0
        opt.step()
    x = st.frac_asu().detach()
    moved = (x[c8] - st.x0[c8]) @ A.T
    assert moved.norm() > 0.01  # the parent moved (perturbation + steps) ...
    # ... and the X–H vector (Å) is unchanged
    assert torch.allclose((x[h] - x[c8]) @ A.T, offset0, atol=1e-12)
    U = st.u_asu().detach()
    assert torch.allclose(U[h], 1.5 * U[c8], atol=1e-15)  # methyl H: 1.5 × U(C8)
    assert torch.allclose(U[labels.index("H1")], 1.2 * U[labels.index("C5")], atol=1e-15)


def test_parent_found_through_a_symmetry_image_moves_the_h_with_the_image():
    # H at x = −0.155: 2.05 Å from C1 itself, 1.05 Å from its inversion image at −0.05
    st = RefinableStructure(_toy((-0.155, 0.0, 0.0)), hydrogens="riding")
    assert st.riding[0][1] == "C1" and st.riding[0][2] == pytest.approx(1.05)
    with torch.no_grad():
        st.delta[0] = torch.tensor([0.01, 0.02, -0.03], dtype=torch.float64)
    x = st.frac_asu().detach()
    # the image −x_C moved by −δ, and so did the H
    assert torch.allclose(x[1] - st.x0[1], -(x[0] - st.x0[0]), atol=1e-15)


def test_h_without_a_parent_is_refused():
    with pytest.raises(EmverseError, match="no parent to ride on.*hydrogens = 'free'"):
        RefinableStructure(_toy((0.3, 0.0, 0.0)), hydrogens="riding")
    with pytest.raises(EmverseError, match="unknown"):
        RefinableStructure(_toy((-0.155, 0.0, 0.0)), hydrogens="rigid")


def test_free_hydrogens_and_riding_positions_with_free_adp(paracetamol):
    st = RefinableStructure(paracetamol, hydrogens="free")
    st.perturb(0.2, torch.Generator().manual_seed(1))
    A = st.A.numpy()
    shifts = np.linalg.norm((st.frac_asu().detach().numpy() - st.x0.numpy()) @ A.T, axis=1)
    assert np.all(shifts[11:] > 0)  # every H moved on its own
    ride = RefinableStructure(paracetamol, anisotropic=False, hydrogens="riding", riding_adp=False)
    # positions ride but U(H) stays the CIF's own value (0.039 Å² for H1, U(C5) = 0.0042 Å²)
    assert ride.u_asu()[11, 0, 0].item() == pytest.approx(0.039, abs=2e-6)


def test_size_groups():
    n = np.array([100, 300, 110, 95, 290, 150])
    groups = size_groups(n, 1.3)
    assert sorted(f for g in groups for f in g) == list(range(6))
    for g in groups:
        assert list(g) == sorted(g) and n[list(g)].max() <= 1.3 * n[list(g)].min()
    assert len(groups) == 3
    assert [list(g) for g in size_groups(n, 0.0)] == [list(range(6))]


def test_bucketed_batches_give_the_padded_result(quartz_exp, quartz_structure):
    data = quartz_exp.select_frames([0, 5, 20, 33, 47, 61, 80, 95])
    out = {}
    for ratio in (0.0, 1.15):
        m = build_model(data, quartz_structure, thickness_model="single", t_init=400.0, g_max=1.0, n_tilts=2,
                        bucket_ratio=ratio)
        st = m.structure
        with torch.no_grad():
            st.delta.add_(0.003)
        i = m.unscaled()
        i.sum().backward()
        out[ratio] = (i.detach().numpy(), st.delta.grad.clone().numpy(), len(m.physics.buckets))
    (a, ga, n1), (b, gb, n2) = out[0.0], out[1.15]
    assert n1 == 1 and n2 > 1
    assert np.allclose(a, b, rtol=1e-9, atol=1e-12 * a.max())
    assert np.allclose(ga, gb, rtol=1e-7, atol=1e-9 * np.abs(ga).max())
