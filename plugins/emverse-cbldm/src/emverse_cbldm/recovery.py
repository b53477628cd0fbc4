"""Structure recovery from a weight matrix: the distance-geometry step of CbLDM (aDGP).

Given W_ij ≈ exp(−d_ij²/t) (t in Å², positions in Å):

1. symmetrise, W̄ = (W + Wᵀ)/2;
2. atom count n = number of columns whose largest entry is ≥ exp(−r_c²/t)
   (an atom has a neighbour — or itself on the diagonal — within r_c = 8 Å);
   padding columns are ≈ 0;
3. initial coordinates from the graph Laplacian L = D − W̄, D = diag(Σ_j W̄_ij):
   the generalised eigenproblem L v = μ D v, the eigenvectors of the three
   smallest non-zero μ, scaled by the factor that best fits W̄ (and, as a
   safeguard, classical MDS on d_ij = √(−t ln W̄_ij); the better start wins);
4. minimise Σ_ij (exp(−d_ij²/t) − W̄_ij)² with scipy ``trust-constr``
   (exact gradient and Hessian–vector products from torch, float64), plus a hard-core
   term that stops atoms coming closer than ``min_distance_angstrom`` (2 Å; inactive for
   real metal clusters, whose nearest neighbours are ≥ 2.3 Å apart);
5. optionally polish the coordinates against a measured PDF with a PDF
   forward model (``pdf.debye``), Adam on the Rwp-type residual.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from emverse.errors import EmverseError
from emverse.interfaces import RefinementResult, Refiner
from emverse_pdf.metrics import rwp as pdf_rwp
from emverse_pdf.structures import kabsch_rmsd  # noqa: F401 (one Kabsch RMSD: emverse-pdf's)

from .clusters import MAX_ATOMS, WEIGHT_T_ANGSTROM2, from_blocks


def as_square_matrix(w) -> np.ndarray:
    """Accept (256, 256) or the (4, 128, 128) block form; return float64 (M, M)."""
    w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    w = w.astype(np.float64)
    if w.ndim == 3 and w.shape[0] == 4 and w.shape[1] == w.shape[2]:
        w = from_blocks(w)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise EmverseError(
            f"weight matrix has shape {tuple(w.shape)}; give a square (M, M) matrix or the "
            "(4, 128, 128) block form"
        )
    if not np.all(np.isfinite(w)):
        raise EmverseError("weight matrix holds NaN or inf values; check the model output")
    return w


def atom_mask(w_sym: np.ndarray, t: float, cutoff_angstrom: float = 8.0) -> np.ndarray:
    """Which rows/columns are atoms: max_j W̄_ij ≥ exp(−cutoff²/t)."""
    return w_sym.max(axis=0) >= math.exp(-(cutoff_angstrom**2) / t)


def laplacian_init(w: np.ndarray) -> np.ndarray:
    """Unscaled coordinates (n, 3): generalised eigenvectors 2–4 of L v = μ D v."""
    n = w.shape[0]
    degree = w.sum(axis=1)
    lap = np.diag(degree) - w
    _, vecs = scipy.linalg.eigh(lap, np.diag(degree))
    coords = np.zeros((n, 3))
    k = min(3, n - 1)
    coords[:, :k] = vecs[:, 1 : 1 + k]
    return coords


def mds_init(w: np.ndarray, t: float) -> np.ndarray:
    """Classical MDS on d_ij² = −t ln W̄_ij (W̄ clipped to (1e-12, 1])."""
    d2 = -t * np.log(np.clip(w, 1e-12, 1.0))
    np.fill_diagonal(d2, 0.0)
    n = w.shape[0]
    j = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * j @ d2 @ j
    vals, vecs = np.linalg.eigh(b)
    idx = np.argsort(vals)[::-1][:3]
    coords = np.zeros((n, 3))
    k = len(idx)
    coords[:, :k] = vecs[:, idx] * np.sqrt(np.clip(vals[idx], 0.0, None))
    return coords


#: default hard-core distance (Å) of the recovery and of the PDF polish
MIN_DISTANCE_ANGSTROM = 2.0


def hard_core_penalty(d2: torch.Tensor, min_distance: float) -> torch.Tensor:
    """Σ_{i<j} max(0, d_min² − d_ij²)² (Å⁴) from the squared-distance matrix ``d2`` (n, n)."""
    n = d2.shape[0]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=d2.device), diagonal=1)
    return (torch.relu(min_distance**2 - d2[upper]) ** 2).sum()


def weight_loss(
    x: torch.Tensor, w: torch.Tensor, t: float, min_distance: float = 0.0
) -> torch.Tensor:
    """Σ_ij (exp(−d_ij²/t) − W_ij)², plus a hard-core term Σ_{i≠j} max(0, d_min² − d_ij²)² (Å⁴)
    that keeps atoms of a generated (imperfect) matrix from collapsing onto each other; it is
    zero for any real metal cluster when d_min is below its nearest-neighbour distance."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    loss = ((torch.exp(-d2 / t) - w) ** 2).sum()
    if min_distance > 0:
        loss = loss + 2.0 * hard_core_penalty(d2, min_distance)  # both orders of each pair
    return loss


