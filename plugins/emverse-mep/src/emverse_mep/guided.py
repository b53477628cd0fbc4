"""Physics-guided sampling: DPM-Solver++(2M) SDE with a DPS correction.

The glue between the volume prior (rescaled volumes x, std ≈ 1) and the
multislice model (phase φ = x / phase_scale, rad) is :class:`ScaledVolumeModel`.

When the recipe has ``[sampler]`` and ``[guidance]`` tables (emverse-diffusion's
``diffusion.dpmpp_2m_sde`` / ``diffusion.dps``), the tasks use those; this
module is the plugin-local implementation of the same update so the
technique runs on its own, with the equations visible:

* VP schedule in logSNR λ: α² = sigmoid(λ), σ² = sigmoid(−λ); the solver's
  "time" is h-steps in λ/2 = log(α/σ) (DPM-Solver++, Lu et al. 2022);
* steps on a polyexponential σ-ladder (σ_VE = e^{−λ/2}, σ_max = 800,
  σ_min = 0.1 as in the paper's appendix E; ρ = 1 is log-linear);
* 2M SDE update (η = 1, midpoint), s → t with h = (λ_t − λ_s)/2:
  x_t = (σ_t/σ_s) e^{−h} x_s + α_t(1 − e^{−2h}) D + ½ α_t (1 − e^{−2h}) (D − D_prev)/r
        + σ_t √(1 − e^{−2h}) z,   r = h_prev / h;
* DPS (Chung et al. 2022; EQUATIONS.md B2): before each update the clean
  estimate is corrected, D = x̂₀ − w(λ_s) ∇_{x_s} ‖√A(x̂₀(x_s)) − √y‖, the
  unsquared amplitude residual norm (PtyRAD's loss with p = 0.5; the
  official DPS code differentiates the unsquared norm), rescaled to unit RMS
  per volume so that w is the RMS correction in the prior's std-1 units;
* guidance weight schedules w(λ): shifted sigmoid w_max·sigmoid(−k(λ − λ₀))
  (strong at high noise, annealed to zero; the paper's choice), alpha
  w_max·α(λ) (grows as noise falls), constant w_max.
"""

from __future__ import annotations

import math

import torch
from emverse.errors import EmverseError
from torch import nn

SCHEDULES = ("shifted_sigmoid", "alpha", "constant")


class ScaledVolumeModel(nn.Module):
    """A ForwardModel-like view of a multislice model on rescaled volumes: A(x / phase_scale)."""

    def __init__(self, model, phase_scale: float):
        super().__init__()
        self.model = model
        self.phase_scale = float(phase_scale)

    def forward(self, x):
        return self.model(x / self.phase_scale)


def guidance_weight(kind: str, logsnr: float, w_max: float, centre: float = -4.0, sharpness: float = 1.0) -> float:
    """w(λ) of the named schedule (see module docstring)."""
    if kind == "shifted_sigmoid":
        return w_max / (1.0 + math.exp(sharpness * (logsnr - centre)))
    if kind == "alpha":
        return w_max * math.sqrt(1.0 / (1.0 + math.exp(-logsnr)))
    if kind == "constant":
        return w_max
    raise EmverseError(f"guidance schedule {kind!r} is unknown; use one of {', '.join(SCHEDULES)}")


def logsnr_ladder(steps: int, sigma_min: float = 0.1, sigma_max: float = 800.0, rho: float = 1.0) -> torch.Tensor:
    """λ_0 < … < λ_{steps−1} on the polyexponential σ-ladder (float64)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise EmverseError(f"steps = {steps!r}: give a positive integer number of sampling steps (e.g. 50)")
    if not 0 < sigma_min < sigma_max:
        raise EmverseError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho if steps > 1 else torch.ones(1, dtype=torch.float64)
    sig = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return -2.0 * torch.log(sig)


def amplitude_residual_norm(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖√y_pred − √y‖ per batch element (B,)."""
    diff = torch.sqrt(y_pred.clamp_min(0) + 1e-12) - torch.sqrt(y.clamp_min(0))
    return diff.flatten(1).norm(dim=1)


