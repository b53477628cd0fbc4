"""``mep.reconstruct``: volumes from diffraction stacks by physics-guided sampling.

For each test volume the diffraction stack is simulated with the recipe's
multislice ``[forward_model]`` (Poisson noise at its dose); ``samples``
draws per stack of the recipe's ``[sampler]`` (DPM-Solver++(2M) SDE of
emverse-diffusion) guided by its ``[guidance]`` (``diffusion.dps`` with the
amplitude likelihood, RMS-normalised gradient and an annealed weight
schedule) give the reconstruction (their mean) and a per-voxel uncertainty
map (their standard deviation). Volumes are in the prior's
rescaled units (phase × phase_scale); the physics sees phase in rad.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.interfaces import ForwardModel, OptionsTask
from emverse.params import ComponentSpec
from emverse.run import timed

from emverse_mep import metrics as M
from emverse_mep.dataset import load_volumes


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


SCHEDULE_NAMES = {
    "diffusion.shifted_sigmoid": "shifted_sigmoid",
    "diffusion.alpha": "alpha",
    "diffusion.constant": "constant",
}


def schedule_name(spec: ComponentSpec) -> str:
    """'shifted_sigmoid' for ``diffusion.shifted_sigmoid``; other components by their full name."""
    return SCHEDULE_NAMES.get(spec.type, spec.type)


def guidance_variants(ctx, ablation: bool) -> dict[str, ComponentSpec]:
    """{schedule name: [guidance] spec}: the recipe's guidance first; with ``ablation``
    the same guidance with each other weight schedule of emverse-diffusion at the same
    peak weight ``scale`` (the paper's Table 2)."""
    spec = ctx.spec("guidance")
    params = spec.params
    has_schedule = params is not None and "schedule" in attrs.fields_dict(type(params))
    if not has_schedule:
        if ablation:
            raise EmverseError(
                f"options.ablation_schedules = true needs a [guidance] with a weight schedule "
                f"(e.g. diffusion.dps), but {spec.type!r} has none; set options.ablation_schedules = false"
            )
        return {spec.type: spec}
    main = params.schedule
    variants = {schedule_name(main): spec}
    if ablation:
        scale = getattr(main.params, "scale", 1.0)
        for other in SCHEDULE_NAMES:
            if other == main.type:
                continue
            defaults = ctx.registry.get("guidance_weight", other).load_params()()
            weight = ComponentSpec(other, attrs.evolve(defaults, scale=scale))
            variants[schedule_name(weight)] = ComponentSpec(spec.type, attrs.evolve(params, schedule=weight))
    return variants


def sample_guided(ctx, prior, physics, y, *, samples: int, guidance_spec: ComponentSpec | None = None,
                  steps: int | None = None, generator=None) -> torch.Tensor:
    """(N, samples, D, H, W) draws of the recipe's [sampler] guided by its [guidance]
    (or ``guidance_spec``) bound to ``physics`` and the stacks ``y``; ``steps``
    overrides the sampler's number of steps."""
    sampler_spec = ctx.spec("sampler")
    if steps is not None:
        if sampler_spec.params is None or "steps" not in attrs.fields_dict(type(sampler_spec.params)):
            raise EmverseError(f"[sampler] {sampler_spec.type!r} has no 'steps' to sweep; "
                               "use a diffusion sampler or leave options.steps_sweep empty")
        sampler_spec = ComponentSpec(sampler_spec.type, attrs.evolve(sampler_spec.params, steps=steps))
    sampler = ctx.build_spec(sampler_spec, "sampler")
    y_rep = y.repeat_interleave(samples, dim=0)
    guidance = ctx.build_spec(guidance_spec or ctx.spec("guidance"), "guidance").bind(physics, y_rep)
    draws = sampler.sample(prior, (y_rep.shape[0], *prior.event_shape), None, guidance, generator)
    return draws.detach().reshape(y.shape[0], samples, *prior.event_shape)


class ReconstructTask(OptionsTask):
    """``mep.reconstruct``: guided reconstructions of held-out volumes and their uncertainty maps.

    A plugin task because its unknown is a phase volume in the prior's rescaled units (phase ×
    phase_scale, which the physics divides out), its draws come in batches of whole diffraction
    stacks, and it scores volumes (PSNR/SSIM, spread–error correlation), none of which the core
    ``infer`` task's parameter-vector summary expresses."""

    def run(self, ctx):
        from emverse.run import RunResult

        opts = ctx.options
        truth, prior, physics, y, scale = setup(ctx, opts)
        size = opts.batch or len(y)
        parts = []
        for k, first in enumerate(range(0, len(y), size)):
            # one stream per batch; all at once keeps the stream it always had
            stream = "mep.sample" if size >= len(y) else f"mep.sample.batch{k}"

            def draw(first=first, stream=stream):
                return timed(lambda: sample_guided(ctx, prior, physics, y[first:first + size], samples=opts.samples,
                                                   generator=ctx.generator(stream)))

            parts.append(ctx.stage(f"reconstruct-{first}-{first + size}", draw))
        draws = torch.cat([part["value"] for part in parts]).to(y.device)
        seconds = float(sum(part["seconds"] for part in parts))
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