def _best_scale(coords: np.ndarray, w: np.ndarray, t: float) -> np.ndarray:
    wt = torch.as_tensor(w)
    c = torch.as_tensor(coords)
    rms = float(c.pow(2).sum(1).mean().sqrt()) or 1.0
    scales = np.geomspace(0.1, 100.0, 200) / rms
    losses = [float(weight_loss(c * s, wt, t)) for s in scales]
    return coords * scales[int(np.argmin(losses))]


def recover_positions(
    w,
    *,
    t: float = WEIGHT_T_ANGSTROM2,
    cutoff_angstrom: float = 8.0,
    init: str = "best",
    maxiter: int = 200,
    gtol: float = 1e-10,
    min_distance_angstrom: float = MIN_DISTANCE_ANGSTROM,
    callback=None,
) -> tuple[np.ndarray, dict]:
    """Atom positions (n, 3) in Å from a (possibly noisy) weight matrix, and an info dict."""
    w = as_square_matrix(w)
    if w.shape[0] > MAX_ATOMS:
        raise EmverseError(
            f"weight matrix is {w.shape[0]}×{w.shape[0]}; at most {MAX_ATOMS} atoms are supported"
        )
    w_sym = 0.5 * (w + w.T)
    mask = atom_mask(w_sym, t, cutoff_angstrom)
    n = int(mask.sum())
    if n < 2:
        raise EmverseError(
            f"the weight matrix has {n} atom(s) above the threshold exp(-{cutoff_angstrom}²/t) = "
            f"{math.exp(-(cutoff_angstrom**2) / t):.3f}; it holds no structure (check the model "
            "output, or lower cutoff_angstrom)"
        )
    wn = np.clip(w_sym[np.ix_(mask, mask)], 0.0, 1.0)
    np.fill_diagonal(wn, 1.0)
    starts = {}
    if init in ("laplacian", "best"):
        starts["laplacian"] = _best_scale(laplacian_init(wn), wn, t)
    if init in ("mds", "best"):
        starts["mds"] = mds_init(wn, t)
    if not starts:
        raise EmverseError(f"init {init!r} is unknown; use 'laplacian', 'mds' or 'best'")
    wt = torch.as_tensor(wn)

    def fun(v):
        x = torch.as_tensor(v).reshape(n, 3).requires_grad_(True)
        loss = weight_loss(x, wt, t, min_distance_angstrom)
        (g,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), g.numpy().ravel().copy()

    def hessp(v, p):
        x = torch.as_tensor(v).reshape(n, 3).requires_grad_(True)
        (g,) = torch.autograd.grad(
            weight_loss(x, wt, t, min_distance_angstrom), x, create_graph=True
        )
        (hp,) = torch.autograd.grad(g, x, grad_outputs=torch.as_tensor(p).reshape(n, 3))
        return hp.numpy().ravel().copy()

    best = None
    for name, x0 in starts.items():
        res = scipy.optimize.minimize(
            fun,
            x0.ravel(),
            jac=True,
            hessp=hessp,
            method="trust-constr",
            options={"maxiter": maxiter, "gtol": gtol, "xtol": 1e-12},
            callback=(lambda xk, state: callback(state.nit, float(state.fun)))
            if callback
            else None,
        )
        if best is None or res.fun < best[1].fun:
            best = (name, res)
    name, res = best
    x = res.x.reshape(n, 3)
    x = x - x.mean(0)
    info = {
        "n_atoms": n,
        "init": name,
        "loss": float(res.fun),
        "iterations": int(res.nit),
        "converged": bool(res.status in (1, 2)),
        "atom_indices": np.flatnonzero(mask),
    }
    return x, info


