"""``mep.reconstruct``: volumes from diffraction stacks by physics-guided sampling.

For each test volume the diffraction stack is simulated with the recipe's
multislice ``[forward_model]`` (Poisson noise at its dose); ``samples``
guided draws per stack give the reconstruction (their mean) and a per-voxel
uncertainty map (their standard deviation). Volumes are in the prior's
rescaled units (phase × phase_scale); the physics sees phase in rad.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel, Task

from emverse_mep import metrics as M
from emverse_mep.dataset import load_volumes
from emverse_mep.guided import guided_sample


class ScaledPhysics(ForwardModel):
    """The multislice model seen from the prior's units: y = A(x / phase_scale)."""

    def __init__(self, model, phase_scale: float):
        super().__init__(noise=model.noise)
        self.model = model
        self.phase_scale = float(phase_scale)

    def forward(self, x):
        return self.model(x / self.phase_scale)

    def log_likelihood(self, y_pred, y):
        return self.model.log_likelihood(y_pred, y)


def check_observation(model, y: torch.Tensor) -> torch.Tensor:
    """A (B, n_scan, kH, kW) stack matching ``model``'s scan and detector, or a clear error."""
    expected = tuple(model.observation_shape)
    if not torch.is_tensor(y) or y.ndim != 4 or tuple(y.shape[1:]) != expected:
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise EmverseError(
            f"diffraction stack has shape {shape} but the forward model expects (B, n_scan, kH, kW) = "
            f"(B, {', '.join(map(str, expected))}) (scan_shape {tuple(model.scan_shape)}, detector "
            f"{tuple(model.probe_gpts)} px); use the same scan_shape and probe_gpts as the data"
        )
    return y


def check_prior_matches(prior, model) -> None:
    if tuple(prior.event_shape) != tuple(model.object_shape):
        raise EmverseError(
            f"[prior] event_shape {tuple(prior.event_shape)} differs from [forward_model] object_shape "
            f"{tuple(model.object_shape)}; train the prior on volumes of the object's shape"
        )


def setup(ctx, opts):
    """(truth volumes (N, D, H, W) tensor, prior, physics, observations)."""
    prior = ctx.build("prior")
    prior.eval()
    model = ctx.build("forward_model")
    check_prior_matches(prior, model)
    volumes, attrs = load_volumes(ctx.resolve_path(opts.data), opts.first, opts.count)
    if tuple(volumes.shape[1:]) != tuple(prior.event_shape):
        raise EmverseError(
            f"test volumes have shape {tuple(volumes.shape[1:])}, the prior {tuple(prior.event_shape)}; "
            "render the test set at the prior's shape (dataset test_shape)"
        )
    data_scale = float(attrs.get("phase_scale", 1.0))
    if prior.checkpoint_path and abs(prior.phase_scale - data_scale) > 1e-6 * data_scale:
        ctx.log.warning("prior phase_scale %.4g differs from the data's %.4g; using the data's",
                        prior.phase_scale, data_scale)
    truth = torch.as_tensor(volumes, dtype=ctx.dtype, device=ctx.device)
    physics = ScaledPhysics(model, data_scale).to(ctx.device)
    with torch.no_grad():
        y = model.simulate(truth.to(torch.float64 if ctx.dtype == torch.float64 else ctx.dtype) / data_scale,
                           ctx.generator("mep.observation"))
    y = check_observation(model, y.to(ctx.dtype))
    return truth, prior, physics, y, data_scale


def sample_guided(ctx, prior, physics, y, opts, *, samples: int, schedule: str | None = None,
                  steps: int | None = None, generator=None) -> torch.Tensor:
    """(N, samples, D, H, W) guided draws; the recipe's [sampler]/[guidance] when both exist."""
    schedule = schedule or opts.schedule
    steps = steps or opts.steps
    y_rep = y.repeat_interleave(samples, dim=0)
    if ctx.has("sampler") and ctx.has("guidance"):
        draws = _recipe_components(ctx, prior, physics, y_rep, schedule, steps, generator)
    else:
        draws = guided_sample(
            prior, y_rep, physics, steps=steps, schedule=schedule, w_max=opts.guidance_weight,
            centre=opts.guidance_centre_logsnr, sharpness=opts.guidance_sharpness,
            sigma_min=opts.sigma_min, sigma_max=opts.sigma_max,
            through_denoiser=opts.through_denoiser, generator=generator,
        )
    return draws.detach().reshape(y.shape[0], samples, *prior.event_shape)


