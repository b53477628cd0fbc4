"""Component records of emverse-mep (no heavy imports)."""

from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component(
        kind="dataset", name="mep.rendered", impl="emverse_mep.dataset:RenderedVolumes",
        params="emverse_mep.params:DatasetParams",
        summary="Random or CIF crystals rendered into (depth, H, W) phase volumes: train/val/test Zarr stores "
                "written by the simulate task (Dask, resumable)",
    )
    yield Component(
        kind="prior", name="mep.unet3d", impl="emverse_mep.unet3d:UNet3DPrior",
        params="emverse_mep.params:UNet3DParams",
        summary="3D UNet diffusion prior over phase volumes (anisotropic resampling, v-prediction in logSNR)",
    )
    yield Component(
        kind="objective", name="mep.v_prediction", impl="emverse_mep.train:VObjective",
        params="emverse_mep.params:VPredictionParams",
        summary="v-prediction loss in logSNR for mep.unet3d: Gaussian weighting, adaptive λ sampler, flips",
    )
    yield Component(
        kind="dataset", name="mep.volumes", impl="emverse_mep.train:Volumes",
        params="emverse_mep.params:VolumesParams",
        summary="Phase volumes of a mep.rendered store as training data (with their phase_scale)",
    )
    yield Component(
        kind="task", name="mep.reconstruct", impl="emverse_mep.reconstruct:ReconstructTask",
        params="emverse_mep.params:ReconstructParams",
        summary="DPS-guided sampling of volumes from diffraction stacks, with per-voxel uncertainty maps",
    )
    yield Component(
        kind="task", name="mep.evaluate", impl="emverse_mep.evaluate:EvaluateTask",
        params="emverse_mep.params:EvaluateParams",
        summary="Guided prior vs Adam / L-BFGS: PSNR, SSIM (volume, depth sum), bootstrap, schedules, steps",
    )
