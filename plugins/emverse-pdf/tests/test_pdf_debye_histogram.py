"""The pair-distance histogram path (method "grid") against the exact pair sum.

Independent checks: the histogram's node weights sum to the number of pairs of each
element pair (cubic Lagrange weights sum to one); the grid sum equals the direct
sum over every pair (float64: Rw < 1e-7; float32 by default: Rw <= 1e-5 against the
float64 exact sum, the speed issue's requirement); the analytic backward pass equals
finite differences and the direct sum's gradient; blocking, packing, batching and
padding do not change the result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from emverse_pdf.debye import compute_gr, debye_scattering
from emverse_pdf.form_factors import form_factors
from emverse_pdf.pair_histogram import histogram_nodes, pair_histogram
from emverse_pdf.params import DebyeParams
from emverse_pdf.structures import fcc_sphere

# DebyeCalculator-like settings: r-independent pair width (the angle-addition node sum)
PEER_LIKE = DebyeParams(qmin=1.0, qmax=30.0, qdamp=0.04, delta2=0.0, biso=0.3, rmax=30.0)


def rw(calc: torch.Tensor, ref: torch.Tensor) -> float:
    calc, ref = calc.double(), ref.double()
    return float((calc - ref).norm() / ref.norm())


def two_element_cluster(seed: int = 3):
    """A 10 Å Cu3Au-like FCC sphere (Au on the corners, Cu on the faces), rattled by 0.05 Å (Å)."""
    s = fcc_sphere("Cu", 3.75, 8.0)
    x = torch.tensor(s.positions)
    corner = np.isclose(np.mod(s.positions / 3.75, 1.0), 0.0, atol=1e-6).all(1)
    symbols = ["Au" if c else "Cu" for c in corner]
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    assert 0 < sum(corner) < len(symbols)
    return x, symbols


def test_node_weights_sum_to_the_pair_counts():
    x, symbols = two_element_cluster()
    index = torch.tensor([[0 if e == "Au" else 1 for e in symbols]])
    n_au, n_cu = int((index == 0).sum()), int((index == 1).sum())
    step = 2.0**-8
    n_bins = histogram_nodes(2 * float(x.norm(dim=1).max()) + 1.0, step)
    mask = torch.ones(1, len(symbols), dtype=torch.bool)
    totals = pair_histogram(x[None], mask, index, 2, step, n_bins).sum(-1)[0]  # types AuAu, AuCu, CuAu, CuCu
    torch.testing.assert_close(totals[0], torch.tensor(n_au * (n_au - 1) / 2, dtype=torch.float64))
    torch.testing.assert_close(totals[1] + totals[2], torch.tensor(float(n_au * n_cu), dtype=torch.float64))
    torch.testing.assert_close(totals[3], torch.tensor(n_cu * (n_cu - 1) / 2, dtype=torch.float64))


@pytest.mark.parametrize("settings", [PEER_LIKE, DebyeParams(delta2=2.0)], ids=["constant-width", "delta2"])
def test_grid_matches_the_exact_sum_two_elements(settings):
    x, symbols = two_element_cluster()
    exact = debye_scattering(x, symbols, settings=settings, method="direct")["fq"]
    grid = debye_scattering(x, symbols, settings=settings, method="grid")["fq"]
    assert rw(grid, exact) < 1e-7
    # float32 (the default dtype of a float32 caller) stays within the bound
    grid32 = debye_scattering(x.float(), symbols, settings=settings, method="grid")["fq"]
    assert grid32.dtype == torch.float32
    assert rw(grid32, exact) <= 1e-5


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-7), (torch.float32, 1e-5)])
def test_au201_g_of_r_against_the_exact_float64_sum(dtype, bound):
    x = torch.tensor(fcc_sphere("Au", 4.08, 9.5).positions)
    assert x.shape[0] == 201
    _, exact = compute_gr(x, "Au", settings=PEER_LIKE, method="direct")
    _, g = compute_gr(x.to(dtype), "Au", settings=PEER_LIKE)  # "auto" picks the grid here
    assert g.dtype == dtype
    assert rw(g, exact) <= bound


def test_zero_q_is_handled():
    x, symbols = two_element_cluster()
    settings = DebyeParams(qmin=0.0, qmax=20.0, qdamp=0.0, delta2=0.0, biso=0.5)
    exact = debye_scattering(x, symbols, settings=settings, method="direct")["iq"]
    grid = debye_scattering(x, symbols, settings=settings, method="grid")["iq"]
    assert rw(grid, exact) < 1e-7
    # I(0) = (sum_i f_i(0))^2, f(0) = c + sum a (Waasmaier-Kirfel): Au 78.98, Cu 28.99 electrons
    f0 = sum(form_factors([e], torch.zeros(1, dtype=torch.float64))[0, 0] for e in symbols)
    assert float(grid[0]) == pytest.approx(float(f0) ** 2, rel=1e-9)


def test_batch_padding_blocks_and_packing_do_not_change_the_sums():
    x, symbols = two_element_cluster()
    n = x.shape[0]
    alone = debye_scattering(x, symbols, settings=PEER_LIKE, method="grid")["fq"]
    # a batch: the cluster padded with 3 masked atoms holding NaN, next to a smaller one
    padded = torch.cat([x, torch.full((3, 3), float("nan"), dtype=x.dtype)])
    other = torch.cat([x[: n // 2], torch.zeros(n + 3 - n // 2, 3, dtype=x.dtype)])
    batch = torch.stack([padded, other])
    mask = torch.zeros(2, n + 3, dtype=torch.bool)
    mask[0, :n] = True
    mask[1, : n // 2] = True
    elements = [symbols + ["Cu"] * 3, symbols[: n // 2] + ["Cu"] * (n + 3 - n // 2)]
    together = debye_scattering(batch, elements, mask, settings=PEER_LIKE, method="grid")["fq"]
    half = debye_scattering(x[: n // 2], symbols[: n // 2], settings=PEER_LIKE, method="grid")["fq"]
    scale = float(alone.abs().max())
    torch.testing.assert_close(together[0], alone, rtol=0, atol=1e-10 * scale)
    torch.testing.assert_close(together[1], half, rtol=0, atol=1e-10 * scale)
    # many small row blocks (unpacked) against one packed block
    blocked = debye_scattering(x, symbols, settings=PEER_LIKE, method="grid", max_chunk_elements=64)["fq"]
    torch.testing.assert_close(blocked, alone, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("settings", [PEER_LIKE, DebyeParams(delta2=2.0)], ids=["constant-width", "delta2"])
def test_grid_gradient_matches_finite_differences_and_the_direct_gradient(settings):
    x, symbols = two_element_cluster()
    x, symbols = x[None, :60], symbols[:60]  # 1770 pairs: the direct sum's gradient stays cheap
    mask = torch.ones(1, x.shape[1], dtype=torch.bool)
    mask[0, -2:] = False  # two padding atoms: zero gradient
    weights = torch.randn(1, 3000, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)

    def objective(inp, method):
        return (compute_gr(inp, [symbols], mask, settings, method=method)[1] * weights).sum()

    grads = {}
    for method in ("grid", "direct"):
        xg = x.clone().requires_grad_(True)
        (grads[method],) = torch.autograd.grad(objective(xg, method), xg)
    eps = 1e-5
    fd = (objective(x + eps * direction, "grid") - objective(x - eps * direction, "grid")) / (2 * eps)
    assert float((grads["grid"] * direction).sum()) == pytest.approx(float(fd), rel=1e-6)
    assert float(grads["grid"][0, -2:].abs().max()) == 0.0
    assert rw(grads["grid"], grads["direct"]) < 1e-5