class DistanceGeometry(Refiner):
    """Refiner ``cbldm.distance_geometry``: positions (Å) from a weight matrix.

    ``refine(model, observation)``: ``observation`` is a weight matrix ((M, M) or
    (4, 128, 128)), or a dict with ``weight_matrix`` and, for the PDF polish,
    ``pdf`` (G(r), on the model's r grid). ``model`` is the PDF forward model used
    by the polish (``None`` skips it).
    """

    def __init__(
        self,
        t_angstrom2: float = WEIGHT_T_ANGSTROM2,
        cutoff_angstrom: float = 8.0,
        init: str = "best",
        maxiter: int = 200,
        polish_steps: int = 0,
        polish_lr: float = 0.005,
        min_distance_angstrom: float = MIN_DISTANCE_ANGSTROM,
    ):
        self.min_distance = min_distance_angstrom
        self.t = t_angstrom2
        self.cutoff = cutoff_angstrom
        self.init = init
        self.maxiter = maxiter
        self.polish_steps = polish_steps
        self.polish_lr = polish_lr

    def refine(self, model, observation, *, generator=None, callback=None) -> RefinementResult:
        if isinstance(observation, dict):
            w = observation.get("weight_matrix")
            pdf = observation.get("pdf")
            if w is None:
                raise EmverseError(
                    "observation dict has no 'weight_matrix'; add the generated matrix"
                )
        else:
            w, pdf = observation, None
        history: dict[str, list[float]] = {"loss": []}

        def cb(it, loss):
            history["loss"].append(loss)
            if callback is not None:
                callback(it, model, loss)

        x, info = recover_positions(
            w,
            t=self.t,
            cutoff_angstrom=self.cutoff,
            init=self.init,
            maxiter=self.maxiter,
            min_distance_angstrom=self.min_distance,
            callback=cb,
        )
        positions = torch.as_tensor(x)
        if self.polish_steps > 0 and model is not None and pdf is not None:
            positions, polish_hist = polish_against_pdf(
                model, positions, torch.as_tensor(pdf), steps=self.polish_steps, lr=self.polish_lr,
                min_distance=self.min_distance,
            )
            history["pdf_rwp"] = polish_hist
        return RefinementResult(
            parameters={"positions": positions.detach(), "n_atoms": torch.tensor(info["n_atoms"])},
            history=history,
            converged=info["converged"],
            iterations=info["iterations"],
            message=f"init={info['init']} loss={info['loss']:.3e}",
        )


def rwp(pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Rw = √(Σ(G_obs − G_calc)² / Σ G_obs²) over the last axis, no scale fitted: emverse-pdf's
    :func:`~emverse_pdf.metrics.rwp` with ``fit_scale = False``."""
    return pdf_rwp(pred, obs, fit_scale=False)


def polish_against_pdf(
    pdf_model, positions: torch.Tensor, g_obs: torch.Tensor, *, steps=100, lr=0.005,
    min_distance: float = 0.0,
):
    """Adam on the positions (Å) to lower Rw between ``pdf_model(positions)`` and ``g_obs``,
    both normalised by their maximum (the scale of a measured G(r) is arbitrary).

    ``min_distance`` > 0 (Å) adds the recovery's hard-core term Σ_{i<j} max(0, d_min² − d_ij²)²
    (Å⁴, weight 1): a measured G(r) is nearly flat below the first peak, so without it the
    polish can pull atoms onto each other. The returned positions are those of the lowest
    Rw + hard-core value; the history holds Rw.
    """
    dtype = torch.float64
    x = positions.detach().to(dtype).clone().requires_grad_(True)
    g_obs = g_obs.to(dtype)
    g_obs = g_obs / g_obs.abs().max()
    opt = torch.optim.Adam([x], lr=lr)
    hist = []
    best = (float("inf"), x.detach().clone())
    for _ in range(steps):
        opt.zero_grad()
        g = pdf_model(x[None])[0]
        g = g / g.abs().max()
        fit = rwp(g, g_obs)
        loss = fit
        if min_distance > 0:
            d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
            loss = loss + hard_core_penalty(d2, min_distance)
        if float(loss.detach()) < best[0]:
            best = (float(loss.detach()), x.detach().clone())
        hist.append(float(fit.detach()))
        loss.backward()
        opt.step()
    return best[1], hist
