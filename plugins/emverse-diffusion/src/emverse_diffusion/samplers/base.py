"""What every sampler shares: the time grid, the start noise, the (guided) denoiser call.

Time convention: see :mod:`emverse_diffusion.schedules` (t = 1 noise → t = 0 clean,
``x_t = α x_0 + σ ε``). A sampler walks the grid ``t_0 = 1 > … > t_n = 0``
returned by :func:`~emverse_diffusion.schedules.sampling_times`; the last
step always returns the clean estimate.
"""

from __future__ import annotations

import torch
from emverse.errors import EmverseError
from emverse.interfaces import DiffusionPrior, Guidance, Sampler
from emverse.progress import steps

from ..schedules import SPACINGS, check_steps, sampling_times


class DiffusionSampler(Sampler):
    """Base of the samplers here: ``steps`` and the placement of the steps.

    ``spacing`` is ``"uniform"`` (in t), ``"logsnr"`` (uniform in λ), ``"karras"``
    or ``"polyexponential"`` (σ-ladders with ``rho``, ``sigma_min``, ``sigma_max``
    in the variance-exploding σ = exp(−λ/2)).
    """

    def __init__(
        self,
        steps: int = 50,
        spacing: str = "uniform",
        rho: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ):
        self.steps = check_steps(steps)
        if spacing not in SPACINGS:
            raise EmverseError(f"spacing = {spacing!r} is unknown; use one of {', '.join(SPACINGS)}")
        self.spacing, self.rho, self.sigma_min, self.sigma_max = spacing, rho, sigma_min, sigma_max

    def times(self, prior: DiffusionPrior) -> torch.Tensor:
        return sampling_times(
            prior.schedule, self.steps, self.spacing,
            rho=self.rho, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
        )

    def intervals(self, grid: list[float]):
        """The (s, t) pairs of ``grid``, reported as the run's progress when sampling takes a while."""
        return steps(list(zip(grid[:-1], grid[1:], strict=True)), desc=f"sampling ({type(self).__name__})")

    def sample(self, prior, shape, condition=None, guidance=None, generator=None):
        """The walk every VP sampler here shares: x ~ N(0, I) at t = 1, then at each (s, t) the
        (guided) clean estimate x̂₀ at s and the sampler's own :meth:`step` to t; the last step
        (t = 0) returns x̂₀."""
        device, dtype = device_dtype(prior, condition)
        x = start_noise(shape, generator, device, dtype)
        state: dict = {}
        for s, t in self.intervals(self.times(prior).tolist()):
            x0 = clean_estimate(prior, x, s, condition, guidance)
            if t == 0.0:
                return x0
            x = self.step(x, x0, alpha_sigma_logsnr(prior.schedule, s), alpha_sigma_logsnr(prior.schedule, t),
                          generator, state)
        return x

    def step(self, x, x0, at_s, at_t, generator, state: dict):
        """x at t from x at s and x̂₀; ``at_s``/``at_t``: (α, σ, λ) there; ``state`` carries what
        a multistep method keeps between steps."""
        raise NotImplementedError


def device_dtype(prior, condition):
    """Where and in which dtype to sample: the prior's parameters, else the condition's."""
    for p in prior.parameters():
        return p.device, p.dtype
    for b in prior.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    if condition is not None and torch.is_tensor(condition):
        return condition.device, (condition.dtype if condition.is_floating_point() else torch.float32)
    return torch.device("cpu"), torch.float32


def start_noise(shape, generator, device, dtype) -> torch.Tensor:
    """x at t = 1: standard normal (VP schedules have σ(1) ≈ 1)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def fresh_noise(like: torch.Tensor, generator) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(like.shape, generator=generator, device=gen_device, dtype=like.dtype).to(like.device)


def clean_estimate(
    prior: DiffusionPrior,
    x: torch.Tensor,
    t: float,
    condition: torch.Tensor | None,
    guidance: Guidance | None,
) -> torch.Tensor:
    """x₀-hat at time ``t`` (detached); with guidance, the corrected estimate.

    The guidance differentiates through the denoiser, so x₀-hat is computed
    from an ``x`` that requires grad.
    """
    times = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    if guidance is None:
        with torch.no_grad():
            return prior.denoise(x, times, condition)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        x0 = prior.denoise(x_in, times, condition)
        corrected = guidance.correct(x_in, x0, times, prior.schedule)
    return corrected.detach()


def alpha_sigma_logsnr(schedule, t: float):
    """Python floats α(t), σ(t), λ(t) (float64 accuracy)."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    lam = schedule.logsnr(tt)
    return float(torch.sigmoid(lam).sqrt()), float(torch.sigmoid(-lam).sqrt()), float(lam)
