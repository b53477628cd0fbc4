"""Cluster builders and the weight-matrix representation (lengths in Å)."""

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse.testing import shared_data_dir
from emverse_cbldm.clusters import (
    METALLIC_RADIUS_ANGSTROM,
    STRUCTURE_TYPES,
    ClusterSpec,
    build_cluster,
    catalogue,
    from_blocks,
    nn_distance,
    to_blocks,
    weight_matrix,
)
from emverse_pdf.structures import read_structure

SIZES = {
    "SC": (2, 2, 3),
    "FCC": (2, 2, 3),
    "BCC": (2, 3, 3),
    "HCP": (2, 3, 3),
    "Ico": (3,),
    "Dec": (2, 2, 1),
    "Oct": (4,),
}


def _pair_distances(x):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return d[np.triu_indices(len(x), 1)]


@pytest.mark.parametrize("structure_type", STRUCTURE_TYPES)
def test_nearest_neighbour_distance_is_twice_the_metallic_radius(structure_type):
    d = nn_distance("Pt")
    x = build_cluster(ClusterSpec(structure_type, SIZES[structure_type], "Pt", d))
    # icosahedra are strained: ase keeps the shell spacing, so the intra-shell distance is 5 % longer
    assert _pair_distances(x).min() == pytest.approx(
        d, rel=0.06 if structure_type == "Ico" else 1e-6
    )
    assert np.allclose(x.mean(0), 0.0, atol=1e-9)
    r = np.linalg.norm(x, axis=1)
    assert np.all(np.diff(r) >= -1e-6)  # canonical order: by distance from the centroid


def test_icosahedral_magic_numbers():
    counts = [build_cluster(ClusterSpec("Ico", (n,), "Au", 2.88)).shape[0] for n in (1, 2, 3, 4)]
    # 1 + Σ_{k=1}^{n-1} (10k² + 2)
    assert counts == [1, 13, 55, 147]


@pytest.mark.parametrize(
    "name",
    [
        "Icosahedron_shell_3_atom_V_lc_2.44.xyz",
        "Decahedron_p_5_q_1_r_0_atom_Re_lc_2.56.xyz",
        "Octahedron_length_6_atom_Zn_lc_2.42.xyz",
    ],
)
def test_rebuilds_deepstruc_clusters(name):
    """DeepStruc's own ase clusters (shared data) have the same pair-distance multiset."""
    path = shared_data_dir() / "pdf_nanoparticles/deepstruc/structures_xyz" / name
    if not path.exists():
        pytest.skip(f"shared data {path} missing")
    ref = read_structure(path).positions  # the project's xyz reader (ase)
    parts = name.split("_atom_")[0].split("_")
    kind = {"Icosahedron": "Ico", "Decahedron": "Dec", "Octahedron": "Oct"}[parts[0]]
    size = tuple(int(p) for p in parts[1:] if p.isdigit())
    lc = float(name.rsplit("_lc_", 1)[1].removesuffix(".xyz"))
    x = build_cluster(ClusterSpec(kind, size, "Au", lc))
    assert x.shape == ref.shape
    np.testing.assert_allclose(
        np.sort(_pair_distances(x)), np.sort(_pair_distances(ref)), atol=1e-3
    )


def test_weight_matrix_and_blocks_round_trip():
    x = build_cluster(ClusterSpec("Dec", (2, 2, 1), "Cu", nn_distance("Cu")))
    w = weight_matrix(x)
    n = x.shape[0]
    assert w.shape == (256, 256)
    np.testing.assert_allclose(np.diag(w)[:n], 1.0)
    assert np.all(w[n:] == 0) and np.all(w[:, n:] == 0)
    d2 = ((x[0] - x[1]) ** 2).sum()
    assert w[0, 1] == pytest.approx(np.exp(-d2 / 260.0))
    b = to_blocks(w)
    assert b.shape == (4, 128, 128)
    np.testing.assert_array_equal(b[1], w[:128, 128:])
    np.testing.assert_array_equal(from_blocks(b), w)
    bt = to_blocks(torch.as_tensor(w)[None])
    assert torch.equal(from_blocks(bt)[0], torch.as_tensor(w))


def test_bad_inputs_are_named():
    x = np.random.default_rng(0).normal(size=(300, 3))
    with pytest.raises(EmverseError, match="300 atoms"):
        weight_matrix(x)
    with pytest.raises(EmverseError, match="structure_type"):
        build_cluster(ClusterSpec("Quasi", (1,), "Au", 2.88))
    with pytest.raises(EmverseError, match="metallic radius"):
        nn_distance("Xx")
    with pytest.raises(EmverseError, match="max_atoms"):
        catalogue(("Ico",), ("Au",), max_atoms=300)


def test_catalogue_respects_atom_limits():
    entries = catalogue(("Ico", "Oct"), ("Au", "Pt"), min_atoms=10, max_atoms=150)
    counts = {n for _, n in entries}
    assert min(counts) >= 10 and max(counts) <= 150
    assert {13, 55, 147} <= counts  # icosahedra of 2–4 shells
    assert {s.element for s, _ in entries} == {"Au", "Pt"}
    assert len(METALLIC_RADIUS_ANGSTROM) == 28
