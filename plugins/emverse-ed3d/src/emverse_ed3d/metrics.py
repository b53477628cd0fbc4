"""Crystallographic residuals and structure-recovery errors for 3D-ED refinement.

R factors (paper eqs. 1–3, Klar et al. 2023, Jana2006 convention), on
amplitudes ``F = √I``:

* ``σ(F) = σ(I) / (2√I)``; weak or negative reflections with ``I < 0.01 σ(I)``
  get ``F = 0`` and ``σ(F) = 5 √σ(I)`` (the paper's rule);
* ``w = 1 / sqrt(σ(F)² + (u F)²)`` with instability factor ``u = 0.01``;
* ``wR(all) = sqrt(Σ_all w²(F_o − F_c)² / Σ_all w² F_o²)``;
* ``R(obs) = Σ_obs |F_o − F_c| / Σ_obs F_o`` over ``I > 3σ(I)``.

The per-frame scale is the least-squares optimum on amplitudes,
``k_f = Σ w² F_o F_c / Σ w² F_c²`` (closed form, differentiable).

Registered Metric components take tensors only: ``prediction`` / ``truth`` are
dicts of tensors (see each class).
"""

from __future__ import annotations

import numpy as np
import torch
from emverse.interfaces import Metric


def amplitude_weights(i_obs: torch.Tensor, sigma: torch.Tensor, instability: float = 0.01):
    """(F_obs, w) per reflection following the paper's weighting."""
    weak = i_obs < 0.01 * sigma
    safe_i = torch.where(weak, torch.ones_like(i_obs), i_obs)
    f_obs = torch.where(weak, torch.zeros_like(i_obs), torch.sqrt(safe_i))
    sigma_f = torch.where(weak, 5 * torch.sqrt(sigma), sigma / (2 * torch.sqrt(safe_i)))
    w = 1.0 / torch.sqrt(sigma_f**2 + (instability * f_obs) ** 2)
    return f_obs, w


def wr_all(i_calc: torch.Tensor, i_obs: torch.Tensor, sigma: torch.Tensor, instability: float = 0.01) -> torch.Tensor:
    f_obs, w = amplitude_weights(i_obs, sigma, instability)
    f_calc = torch.sqrt(i_calc.clamp_min(0) + 1e-30)
    return torch.sqrt(((w * (f_obs - f_calc)) ** 2).sum() / ((w * f_obs) ** 2).sum())


def r_obs(i_calc: torch.Tensor, i_obs: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, int]:
    observed = i_obs > 3 * sigma
    f_obs = torch.sqrt(i_obs[observed])
    f_calc = torch.sqrt(i_calc[observed].clamp_min(0))
    return (f_obs - f_calc).abs().sum() / f_obs.sum(), int(observed.sum())


def optimal_frame_scale(f_obs, f_calc, w, frame_index, n_frames):
    w2 = w**2
    num = torch.zeros(n_frames, dtype=f_obs.dtype, device=f_obs.device).index_add(0, frame_index, w2 * f_obs * f_calc)
    den = torch.zeros(n_frames, dtype=f_obs.dtype, device=f_obs.device).index_add(0, frame_index, w2 * f_calc**2)
    return num / den.clamp_min(1e-30)


def asu_rmsd(pred_frac, ref_frac, cell_matrix, rotations, translations, origin_shifts=None) -> float:
    """RMSD (Å) between two asymmetric units, symmetry- and origin-aware.

    For each atom the distance is the smallest over the space-group images of
    the predicted atom and lattice translations; the overall value is the
    smallest over the allowed origin shifts (fractional vectors; default only 0).
    """
    pred = np.asarray(pred_frac, float)
    ref = np.asarray(ref_frac, float)
    A = np.asarray(cell_matrix, float)
    shifts = [np.zeros(3)] if origin_shifts is None else [np.asarray(s, float) for s in origin_shifts]
    best = np.inf
    for shift in shifts:
        images = np.einsum("sij,nj->nsi", rotations, pred) + translations[None] + shift  # (N, S, 3)
        d = images - ref[:, None, :]
        d = d - np.round(d)
        dist = np.linalg.norm(d @ A.T, axis=-1).min(axis=1)
        best = min(best, float(np.sqrt(np.mean(dist**2))))
    return best


def adp_frobenius(u_pred, u_ref) -> float:
    """Root-mean over atoms of ‖U_pred − U_ref‖_F (Å², Cartesian tensors)."""
    diff = np.asarray(u_pred, float) - np.asarray(u_ref, float)
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=(-1, -2)))))


def thickness_error(t_pred, t_true) -> dict[str, float]:
    t_pred = np.asarray(t_pred, float)
    t_true = np.asarray(t_true, float)
    rms = float(np.sqrt(np.mean((t_pred - t_true) ** 2)))
    return {"rms_angstrom": rms, "relative": rms / float(np.mean(np.abs(t_true)))}


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class WRAll(Metric):
    """wR(all) and R(obs). prediction: I_calc (N,) scaled; truth: (N, 2) = (I_obs, σ(I))."""

    def __init__(self, instability: float = 0.01):
        self.instability = instability

    def __call__(self, prediction, truth) -> dict[str, float]:
        i_calc = torch.as_tensor(prediction, dtype=torch.float64)
        truth = torch.as_tensor(truth, dtype=torch.float64)
        i_obs, sigma = truth[:, 0], truth[:, 1]
        r, n_obs = r_obs(i_calc, i_obs, sigma)
        return {
            "wr_all": float(wr_all(i_calc, i_obs, sigma, self.instability)),
            "r_obs": float(r),
            "n_obs": float(n_obs),
            "n_all": float(i_obs.numel()),
        }

    def figure(self, prediction, truth):
        from emverse import figures as agg  # explicit Agg canvas, no backend switch

        i_calc = _np(prediction)
        i_obs = _np(truth)[:, 0]
        fig, ax = agg.subplots(figsize=(4.5, 4.5))
        ax.loglog(np.clip(i_calc, 1e-3, None), np.clip(i_obs, 1e-3, None), ".", ms=2, alpha=0.5)
        lo, hi = max(1e-3, min(i_calc.min(), i_obs[i_obs > 0].min())), max(i_calc.max(), i_obs.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("I calc (scaled)")
        ax.set_ylabel("I obs")
        ax.set_title("observed vs calculated intensities")
        fig.tight_layout()
        return fig


class AsuRMSD(Metric):
    """ASU RMSD (Å). prediction/truth: dicts with 'frac' (N, 3); truth also
    'cell_matrix' (3, 3), 'rotations' (S, 3, 3), 'translations' (S, 3), optional 'origin_shifts'."""

    def __call__(self, prediction, truth) -> dict[str, float]:
        return {
            "asu_rmsd_angstrom": asu_rmsd(
                _np(prediction["frac"]), _np(truth["frac"]), _np(truth["cell_matrix"]),
                _np(truth["rotations"]), _np(truth["translations"]), truth.get("origin_shifts"),
            )
        }


class AdpError(Metric):
    """Frobenius error of the ADPs (Å²). prediction/truth: Cartesian U tensors (N, 3, 3)."""

    def __call__(self, prediction, truth) -> dict[str, float]:
        return {"adp_frobenius": adp_frobenius(_np(prediction), _np(truth))}


class ThicknessProfileError(Metric):
    """RMS error (Å) and relative error of a thickness profile t(θ). prediction/truth: (F,) Å."""

    def __call__(self, prediction, truth) -> dict[str, float]:
        err = thickness_error(_np(prediction), _np(truth))
        return {"thickness_rms_angstrom": err["rms_angstrom"], "thickness_relative": err["relative"]}
