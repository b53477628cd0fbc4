"""Noise schedules: one time convention for every diffusion model in emverse.

Convention (used by every prior, sampler, objective and guidance here)
---------------------------------------------------------------------
* Diffusion time is continuous, ``t ∈ [0, 1]``: ``t = 0`` is the clean
  sample, ``t = 1`` is (almost) pure noise.
* Every schedule is *variance preserving*::

      x_t = alpha(t) * x_0 + sigma(t) * eps,     alpha² + sigma² = 1,

  and is fully described by its log signal-to-noise ratio
  ``logsnr(t) = log(alpha² / sigma²)`` (written λ), which decreases with t.
  Hence ``alpha² = sigmoid(λ)`` and ``sigma² = sigmoid(−λ)`` for all of them
  (Kingma et al. 2021, "Variational diffusion models").
* ``t_from_logsnr`` inverts ``logsnr``; samplers use it to place their steps
  on any σ-ladder (Karras, polyexponential).
* A *discrete* schedule (DDPM, ``T`` steps) lives on the grid ``t = k / T``,
  ``k = 1 … T``: ``alpha(k/T)² = ᾱ_k = ∏_{s≤k} (1 − β_s)`` exactly. Between
  grid points ``log ᾱ`` is interpolated linearly in t so every sampler with
  any number of steps works with it; ``logsnr(0) = +inf`` (clean).
* The σ of the "variance exploding" picture used by k-diffusion samplers is
  ``sigma_ve = sigma / alpha = exp(−λ / 2)``.

The network never sees this module's internals: a prior feeds it ``t``,
``logsnr`` or the integer step ``t·T`` (see :mod:`emverse_diffusion.prior`).
"""

from __future__ import annotations

import abc
import math

import torch
from emverse.errors import EmverseError
from emverse.interfaces import Configurable

__all__ = [
    "NoiseSchedule",
    "LinearBetaSchedule",
    "CosineSchedule",
    "LogSNRSchedule",
    "karras_sigmas",
    "polyexponential_sigmas",
    "sampling_times",
]


def _as_time(t, reference: torch.Tensor | None = None) -> torch.Tensor:
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=torch.float64)
    if reference is not None and not t.is_floating_point():
        t = t.to(reference.dtype)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


