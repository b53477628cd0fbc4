from emverse.components import Component
from emverse.hookspecs import hookimpl


@hookimpl
def emverse_components():
    p = "emverse_cbldm.params"
    yield Component(
        kind="dataset",
        name="cbldm.dataset",
        impl="emverse_cbldm.dataset:CbldmDataset",
        params=f"{p}:DatasetParams",
        summary="Monometallic nanoparticles (7 types) -> max-normalised G(r) + weight-matrix blocks, Zarr",
    )
    yield Component(
        kind="task",
        name="cbldm.train",
        impl="emverse_cbldm.train:TrainTask",
        params=f"{p}:TrainParams",
        summary="Train PDF-VAE, matrix-VAE, latent UNet and MLP/CNN baselines; Rw evaluation tables",
    )
    yield Component(
        kind="task",
        name="cbldm.infer",
        impl="emverse_cbldm.infer:InferTask",
        params=f"{p}:InferParams",
        summary="Candidate nanoparticle structures and PDF fits for measured .gr files",
    )
    yield Component(
        kind="refiner",
        name="cbldm.distance_geometry",
        impl="emverse_cbldm.recovery:DistanceGeometry",
        params=f"{p}:DistanceGeometryParams",
        summary="Positions from a weight matrix: Laplacian eigenmap start + trust-constr (+ PDF polish)",
    )
    yield Component(
        kind="sampler",
        name="cbldm.accelerated",
        impl="emverse_cbldm.sampler:AcceleratedSampler",
        params=f"{p}:AcceleratedSamplerParams",
        summary="CbLDM accelerated latent sampling (denoise to t1, conditional-prior jump to t2)",
    )
    yield Component(
        kind="prior",
        name="cbldm.ldm",
        impl="emverse_cbldm.prior:CbLDMPrior",
        params=f"{p}:LdmPriorParams",
        summary="Trained CbLDM latent diffusion prior (condition: max-normalised G(r))",
    )
