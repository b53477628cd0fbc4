"""Distance-geometry recovery (cbldm.distance_geometry) on exact and perturbed weight matrices."""

import numpy as np
import pytest
import torch
from emverse.errors import EmverseError
from emverse_cbldm.clusters import ClusterSpec, build_cluster, nn_distance, to_blocks, weight_matrix
from emverse_cbldm.recovery import DistanceGeometry, kabsch_rmsd, recover_positions

CASES = [
    ("SC", (2, 2, 3), "Fe"),
    ("FCC", (2, 3, 3), "Au"),
    ("BCC", (2, 3, 3), "W"),
    ("HCP", (2, 3, 3), "Co"),
    ("Ico", (3,), "Pt"),
    ("Dec", (2, 2, 1), "Ag"),
    ("Oct", (5,), "Pd"),
]


@pytest.mark.parametrize("structure_type,size,element", CASES)
def test_laplacian_start_recovers_ground_truth(structure_type, size, element):
    """The paper's path (generalised-eigenvector start + trust-constr) gives back the structure."""
    x = build_cluster(ClusterSpec(structure_type, size, element, nn_distance(element)))
    y, info = recover_positions(to_blocks(weight_matrix(x)), init="laplacian")
    assert info["n_atoms"] == x.shape[0]
    assert kabsch_rmsd(x, y) <= 0.05  # Å


def test_kabsch_rmsd_is_independent_of_rotation_and_sensitive_to_displacement():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert kabsch_rmsd(x, x @ q.T + 3.0) < 1e-10
    shifted = x.copy()
    shifted[0] += [0.5, 0.0, 0.0]
    assert kabsch_rmsd(x, shifted) > 0.05


def test_noisy_matrix_gives_a_close_structure():
    rng = np.random.default_rng(0)
    x = build_cluster(ClusterSpec("Ico", (3,), "Au", 2.88))
    w = weight_matrix(x)
    n = x.shape[0]
    noise = rng.normal(scale=2e-4, size=(n, n))
    w[:n, :n] += noise
    y, info = recover_positions(w)
    assert info["n_atoms"] == n
    assert kabsch_rmsd(x, y) < 0.1


def test_refiner_interface_and_bad_input():
    x = build_cluster(ClusterSpec("Dec", (2, 2, 1), "Ag", nn_distance("Ag")))
    result = DistanceGeometry(init="laplacian").refine(None, torch.as_tensor(weight_matrix(x)))
    assert result.parameters["positions"].shape == x.shape
    assert result.converged and len(result.history["loss"]) == result.iterations
    with pytest.raises(EmverseError, match="no structure"):
        recover_positions(np.zeros((256, 256)))
    with pytest.raises(EmverseError, match="at most 256"):
        recover_positions(np.eye(300))
    with pytest.raises(EmverseError, match="NaN"):
        recover_positions(np.full((8, 8), np.nan))
    with pytest.raises(EmverseError, match="square"):
        recover_positions(np.zeros((3, 4)))


def test_pdf_polish_lowers_rw():
    from emverse_cbldm.pdf import cbldm_gr
    from emverse_cbldm.recovery import polish_against_pdf, rwp

    x = torch.as_tensor(build_cluster(ClusterSpec("Ico", (2,), "Au", 2.88)))
    g_obs = cbldm_gr(x[None])[0]
    start = x + 0.08 * torch.randn(
        x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype
    )
    model = lambda pos: cbldm_gr(pos)  # noqa: E731
    before = float(rwp(model(start[None])[0] / model(start[None])[0].max(), g_obs / g_obs.max()))
    polished, hist = polish_against_pdf(model, start, g_obs, steps=40, lr=0.005)
    assert min(hist) < 0.7 * before
    assert kabsch_rmsd(x.numpy(), polished.numpy()) < kabsch_rmsd(x.numpy(), start.numpy())


def test_evaluation_candidate_polish_lowers_rw_against_the_input_pdf():
    """The evaluation's optional polish (``eval_polish_steps``): a matrix of a structure whose
    atoms are 0.3 Å off gives Rw ~1 unpolished and a much lower Rw after 100 polish steps."""
    from emverse_cbldm.dataset import simulate_pdfs
    from emverse_cbldm.evaluate import matrix_to_candidate

    rng = np.random.default_rng(3)
    x = build_cluster(ClusterSpec("Ico", (3,), "Au", 2.88))
    g_in = simulate_pdfs([x])[0].astype(np.float64)
    noisy = x + rng.normal(scale=0.3, size=x.shape)
    blocks = torch.as_tensor(to_blocks(weight_matrix(noisy, 260.0, 64)))
    _, rw_plain, _ = matrix_to_candidate(blocks, g_in, maxiter=60)
    y, rw_polished, g = matrix_to_candidate(blocks, g_in, maxiter=60, polish_steps=100)
    assert y.shape == x.shape and g.shape == g_in.shape
    assert rw_plain > 0.5
    assert rw_polished < 0.5 * rw_plain


def test_pdf_polish_hard_core_keeps_atoms_apart():
    """A measured G(r) is flat below its first peak, so the polish alone leaves an extra atom
    0.9 Å from another; with the hard-core term (2 Å) no pair ends closer than 2 Å."""
    from emverse_cbldm.pdf import cbldm_gr
    from emverse_cbldm.recovery import polish_against_pdf

    x = torch.as_tensor(build_cluster(ClusterSpec("Ico", (3,), "Au", 2.88)))
    g_obs = cbldm_gr(x[None])[0]
    start = torch.cat([x, (x[0] + torch.tensor([0.9, 0.0, 0.0], dtype=x.dtype))[None]])

    def closest(p):
        return float((torch.cdist(p, p) + 1e9 * torch.eye(len(p), dtype=p.dtype)).min())

    free, _ = polish_against_pdf(cbldm_gr, start, g_obs, steps=100, lr=0.01)
    held, _ = polish_against_pdf(cbldm_gr, start, g_obs, steps=100, lr=0.01, min_distance=2.0)
    assert closest(free) < 1.5
    assert closest(held) > 1.95
