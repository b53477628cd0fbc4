"""Components of emverse-multislice (imports nothing heavy)."""

from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    yield Component(
        kind="forward_model",
        name="multislice.ptychography",
        impl="emverse_multislice.ptychography:MultislicePtychography",
        params="emverse_multislice.params:PtychographyParams",
        summary="Multislice 4D-STEM: phase volume (B, D, H, W) -> diffraction stack (B, n_scan, kH, kW)",
    )
    yield Component(
        kind="refiner",
        name="multislice.adam",
        impl="emverse_multislice.refine:AdamReconstruction",
        params="emverse_multislice.params:AdamParams",
        summary="Reconstruct the phase volume from a diffraction stack with Adam (mini-batches, L1)",
    )
    yield Component(
        kind="refiner",
        name="multislice.lbfgs",
        impl="emverse_multislice.refine:LbfgsReconstruction",
        params="emverse_multislice.params:LbfgsParams",
        summary="Reconstruct the phase volume from a diffraction stack with L-BFGS (strong Wolfe)",
    )
    yield Component(
        kind="metric",
        name="multislice.volume_metrics",
        impl="emverse_multislice.metrics:VolumeMetrics",
        summary="Depth-summed SSIM/PSNR and slice SSIM of instance-normalised phase volumes",
    )
    yield Component(
        kind="task",
        name="multislice.reconstruct",
        impl="emverse_multislice.task:Reconstruct",
        params="emverse_multislice.params:ReconstructParams",
        summary="Render a crystal, simulate 4D-STEM data, reconstruct it, report depth-summed SSIM/PSNR",
    )
