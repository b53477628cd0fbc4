"""Task ``multislice.reconstruct``: crystal → 4D-STEM data → gradient reconstruction → quality.

The core's ``refine`` task fits a parameter vector drawn from the model's
``example_input``; ptychography needs a rendered crystal as the truth and a
refiner that optimises the volume itself, so this plugin registers its own
task. Steps:

1. render the recipe's structure on the forward model's voxel grid with
   abTEM potentials (:func:`~emverse_multislice.render.render_phase_volume`);
2. simulate the diffraction stack (noiseless, or Poisson at the model's dose
   when ``options.noise``);
3. reconstruct with the recipe's ``[refiner]`` (``multislice.adam`` /
   ``multislice.lbfgs``) from a zero volume;
4. report depth-summed SSIM / PSNR, against the truth and against the truth
   band-limited to the model's antialias aperture (the most any
   reconstruction from these data can hold), the loss history, figures and
   a safetensors checkpoint of truth, observation and reconstruction.
"""

from __future__ import annotations

import torch
from emverse.interfaces import Task
from emverse.run import RunResult

from emverse_multislice.figures import depth_sum_figure, loss_figure
from emverse_multislice.metrics import volume_metrics
from emverse_multislice.propagation import antialias_aperture
from emverse_multislice.render import render_phase_volume


def _bandlimited(volume: torch.Tensor, sampling: float) -> torch.Tensor:
    aperture = antialias_aperture(volume.shape[-2:], sampling).to(volume.dtype)
    return torch.fft.ifft2(torch.fft.fft2(volume) * aperture).real


class Reconstruct(Task):
    def __init__(
        self,
        structure: str = "builtin:srtio3",
        zone_axis=(0, 0, 1),
        in_plane_rotation_deg: float = 0.0,
        parametrization: str = "lobato",
        noise: bool = False,
        save_volumes: bool = True,
    ):
        self.structure = structure
        self.zone_axis = tuple(zone_axis)
        self.in_plane_rotation_deg = float(in_plane_rotation_deg)
        self.parametrization = parametrization
        self.noise = bool(noise)
        self.save_volumes = bool(save_volumes)

    def run(self, ctx):
        model = ctx.build("forward_model")
        refiner = ctx.build("refiner")
        structure = self.structure
        if not structure.startswith("builtin:"):
            structure = str(ctx.resolve_path(structure))
        truth = render_phase_volume(
            structure,
            shape=model.object_shape,
            sampling_angstrom=model.sampling_angstrom,
            slice_thickness_angstrom=model.slice_thickness_angstrom,
            voltage_kv=model.voltage_kv,
            zone_axis=self.zone_axis,
            in_plane_rotation_deg=self.in_plane_rotation_deg,
            parametrization=self.parametrization,
            dtype=ctx.dtype,
        )[None].to(ctx.device)
        ctx.log.info("rendered %s: phase %.3f–%.3f rad", self.structure, truth.min(), truth.max())
        with torch.no_grad():
            if self.noise:
                observation = model.simulate(truth, generator=ctx.generator("noise", device=ctx.device))
            else:
                observation = model(truth)

        bar = ctx.progress(total=getattr(refiner, "epochs", getattr(refiner, "iterations", None)),
                           desc="reconstruct")

        def callback(iteration, _model, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3g}")

        # resumable: `emverse run --resume` renders and simulates again (deterministic) and the
        # reconstruction continues from its last resume file
        result = refiner.refine(model, observation, generator=ctx.generator("refiner"), callback=callback,
                                **ctx.resume_for(refiner, "reconstruct"))
        bar.close()
        reconstruction = result.parameters["object"]

        metrics = volume_metrics(reconstruction, truth)
        band_truth = _bandlimited(truth, model.sampling_angstrom)
        band_recon = _bandlimited(reconstruction, model.sampling_angstrom)
        for key, value in volume_metrics(band_recon, band_truth).items():
            metrics[f"bandlimited_{key}"] = value
        ceiling = volume_metrics(band_truth, truth)["depth_sum_ssim"]
        metrics["bandlimited_truth_depth_sum_ssim"] = ceiling
        losses = result.history["loss"]
        metrics.update(
            initial_loss=losses[0],
            final_loss=losses[-1],
            loss_reduction=losses[0] / max(losses[-1], 1e-300),
            iterations=float(result.iterations),
        )
        for spec, metric in zip(ctx.recipe.components.get("metrics", []), ctx.build("metrics"), strict=True):
            for key, value in metric(reconstruction, truth).items():
                metrics[f"{spec.type}.{key}"] = float(value)

        ctx.save_figure("loss", loss_figure(losses))
        ctx.save_figure("volumes", depth_sum_figure(reconstruction[0], truth[0]))
        ctx.add_table(
            "reconstruction quality",
            ["measure", "value"],
            [[k, f"{v:.4g}"] for k, v in metrics.items()],
        )
        ctx.add_text(
            "about",
            f"{self.structure} along {list(self.zone_axis)}, volume {tuple(model.object_shape)} "
            f"(depth × H × W) at {model.slice_thickness_angstrom:g} Å × {model.sampling_angstrom:g} Å; "
            f"{model.n_scan} scan positions; refiner {type(refiner).__name__}: {result.message}. "
            "SSIM of depth sums after min–max normalisation; 'bandlimited_' compares both volumes "
            "low-passed to the model's 2/3-Nyquist antialias band, which bounds what the data hold.",
        )
        if self.save_volumes:
            ctx.save_checkpoint(
                "reconstruction",
                {"truth": truth, "observation": observation, "reconstruction": reconstruction,
                 "loss": torch.tensor(losses, dtype=torch.float64)},
            )
        return RunResult(metrics)
