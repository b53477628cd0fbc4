"""Parameters of the emverse-cbldm components (attrs only; never imports torch).

Units: lengths in Å, t of the weight matrix W_ij = exp(−d_ij²/t) in Å², diffusion
times in [0, 1] (0 = clean, 1 = noise; the emverse-diffusion convention).
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from emverse.params import (
    in_range,
    non_negative,
    one_of,
    path_field,
    positive,
)

ALL_TYPES = ("SC", "FCC", "BCC", "HCP", "Ico", "Dec", "Oct")


def _types(instance, attribute, value):
    bad = [v for v in value if v not in ALL_TYPES]
    if bad or not value:
        raise ValueError(
            f"{attribute.name} {list(value)!r} holds unknown types {bad}; use some of {', '.join(ALL_TYPES)}"
        )


def _even_pad(instance, attribute, value):
    if value not in (64, 128, 256):
        raise ValueError(
            f"{attribute.name} must be 64, 128 or 256 (the padded weight-matrix side), got {value!r}"
        )


#: decoders of the matrix VAE and the baselines (models.MATRIX_DECODERS; params.py stays torch-free)
MATRIX_DECODERS = ("conv", "coordinates")


@attrs.frozen
class DatasetParams:
    """``cbldm.dataset``: simulated monometallic nanoparticles in a Zarr store.

    ``store``: Zarr path ("" = ``dataset.zarr`` in the run directory; relative paths
    are relative to the recipe; ``shared:`` allowed). Made with Dask (``scheduler``
    address or an embedded cluster of ``n_workers``) and resumed when interrupted.
    ``n_structures`` clusters are drawn without replacement (seeded) from the
    catalogue of ``structure_types`` × ``elements`` ("" entries = all 28 metals) with
    ``min_atoms`` ≤ N ≤ ``max_atoms``; ``matrix_size`` is the padded side of W (256 in
    the paper; 128 halves the cost on a CPU). ``val_fraction`` of them (fixed seed)
    form the validation split.
    """

    store: str = ""
    n_structures: int = attrs.field(default=2000, validator=positive)
    structure_types: tuple[str, ...] = attrs.field(default=ALL_TYPES, validator=_types)
    elements: tuple[str, ...] = ()
    min_atoms: int = attrs.field(default=5, validator=in_range(2, 256))
    max_atoms: int = attrs.field(default=256, validator=in_range(2, 256))
    matrix_size: int = attrs.field(default=256, validator=_even_pad)
    t_angstrom2: float = attrs.field(default=260.0, validator=positive)
    val_fraction: float = attrs.field(default=0.05, validator=in_range(0.0, 0.5))
    chunk_size: int = attrs.field(default=200, validator=positive)
    scheduler: str = ""
    n_workers: int = attrs.field(default=1, validator=positive)


@attrs.frozen
class DistanceGeometryParams:
    """``cbldm.distance_geometry``: positions (Å) from a weight matrix (aDGP).

    ``cutoff_angstrom``: a row is an atom when its largest W is ≥ exp(−cutoff²/t).
    ``init``: "laplacian" (generalised eigenvectors, the paper), "mds" (classical MDS
    on √(−t ln W)) or "best" (both, keep the lower loss). ``maxiter``: trust-constr
    iterations. ``polish_steps`` > 0 polishes against the measured PDF with Adam
    (``polish_lr`` Å per step). ``min_distance_angstrom``: hard-core distance below which
    pairs are penalised (0 = off).
    """

    t_angstrom2: float = attrs.field(default=260.0, validator=positive)
    cutoff_angstrom: float = attrs.field(default=8.0, validator=positive)
    init: str = attrs.field(
        default="best", validator=attrs.validators.in_(("laplacian", "mds", "best"))
    )
    maxiter: int = attrs.field(default=200, validator=positive)
    polish_steps: int = attrs.field(default=0, validator=non_negative)
    polish_lr: float = attrs.field(default=0.005, validator=positive)
    min_distance_angstrom: float = attrs.field(default=2.0, validator=non_negative)


@attrs.frozen
class AcceleratedSamplerParams:
    """``cbldm.accelerated``: CbLDM's accelerated latent sampling (DDIM steps, η = ``eta``).

    The grid has ``steps`` uniform steps over t ∈ [0, 1]. From noise at t = 1 it
    denoises to ``t1``, draws z_c from the conditional prior p(z | PDF), re-noises it to
    ``t2`` ≤ ``t1`` with the noise estimate implied by x_{t1}, then denoises to 0.
    ``t1 = t2 = 1`` is plain latent diffusion. Network evaluations:
    round((1 − t1)·steps) + round(t2·steps).
    """

    steps: int = attrs.field(default=50, validator=positive)
    t1: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))
    t2: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))
    eta: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))

    def __attrs_post_init__(self):
        if self.t2 > self.t1:
            raise ValueError(
                f"t2 must be ≤ t1 (re-noise to an earlier time), got t1={self.t1!r}, t2={self.t2!r}"
            )


@attrs.frozen
class ModelParams:
    """Network sizes of the three CbLDM stages and of the two baselines.

    PDF-VAE: 1D convolutions, ``pdf_channels`` wide, latent (2, 125) (its mean is the
    250-d condition). Matrix-VAE: 2D convolutions on the four W blocks, ``matrix_channels``
    wide, latent 1 × ``latent_size`` × ``latent_size``. Latent UNet: ``unet_channels``
    wide, conditioned on the PDF embedding (FiLM + cross-attention). Baselines (MLP,
    1D-CNN) end in a decoder like the matrix-VAE's and regress W directly.
    ``matrix_decoder``: "conv" (upsampling convolutions, sigmoid; the paper's) or
    "coordinates" (an MLP to 2b positions in Å + occupancies, W built from them, so every
    decoded matrix is realisable); used by the matrix VAE and the baselines.
    """

    pdf_channels: int = attrs.field(default=16, validator=positive)
    matrix_channels: int = attrs.field(default=16, validator=positive)
    matrix_decoder: str = attrs.field(default="conv", validator=one_of(*MATRIX_DECODERS))
    unet_channels: int = attrs.field(default=32, validator=positive)
    latent_size: int = attrs.field(default=16, validator=positive)
    schedule_offset: float = attrs.field(default=5e-4, validator=positive)


@attrs.frozen
class TrainParams(ModelParams):
    """Task ``cbldm.train``: train the three stages and the baselines, then evaluate.

    Network sizes (``*_channels``, ``latent_size``, ``schedule_offset``) and ``matrix_decoder``:
    the fields of :class:`ModelParams`, which this class extends. ``epochs_*``: epochs of each
    stage (0 skips it). ``kl_weight`` is the final
    weight of the KL terms (warmed up linearly over the first half of the epochs).
    ``baselines``: any of "mlp", "cnn". Evaluation on the validation split
    (``eval_structures`` of it, 0 = none) draws ``candidates`` structures per PDF with the
    plain sampler (``sampling_steps`` DDIM steps) and the accelerated one
    (``accelerated_t1`` / ``accelerated_t2``; the defaults 0.9 / 0.8 are the paper's
    T₁ = 900, T₂ = 800 of 1000), both from the same starting noise. ``recovery_maxiter``
    bounds the distance-geometry solve of each candidate; ``eval_polish_steps`` > 0 then polishes
    every candidate of every method against the input PDF (Adam, step ``eval_polish_lr`` Å).
    ``eval_workers`` processes share the candidates (the numbers do not depend on it).
    ``checkpoint_name``: file name of the weights in the run directory. ``checkpoint_every``:
    optimiser steps between resume checkpoints of each stage (``cbldm-<stage>-resume.safetensors``;
    ``emverse run --resume`` continues from them).
    """

    epochs_pdf_vae: int = attrs.field(default=20, validator=non_negative)
    epochs_matrix_vae: int = attrs.field(default=20, validator=non_negative)
    epochs_ldm: int = attrs.field(default=40, validator=non_negative)
    epochs_baselines: int = attrs.field(default=20, validator=non_negative)
    batch_size: int = attrs.field(default=32, validator=positive)
    lr: float = attrs.field(default=1e-3, validator=positive)
    kl_weight: float = attrs.field(default=1e-3, validator=non_negative)
    baselines: tuple[str, ...] = ("mlp", "cnn")
    eval_structures: int = attrs.field(default=40, validator=non_negative)
    candidates: int = attrs.field(default=3, validator=positive)
    sampling_steps: int = attrs.field(default=50, validator=positive)
    accelerated_t1: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))
    accelerated_t2: float = attrs.field(default=0.8, validator=in_range(0.0, 1.0))
    recovery_maxiter: int = attrs.field(default=60, validator=positive)
    eval_polish_steps: int = attrs.field(default=0, validator=non_negative)
    eval_polish_lr: float = attrs.field(default=0.01, validator=positive)
    eval_workers: int = attrs.field(default=1, validator=positive)
    checkpoint_name: str = "cbldm"
    checkpoint_every: int = attrs.field(default=500, validator=non_negative)
    init_checkpoint: str = path_field("checkpoint", default="")
    threads: int = attrs.field(default=0, validator=non_negative)


@attrs.frozen
class InferParams:
    """Task ``cbldm.infer``: candidate structures for measured PDFs with a trained model.

    Tables: ``[prior]`` (``cbldm.ldm``; its ``checkpoint`` "" = the shipped small model),
    ``[sampler]`` (e.g. ``cbldm.accelerated``), ``[refiner]`` (``cbldm.distance_geometry``) and
    ``[forward_model]`` (``pdf.debye`` with the model's PDF settings, r = 0…29.99 Å step 0.01).
    ``observations``: .gr files (``shared:`` paths allowed); each is resampled onto that grid
    (zero beyond its last point) and divided by its maximum. ``element``: the metal written to
    the .xyz files when the forward model has several. ``candidates`` per PDF;
    ``fit_rmin``/``fit_rmax`` (Å): r range of the reported Rwp.
    """

    requires: ClassVar[tuple[str, ...]] = ("prior", "sampler", "refiner", "forward_model")
    observations: tuple[str, ...] = path_field("file", reader="emverse_pdf.gr_io:read_gr", default=(
        "shared:pdf_nanoparticles/deepstruc/experimental/Au144PET_100K-00000.gr",
    ))
    element: str = "Au"
    candidates: int = attrs.field(default=5, validator=positive)
    fit_rmin: float = attrs.field(default=1.5, validator=non_negative)
    fit_rmax: float = attrs.field(default=29.99, validator=positive)
    write_xyz: bool = True


@attrs.frozen
class LdmPriorParams:
    """Prior ``cbldm.ldm``: a trained CbLDM loaded from ``checkpoint`` ("" = the shipped small model)."""

    checkpoint: str = path_field("checkpoint", default="")
