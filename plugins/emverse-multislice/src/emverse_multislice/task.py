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

With ``options.observation`` the data are measured instead (any 4D-STEM file
:mod:`emverse.readers` opens): the calibration sets the forward model's
optics, sampling, scan and object size (:mod:`emverse_multislice.measured`),
the patterns are cropped / resampled to the model's detector and normalised,
and the reconstruction (with whatever probe, position and affine corrections
the refiner refines) is reported by its data misfit, the refined scan
affine, position corrections and probe modes — and, when ``options.truth``
gives the phase volume of simulated "measured" data, by SSIM in the scanned
area.
"""

from __future__ import annotations

import torch
from emverse.interfaces import Task
from emverse.run import RunResult

from emverse_multislice.figures import depth_sum_figure, loss_figure
from emverse_multislice.metrics import volume_metrics
from emverse_multislice.propagation import antialias_aperture, bandlimit
from emverse_multislice.render import render_phase_volume


def _bandlimited(volume: torch.Tensor, sampling: float) -> torch.Tensor:
    return bandlimit(volume, antialias_aperture(volume.shape[-2:], sampling).to(volume.dtype)).real


def _reconstruct(ctx, model, refiner, observation):
    """The recipe's refiner on ``observation`` with a progress bar, resumable (``emverse run
    --resume`` prepares the same data again, deterministically, and the reconstruction continues
    from its last resume file)."""
    bar = ctx.progress(total=getattr(refiner, "epochs", getattr(refiner, "iterations", None)),
                       desc="reconstruct")

    def callback(iteration, _model, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3g}")

    result = refiner.refine(model, observation, generator=ctx.generator("refiner"), callback=callback,
                            **ctx.resume_for(refiner, "reconstruct"))
    bar.close()
    return result


def _loss_metrics(result) -> dict[str, float]:
    losses = result.history["loss"]
    return {"initial_loss": losses[0], "final_loss": losses[-1],
            "loss_reduction": losses[0] / max(losses[-1], 1e-300), "iterations": float(result.iterations)}


class Reconstruct(Task):
    def __init__(
        self,
        structure: str = "builtin:srtio3",
        zone_axis=(0, 0, 1),
        in_plane_rotation_deg: float = 0.0,
        parametrization: str = "lobato",
        noise: bool = False,
        save_volumes: bool = True,
        observation: str = "",
        beam_energy_kv: float | None = None,
        convergence_semiangle_mrad: float | None = None,
        reciprocal_pixel_size: float | None = None,
        scan_step_angstrom: float | None = None,
        scan_rotation_deg: float | None = None,
        detector_binning: float = 1.0,
        object_padding_px: int = 8,
        stream: bool = False,
        truth: str = "",
        detector_transpose: bool = False,
    ):
        self.structure = structure
        self.zone_axis = tuple(zone_axis)
        self.in_plane_rotation_deg = float(in_plane_rotation_deg)
        self.parametrization = parametrization
        self.noise = bool(noise)
        self.save_volumes = bool(save_volumes)
        self.observation = observation
        self.calibration = {
            "beam_energy_kv": beam_energy_kv,
            "convergence_semiangle_mrad": convergence_semiangle_mrad,
            "reciprocal_pixel_size": reciprocal_pixel_size,
            "scan_step_angstrom": scan_step_angstrom,
            "scan_rotation_deg": scan_rotation_deg,
        }
        self.detector_binning = float(detector_binning)
        self.object_padding_px = int(object_padding_px)
        self.stream = bool(stream)
        self.truth = truth
        self.detector_transpose = bool(detector_transpose)

    def run(self, ctx):
        if self.observation:
            return self._run_measured(ctx)
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

        result = _reconstruct(ctx, model, refiner, observation)
        reconstruction = result.parameters["object"]

        metrics = volume_metrics(reconstruction, truth)
        band_truth = _bandlimited(truth, model.sampling_angstrom)
        band_recon = _bandlimited(reconstruction, model.sampling_angstrom)
        for key, value in volume_metrics(band_recon, band_truth).items():
            metrics[f"bandlimited_{key}"] = value
        ceiling = volume_metrics(band_truth, truth)["depth_sum_ssim"]
        metrics["bandlimited_truth_depth_sum_ssim"] = ceiling
        losses = result.history["loss"]
        metrics.update(_loss_metrics(result))
        metrics.update(ctx.score(reconstruction, truth, figures=False))

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

    # ------------------------------------------------------------------ measured data
    def _measured_model(self, ctx):
        """Read the data and build the forward model on its geometry; every check happens here,
        before the run writes anything."""
        import dataclasses

        import attrs
        from emverse.errors import EmverseError
        from emverse.readers import read

        from emverse_multislice.measured import PatternStack, model_geometry
        from emverse_multislice.ptychography import MultislicePtychography

        spec = ctx.spec("forward_model")
        if spec.type != "multislice.ptychography":
            raise EmverseError(f"options.observation needs [forward_model] type = \"multislice.ptychography\", "
                               f"got {spec.type!r}")
        params = spec.params
        path = ctx.resolve_path(self.observation)
        overrides = {k: v for k, v in self.calibration.items() if v is not None}
        measurement = read(path, ndim=4, overrides=overrides, lazy=True)
        cal = measurement.calibration
        fallback = {"beam_energy_kv": params.voltage_kv, "convergence_semiangle_mrad": params.semiangle_mrad,
                    "scan_step_angstrom": params.scan_step_angstrom}
        missing = {k: v for k, v in fallback.items() if getattr(cal, k) is None}
        cal = dataclasses.replace(cal, **missing, sources={**cal.sources, **dict.fromkeys(missing, "forward_model")})
        measurement.calibration = cal
        measurement.require("reciprocal_pixel_size")
        window = params.probe_gpts
        if window is None:
            raise EmverseError("options.observation needs forward_model.probe_gpts: the detector window "
                               "(model pixels) the patterns are cropped / resampled to, e.g. [64, 64]")
        geometry = model_geometry(measurement.data.shape, cal, probe_gpts=window,
                                  detector_binning=self.detector_binning, depth=params.object_shape[0],
                                  padding_px=self.object_padding_px, scan_affine=params.scan_affine)
        model_pixel = geometry.pop("model_pixel")
        stack = PatternStack(measurement.data, cal.reciprocal_pixel_size, model_pixel, window,
                             source=str(path), dtype=ctx.dtype, device=ctx.device,
                             transpose=self.detector_transpose, keep=not self.stream)
        step = geometry["scan_step_angstrom"]
        geometry["dose_e_per_angstrom2"] = stack.scale / step**2  # counts per position ÷ its area
        model = MultislicePtychography.from_params(attrs.evolve(params, **geometry), ctx).to(ctx.device)
        truth = None
        if self.truth:
            import numpy as np

            truth_path = ctx.resolve_path(self.truth)
            truth = torch.as_tensor(np.load(truth_path, allow_pickle=False), dtype=ctx.dtype)
            if tuple(truth.shape) != model.object_shape:
                raise EmverseError(f"options.truth {truth_path}: shape {tuple(truth.shape)} but the model's "
                                   f"object is {model.object_shape} (depth, H, W) for these data; render the "
                                   "truth on that grid")
            truth = truth[None].to(ctx.device)
        return model, measurement, stack, geometry, truth

    def _run_measured(self, ctx):
        from emverse_multislice.figures import probe_figure
        from emverse_multislice.probe import orthogonal_modes

        model, measurement, stack, geometry, truth = self._measured_model(ctx)
        refiner = ctx.build("refiner")
        observation = stack if self.stream else stack.to_tensor()
        cal = measurement.calibration
        ctx.add_text(
            "observation",
            f"{measurement.source}: {tuple(measurement.data.shape)} (scan_y, scan_x, k_y, k_x), calibration "
            f"{cal.report()}; model: {geometry['object_shape']} voxels at {geometry['sampling_angstrom']:.5g} Å, "
            f"detector {geometry['probe_gpts']} px (binning {self.detector_binning:g}), scan affine "
            f"{[list(r) for r in geometry['scan_affine']]}, detector axes "
            f"{'transposed' if self.detector_transpose else 'as stored'}, mean counts per pattern {stack.scale:.5g} "
            f"({geometry['dose_e_per_angstrom2']:.5g} e/Å²){', streamed from disk' if self.stream else ''}",
        )
        nominal = model.positions_angstrom.detach().clone()
        result = _reconstruct(ctx, model, refiner, observation)
        reconstruction = result.parameters["object"]
        losses = result.history["loss"]
        metrics = {**_loss_metrics(result), "mean_counts_per_pattern": stack.scale}
        affine = model.scan_affine.detach().cpu()
        for i in range(2):
            for j in range(2):
                metrics[f"scan_affine_{i}{j}"] = float(affine[i, j])
        moved = (model.positions_angstrom.detach() - nominal).norm(dim=1)
        metrics["position_change_rms_angstrom"] = float(moved.pow(2).mean().sqrt())
        metrics["position_offsets_rms_angstrom"] = float(model.position_offsets.detach().norm(dim=1).pow(2).mean().sqrt())
        modes, fractions = orthogonal_modes(model.probe_modes_fourier.detach().cpu())
        for m, fraction in enumerate(fractions.tolist()):
            metrics[f"probe_mode_{m}_power"] = fraction
        if truth is not None:
            metrics.update(scanned_area_metrics(reconstruction, truth, model))
            metrics.update(ctx.score(reconstruction, truth, figures=False))
        ctx.save_figure("loss", loss_figure(losses))
        ctx.save_figure("volumes", depth_sum_figure(reconstruction[0], truth[0] if truth is not None else None))
        ctx.save_figure("probe", probe_figure(modes, fractions, model.positions_angstrom.detach().cpu(), nominal.cpu()))
        ctx.add_table("reconstruction", ["measure", "value"], [[k, f"{v:.5g}"] for k, v in metrics.items()])
        if self.save_volumes:
            tensors = {"reconstruction": reconstruction, "probe_modes": torch.view_as_real(modes).contiguous(),
                       "positions_angstrom": model.positions_angstrom.detach(), "scan_affine": affine,
                       "loss": torch.tensor(losses, dtype=torch.float64)}
            if "amplitude" in result.parameters:
                tensors["amplitude"] = result.parameters["amplitude"]
            ctx.save_checkpoint("reconstruction", tensors)
        return RunResult(metrics)


def scanned_area_metrics(reconstruction: torch.Tensor, truth: torch.Tensor, model) -> dict[str, float]:
    """Depth-sum SSIM / PSNR of (B, depth, H, W) volumes inside the scanned area (the pixels
    between the extreme scan positions: outside it the data hold no information), as they are
    (``scanned_*``) and both low-passed to the model's antialias band (``scanned_bandlimited_*``)."""
    pixels = model.positions_angstrom.detach() / model.sampling_angstrom
    low = torch.floor(pixels.min(dim=0).values).long().clamp_min(0)
    high = torch.ceil(pixels.max(dim=0).values).long() + 1
    crop = (slice(None), slice(None), slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1])))
    out = {f"scanned_{k}": v for k, v in volume_metrics(reconstruction[crop], truth[crop]).items()}
    band = _bandlimited(truth, model.sampling_angstrom)[crop]
    recon = _bandlimited(reconstruction, model.sampling_angstrom)[crop]
    out.update({f"scanned_bandlimited_{k}": v for k, v in volume_metrics(recon, band).items()})
    return out