class NoiseSchedule(Configurable, abc.ABC):
    """A variance-preserving noise schedule on ``t ∈ [0, 1]`` (module docstring).

    Subclasses implement :meth:`_logsnr` and :meth:`_t_from_logsnr` in float64;
    the public methods cast back to the input's dtype and device.
    """

    #: number of discrete training steps (``None`` for continuous schedules)
    discrete_steps: int | None = None

    # -- subclass hooks (float64 in, float64 out) ------------------------------------
    @abc.abstractmethod
    def _logsnr(self, t: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def _t_from_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor: ...

    # -- public API -------------------------------------------------------------------
    def logsnr(self, t) -> torch.Tensor:
        """λ(t) = log(α²/σ²); decreasing in t; ``+inf`` at t = 0 for discrete schedules."""
        t = _as_time(t)
        return self._logsnr(t.to(torch.float64).clamp(0.0, 1.0)).to(t.dtype)

    def t_from_logsnr(self, logsnr) -> torch.Tensor:
        """Inverse of :meth:`logsnr` (values outside the schedule's range are clamped to it)."""
        logsnr = _as_time(logsnr)
        t = self._t_from_logsnr(logsnr.to(torch.float64))
        return t.clamp(0.0, 1.0).to(logsnr.dtype)

    def alpha(self, t) -> torch.Tensor:
        """Signal scale α(t) = sqrt(sigmoid(λ))."""
        t = _as_time(t)
        return torch.sigmoid(self._logsnr(t.double().clamp(0, 1))).sqrt().to(t.dtype)

    def sigma(self, t) -> torch.Tensor:
        """Noise scale σ(t) = sqrt(sigmoid(−λ))."""
        t = _as_time(t)
        return torch.sigmoid(-self._logsnr(t.double().clamp(0, 1))).sqrt().to(t.dtype)

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = _as_time(t)
        lam = self._logsnr(t.double().clamp(0, 1))
        return torch.sigmoid(lam).sqrt().to(t.dtype), torch.sigmoid(-lam).sqrt().to(t.dtype)

    def sigma_ve(self, t) -> torch.Tensor:
        """σ/α = exp(−λ/2): the noise level in the variance-exploding picture."""
        t = _as_time(t)
        return torch.exp(-0.5 * self._logsnr(t.double().clamp(0, 1))).to(t.dtype)

    @property
    def t_min(self) -> float:
        """Smallest time at which the denoiser is trained (1/T for discrete schedules)."""
        return 1.0 / self.discrete_steps if self.discrete_steps else 0.0

    @property
    def logsnr_min(self) -> float:
        """λ at t = 1 (the noisiest end)."""
        return float(self._logsnr(torch.tensor(1.0, dtype=torch.float64)))

    @property
    def logsnr_max(self) -> float:
        """λ at :attr:`t_min` (the cleanest trained time; finite)."""
        return float(self._logsnr(torch.tensor(self.t_min, dtype=torch.float64)))

    def sample_training_times(
        self, n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32
    ) -> torch.Tensor:
        """Training times: ``k/T`` with ``k ~ U{1..T}`` (discrete) or ``t ~ U(0, 1)``."""
        if self.discrete_steps:
            k = torch.randint(1, self.discrete_steps + 1, (n,), generator=generator, device=device)
            return (k.to(torch.float64) / self.discrete_steps).to(dtype)
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64).to(dtype)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class LinearBetaSchedule(NoiseSchedule):
    """DDPM's discrete linear-β schedule (Ho et al. 2020).

    ``β_k = linspace(beta_start, beta_end, steps)[k-1]`` for k = 1 … T and
    ``ᾱ_k = ∏_{s≤k}(1 − β_s)``; ``alpha(k/T)² = ᾱ_k`` exactly (module docstring).
    ``beta_start`` is β₁, ``beta_end`` β_T; both must lie strictly in (0, 1).
    ``spacing="sqrt"`` uses ``linspace(√β₁, √β_T, T)²`` (latent-diffusion "linear").
    """

    def __init__(
        self,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        steps: int = 1000,
        spacing: str = "linear",
    ):
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (0.0 < float(value) < 1.0):
                raise EmverseError(
                    f"linear-beta schedule: {name} = {value!r} lies outside (0, 1); "
                    "β is a per-step noise variance, give e.g. 1e-4 (start) and 0.02 (end)"
                )
        if int(steps) != steps or steps < 1:
            raise EmverseError(
                f"linear-beta schedule: steps = {steps!r} must be a positive integer (e.g. 1000)"
            )
        if spacing not in ("linear", "sqrt"):
            raise EmverseError(
                f"linear-beta schedule: spacing = {spacing!r} is unknown; use 'linear' or 'sqrt'"
            )
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.steps = int(steps)
        self.spacing = spacing
        self.discrete_steps = self.steps
        if spacing == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)
        else:
            betas = torch.linspace(
                math.sqrt(self.beta_start), math.sqrt(self.beta_end), self.steps, dtype=torch.float64
            ) ** 2
        self.betas = betas
        # log ᾱ on the grid t = k/T, k = 0..T (ᾱ_0 = 1)
        self._log_alpha_bar = torch.cat(
            [torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)]
        )

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_k for k = 1 … T (float64)."""
        return self._log_alpha_bar[1:].exp()

    def _log_alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        grid = self._log_alpha_bar.to(t.device)
        pos = t * self.steps
        k = pos.floor().clamp(0, self.steps - 1).long()
        frac = pos - k
        return grid[k] + frac * (grid[k + 1] - grid[k])

    def _logsnr(self, t):
        log_ab = self._log_alpha_bar_at(t)
        # λ = log ᾱ − log(1 − ᾱ); +inf at t = 0 where ᾱ = 1
        return log_ab - torch.log(-torch.expm1(log_ab))

    def _t_from_logsnr(self, logsnr):
        neg_log_ab = -torch.nn.functional.logsigmoid(logsnr)  # −log ᾱ, increasing in t
        grid = (-self._log_alpha_bar).to(logsnr.device)
        neg_log_ab = neg_log_ab.clamp(float(grid[0]), float(grid[-1]))
        k = torch.searchsorted(grid, neg_log_ab.contiguous(), right=True).clamp(1, self.steps) - 1
        lo, hi = grid[k], grid[k + 1]
        frac = (neg_log_ab - lo) / (hi - lo)
        return (k + frac) / self.steps


class CosineSchedule(NoiseSchedule):
    """Cosine schedule with offset ``s`` (Nichol & Dhariwal 2021), continuous in t.

    ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²(π/2 · (t + s)/(1 + s))``. λ is clamped to
    ``[logsnr_min, logsnr_max]`` so both ends stay finite (the raw form has
    λ(0) = +inf and λ(1) = −inf).
    """

    def __init__(self, offset: float = 0.008, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        if not offset >= 0:
            raise EmverseError(f"cosine schedule: offset = {offset!r} must be >= 0 (e.g. 0.008)")
        if not logsnr_min < logsnr_max:
            raise EmverseError(
                f"cosine schedule: logsnr_min = {logsnr_min!r} must be below logsnr_max = {logsnr_max!r}"
            )
        self.offset = float(offset)
        self._lmin = float(logsnr_min)
        self._lmax = float(logsnr_max)

    def _angle(self, t):
        return 0.5 * math.pi * (t + self.offset) / (1.0 + self.offset)

    def _logsnr(self, t):
        # ᾱ/(1−ᾱ) with ᾱ = cos²(θ)/cos²(θ0): λ = log cos²θ − log(cos²θ0 − cos²θ)
        c2 = torch.cos(self._angle(t)) ** 2
        c20 = math.cos(self._angle(0.0)) ** 2
        lam = torch.log(c2) - torch.log((c20 - c2).clamp_min(1e-300))
        return lam.clamp(self._lmin, self._lmax)

    def _t_from_logsnr(self, logsnr):
        alpha_bar = torch.sigmoid(logsnr.clamp(self._lmin, self._lmax))
        c20 = math.cos(self._angle(0.0)) ** 2
        angle = torch.arccos((alpha_bar * c20).sqrt().clamp(0, 1))
        return angle * 2.0 / math.pi * (1.0 + self.offset) - self.offset


class LogSNRSchedule(NoiseSchedule):
    """A schedule given directly in logSNR: ``α² = sigmoid(λ)``, ``σ² = sigmoid(−λ)``.

    ``shape="linear"``: λ(t) = λ_max + t (λ_min − λ_max).
    ``shape="cosine"``: λ(t) = −2 log tan(π t / 2) + 2·``shift``, squeezed into
    [λ_min, λ_max] by mapping t onto the matching angle range (the
    "interpolated/shifted cosine" of Kingma & Gao 2023 and Hoogeboom et al. 2023).
    """

    def __init__(
        self,
        logsnr_min: float = -15.0,
        logsnr_max: float = 15.0,
        shape: str = "cosine",
        shift: float = 0.0,
    ):
        if not logsnr_min < logsnr_max:
            raise EmverseError(
                f"logsnr schedule: logsnr_min = {logsnr_min!r} must be below logsnr_max = {logsnr_max!r}"
            )
        if shape not in ("linear", "cosine"):
            raise EmverseError(f"logsnr schedule: shape = {shape!r} is unknown; use 'linear' or 'cosine'")
        self._lmin = float(logsnr_min)
        self._lmax = float(logsnr_max)
        self.shape = shape
        self.shift = float(shift)
        # angle range so that λ(0) = λ_max and λ(1) = λ_min exactly
        self._a0 = math.atan(math.exp(-0.5 * (self._lmax - 2 * self.shift)))
        self._a1 = math.atan(math.exp(-0.5 * (self._lmin - 2 * self.shift)))

    def _logsnr(self, t):
        if self.shape == "linear":
            return self._lmax + t * (self._lmin - self._lmax)
        angle = self._a0 + t * (self._a1 - self._a0)
        return -2.0 * torch.log(torch.tan(angle)) + 2.0 * self.shift

    def _t_from_logsnr(self, logsnr):
        lam = logsnr.clamp(self._lmin, self._lmax)
        if self.shape == "linear":
            return (lam - self._lmax) / (self._lmin - self._lmax)
        angle = torch.atan(torch.exp(-0.5 * (lam - 2.0 * self.shift)))
        return (angle - self._a0) / (self._a1 - self._a0)


# ---------------------------------------------------------------------------------------
# σ-ladders for sampling (σ in the variance-exploding sense, σ = exp(−λ/2))
# ---------------------------------------------------------------------------------------
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) ladder: n levels from ``sigma_max`` to ``sigma_min`` then 0.

    σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ; shape (n + 1,), float64.
    """
    _check_ladder(n, sigma_min, sigma_max, rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def polyexponential_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0
) -> torch.Tensor:
    """Polyexponential ladder: ``ramp = linspace(1, 0, n)^ρ``,
    σ_i = exp(ramp (ln σ_max − ln σ_min) + ln σ_min), then 0; ρ = 1 is log-linear."""
    _check_ladder(n, sigma_min, sigma_max, rho)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho if n > 1 else torch.ones(1, dtype=torch.float64)
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def _check_ladder(n, sigma_min, sigma_max, rho):
    check_steps(n)
    if not (0 < sigma_min < sigma_max):
        raise EmverseError(
            f"σ-ladder: need 0 < sigma_min < sigma_max, got sigma_min = {sigma_min!r}, "
            f"sigma_max = {sigma_max!r}"
        )
    if not rho > 0:
        raise EmverseError(f"σ-ladder: rho = {rho!r} must be > 0 (Karras uses 7)")