def _rms_normalised(grad: torch.Tensor) -> torch.Tensor:
    """The gradient scaled to unit RMS per volume, so the weight w is the RMS
    step in the prior's (std ≈ 1) units, whatever the physics' scale."""
    rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30)
    return grad / rms.view(-1, *([1] * (grad.dim() - 1)))


def guided_sample(
    prior,
    observation: torch.Tensor | None,
    physics: nn.Module | None,
    *,
    steps: int = 50,
    schedule: str = "shifted_sigmoid",
    w_max: float = 1.0,
    centre: float = -4.0,
    sharpness: float = 1.0,
    sigma_min: float = 0.1,
    sigma_max: float = 800.0,
    through_denoiser: bool = True,
    generator: torch.Generator | None = None,
    callback=None,
) -> torch.Tensor:
    """Draws (B, *event_shape) from ``prior`` guided towards ``observation``
    (B, n_scan, kH, kW) through ``physics`` (a :class:`ScaledVolumeModel`);
    unguided when ``observation`` is None or ``w_max`` = 0."""
    if observation is not None and physics is None:
        raise EmverseError("guided_sample got an observation but no physics model to compare it with")
    lam = logsnr_ladder(steps, sigma_min, sigma_max)
    batch = observation.shape[0] if observation is not None else 1
    param = next(prior.parameters())
    dtype, device = param.dtype, param.device
    shape = (batch, *prior.event_shape)
    alpha0 = math.sqrt(1 / (1 + math.exp(-float(lam[0]))))
    sigma0 = math.sqrt(1 / (1 + math.exp(float(lam[0]))))
    # x at λ_0 ≈ pure noise: α₀ x₀ + σ₀ ε with α₀ ≈ 1e-3; start from σ₀ ε
    x = sigma0 * torch.randn(shape, generator=generator, dtype=dtype).to(device)
    del alpha0
    d_prev, h_prev = None, None
    guided = observation is not None and w_max > 0
    for i in range(steps):
        lam_s = float(lam[i])
        logsnr = torch.full((batch,), lam_s, dtype=dtype, device=device)
        a_s, s_s = math.sqrt(1 / (1 + math.exp(-lam_s))), math.sqrt(1 / (1 + math.exp(lam_s)))
        w = guidance_weight(schedule, lam_s, w_max, centre, sharpness) if guided else 0.0
        if w > 0 and not through_denoiser:
            # gradient at x̂₀ itself (no denoiser Jacobian): a projected-gradient step on the estimate
            with torch.no_grad():
                x0_hat = a_s * x - s_s * prior.predict_v(x, logsnr)
            x0_in = x0_hat.detach().requires_grad_(True)
            with torch.enable_grad():
                norm = amplitude_residual_norm(physics(x0_in), observation)
                (grad,) = torch.autograd.grad(norm.sum(), x0_in)
            denoised = (x0_hat - w * _rms_normalised(grad)).detach()
        elif w > 0:
            x_in = x.detach().requires_grad_(True)
            with torch.enable_grad():
                x0_hat = a_s * x_in - s_s * prior.predict_v(x_in, logsnr)
                norm = amplitude_residual_norm(physics(x0_hat), observation)
                (grad,) = torch.autograd.grad(norm.sum(), x_in)
            denoised = (x0_hat - w * _rms_normalised(grad)).detach()
        else:
            with torch.no_grad():
                denoised = a_s * x - s_s * prior.predict_v(x, logsnr)
        if callback is not None:
            callback(i, lam_s, denoised)
        if i == steps - 1:
            return denoised
        lam_t = float(lam[i + 1])
        a_t, s_t = math.sqrt(1 / (1 + math.exp(-lam_t))), math.sqrt(1 / (1 + math.exp(lam_t)))
        h = 0.5 * (lam_t - lam_s)
        e = math.exp(-2 * h)
        with torch.no_grad():
            x_next = (s_t / s_s) * math.exp(-h) * x + a_t * (1 - e) * denoised
            if d_prev is not None:
                r = h_prev / h
                x_next = x_next + 0.5 * a_t * (1 - e) * (denoised - d_prev) / r
            noise = torch.randn(shape, generator=generator, dtype=dtype).to(device)
            x = x_next + s_t * math.sqrt(max(1 - e, 0.0)) * noise
        d_prev, h_prev = denoised, h
    return x