_SCHEDULE_COMPONENTS = {
    "shifted_sigmoid": "diffusion.shifted_sigmoid",
    "alpha": "diffusion.alpha",
    "constant": "diffusion.constant",
}


def _recipe_components(ctx, prior, physics, y, schedule, steps, generator):
    """Thin call into emverse-diffusion: its sampler and DPS guidance, with
    the guidance's weight schedule swapped for ``schedule`` and the sampler's
    steps for ``steps``."""
    import attrs
    from emverse.params import ComponentSpec

    sampler_spec = ctx.spec("sampler")
    if sampler_spec.params is not None and "steps" in attrs.fields_dict(type(sampler_spec.params)):
        sampler_spec = ComponentSpec(sampler_spec.type, attrs.evolve(sampler_spec.params, steps=steps))
    sampler = ctx.build_spec(sampler_spec, "sampler")
    guidance_spec = ctx.spec("guidance")
    params = guidance_spec.params
    if params is not None and "schedule" in attrs.fields_dict(type(params)):
        current = params.schedule
        wanted = _SCHEDULE_COMPONENTS[schedule]
        if current.type != wanted:
            defaults = ctx.registry.get("schedule", wanted).load_params()()
            params = attrs.evolve(params, schedule=ComponentSpec(wanted, defaults))
        guidance_spec = ComponentSpec(guidance_spec.type, params)
    guidance = ctx.build_spec(guidance_spec, "guidance").bind(physics, y)
    return sampler.sample(prior, (y.shape[0], *prior.event_shape), None, guidance, generator)


class ReconstructTask(Task):
    def __init__(self, **params):
        self.params = params

    def run(self, ctx):
        from emverse.run import RunResult

        opts = ctx.options
        truth, prior, physics, y, scale = setup(ctx, opts)
        start = time.perf_counter()
        draws = sample_guided(ctx, prior, physics, y, opts, samples=opts.samples, generator=ctx.generator("mep.sample"))
        seconds = time.perf_counter() - start
        mean = draws.mean(dim=1)
        std = draws.std(dim=1) if opts.samples > 1 else torch.zeros_like(mean)
        ctx.save_checkpoint("reconstructions", {
            "mean": mean, "std": std, "samples": draws, "truth": truth,
            "observations": y,
        }, metadata={"phase_scale": scale, "units": "phase × phase_scale (divide by phase_scale for rad)"})
        t_np, d_np = truth.cpu().numpy(), draws.cpu().numpy()
        per_sample = [M.volume_scores(d_np[:, s], t_np) for s in range(opts.samples)]
        metrics = {f"sample_{k}": float(np.mean([p[k] for p in per_sample])) for k in per_sample[0]}
        metrics.update({f"mean_{k}": float(v.mean()) for k, v in M.volume_scores(mean.cpu().numpy(), t_np).items()})
        with torch.no_grad():
            metrics["data_misfit_amplitude"] = float(
                ((physics(mean).clamp_min(0).sqrt() - y.clamp_min(0).sqrt()) ** 2).sum((1, 2, 3)).mean()
            )
        if opts.samples > 1:
            metrics["spread_error_correlation"] = float(M.spread_error_correlation(d_np, t_np).mean())
        metrics["seconds_per_measurement"] = seconds / len(y)
        from emverse_mep.figures import slices_figure

        ctx.save_figure("reconstruction", slices_figure(
            {"truth": t_np[0], "guided mean": mean[0].cpu().numpy(), "std": std[0].cpu().numpy()}))
        return RunResult(metrics=metrics)
