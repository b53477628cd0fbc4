"""A reference posterior sampler for checking corrections and amortized posteriors: NUTS.

``nuts_reference`` samples p(x | y) ∝ exp(−ℓ(x)) 1_box(x) — the posterior a
``[correction]`` targets, with ℓ the ``[likelihood]``'s negative log-likelihood through the
forward model and the prior uniform in the parameter box — by the No-U-Turn sampler of
pyro-ppl (``pip install emverse[reference]``), with a dense mass matrix adapted in warm-up.
It samples z ∈ ℝ^P with u = tanh z the normalised coordinates (x = ``space.denormalise(u)``),
adding log|du/dz| = Σ log(1 − tanh² z) so that the box prior stays exactly uniform.
Chains run one after another (no worker processes) from ``starts``; R-hat is pyro's split
Gelman–Rubin statistic per parameter over the chains.

NUTS explores one basin per chain: start chains in every basin whose mass matters (or
compare one basin at a time) — it is a check of the shape of the posterior around a mode,
not a mode finder.
"""

from __future__ import annotations

import attrs
import torch

from emverse.errors import EmverseError


@attrs.define
class ReferencePosterior:
    samples: torch.Tensor  # (chains, draws, P), physical units
    r_hat: torch.Tensor  # (P,)
    seconds: float
    gradient_evaluations: int

    def flat(self) -> torch.Tensor:
        return self.samples.reshape(-1, self.samples.shape[-1])


def nuts_reference(forward_model, likelihood, observation, space, starts: torch.Tensor, *,
                   num_samples: int = 500, warmup_steps: int = 300, seed: int = 0,
                   max_tree_depth: int = 8, covariance: torch.Tensor | None = None) -> ReferencePosterior:
    """NUTS chains from each row of ``starts`` (chains, P) in physical units.

    ``covariance`` (P, P, physical units), e.g. a Laplace covariance at a mode, whitens the
    coordinates NUTS moves in (z = z₀ + L w, L its Cholesky factor mapped to z): a constant
    linear map, so the target is unchanged; only the warm-up has less to learn."""
    try:
        import pyro
        from pyro.infer import MCMC, NUTS
        from pyro.ops.stats import split_gelman_rubin
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise EmverseError("the NUTS reference needs pyro-ppl: pip install 'emverse[reference]'") from err
    import time

    calls = [0]
    p = starts.shape[-1]
    low, high = space.bounds(torch.float64)
    centre = torch.atanh(space.normalise(starts[:1].to(torch.float64))[0].clamp(-1 + 1e-9, 1 - 1e-9))
    if covariance is not None:
        half = (high - low) / 2
        jac = 1.0 / (1.0 - torch.tanh(centre) ** 2)  # dz/du at the first start
        cov_z = covariance / (half[:, None] * half[None, :]) * (jac[:, None] * jac[None, :])
        scale = torch.linalg.cholesky(cov_z + 1e-12 * torch.eye(p, dtype=torch.float64))
    else:
        scale = torch.eye(p, dtype=torch.float64)
    solve = torch.linalg.inv(scale)

    def potential(params):
        z = centre + scale @ params["w"]
        u = torch.tanh(z)
        x = space.denormalise(u[None])
        calls[0] += 1
        nll = likelihood.negative_log_likelihood(forward_model(x), observation).sum()
        log_jacobian = torch.log1p(-u.pow(2)).sum()
        return nll - log_jacobian

    started = time.perf_counter()
    chains = []
    for c, start in enumerate(starts):
        pyro.set_rng_seed(seed + c)
        u0 = space.normalise(start[None].to(torch.float64))[0].clamp(-1 + 1e-9, 1 - 1e-9)
        kernel = NUTS(potential_fn=potential, full_mass=True, adapt_step_size=True,
                      adapt_mass_matrix=True, max_tree_depth=max_tree_depth)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                    initial_params={"w": solve @ (torch.atanh(u0) - centre)}, disable_progbar=True)
        mcmc.run()
        z = centre + mcmc.get_samples()["w"] @ scale.T
        chains.append(space.denormalise(torch.tanh(z)))
    samples = torch.stack(chains)
    r_hat = split_gelman_rubin(samples, chain_dim=0, sample_dim=1) if len(chains) > 1 else \
        torch.full((samples.shape[-1],), float("nan"))
    return ReferencePosterior(samples, r_hat, time.perf_counter() - started, calls[0])