def check_steps(steps) -> int:
    """Validate a number of sampling steps (a positive integer)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise EmverseError(
            f"steps = {steps!r}: a sampler needs at least one step; give a positive integer "
            "(e.g. 20 for DPM-Solver++, 1000 for DDPM)"
        )
    return int(steps)


SPACINGS = ("uniform", "logsnr", "karras", "polyexponential")


def sampling_times(
    schedule: NoiseSchedule,
    steps: int,
    spacing: str = "uniform",
    *,
    rho: float | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """The decreasing time grid ``t_0 > t_1 > … > t_steps = 0`` (float64, shape steps+1; t_0 = 1
    except for σ-ladders with σ_max below the schedule's).

    A sampler evaluates the denoiser at ``t_0 … t_{steps−1}``, and its last step
    returns the clean estimate (t = 0).

    ``spacing``: ``"uniform"`` in t (for a discrete schedule whose T is a
    multiple of ``steps`` the points are grid points k/T), ``"logsnr"`` uniform in λ,
    ``"karras"`` (ρ default 7) or ``"polyexponential"`` (ρ default 1) σ-ladders
    between ``sigma_min`` and ``sigma_max`` (defaults: the schedule's σ_ve at
    t = 1, at most 80 as in Karras et al., and at its cleanest trained time, at
    least 2e-3). A ladder may start below t = 1: the start noise N(0, I) is the
    VP marginal there too, to within α(t_0) ≤ 1/80 of the data scale.
    """
    steps = check_steps(steps)
    if spacing not in SPACINGS:
        raise EmverseError(f"spacing = {spacing!r} is unknown; use one of {', '.join(SPACINGS)}")
    t_lo = max(schedule.t_min, 0.0)
    if spacing == "uniform":
        if t_lo > 0:
            inner = torch.linspace(1.0, t_lo, steps, dtype=torch.float64)
            if schedule.discrete_steps and steps <= schedule.discrete_steps:
                inner = (inner * schedule.discrete_steps).round() / schedule.discrete_steps
            return torch.cat([inner, torch.zeros(1, dtype=torch.float64)])
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    lam_hi = schedule.logsnr_max
    lam_lo = schedule.logsnr_min
    if spacing == "logsnr":
        if t_lo > 0:  # discrete: last evaluation at the first training step, then t = 0
            lam = torch.linspace(lam_lo, lam_hi, steps, dtype=torch.float64)
            t = torch.cat([schedule.t_from_logsnr(lam), torch.zeros(1, dtype=torch.float64)])
        else:  # continuous: λ_max is reached at t = 0 itself
            t = schedule.t_from_logsnr(torch.linspace(lam_lo, lam_hi, steps + 1, dtype=torch.float64))
            t[-1] = 0.0
        t[0] = 1.0
        return t
    smax = sigma_max if sigma_max is not None else min(math.exp(-0.5 * lam_lo), 80.0)
    smin = sigma_min if sigma_min is not None else max(math.exp(-0.5 * lam_hi), 2e-3)
    if spacing == "karras":
        sig = karras_sigmas(steps, smin, smax, 7.0 if rho is None else rho)
    else:
        sig = polyexponential_sigmas(steps, smin, smax, 1.0 if rho is None else rho)
    t = schedule.t_from_logsnr(-2.0 * torch.log(sig[:-1]))
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])
