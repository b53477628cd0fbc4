"""Parameters of the MEP-Diffusion components (attrs only: no torch, no numpy).

Units are in the field names: Å (``_angstrom``), kV, mrad. Volumes are
(depth, H, W) voxels; the default sampling is the paper's (1.6, 0.2, 0.2) Å.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from emverse.params import ComponentSpec, in_range, nested, non_negative, path_field, positive


def _to_tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _int_tuple(length: int):
    def check(instance, attribute, value):
        if (
            not isinstance(value, tuple)
            or len(value) != length
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise ValueError(f"{attribute.name} must be {length} positive integers, got {value!r}")

    return check


def _float_tuple(length: int):
    def check(instance, attribute, value):
        if not isinstance(value, tuple) or len(value) != length or not all(
            isinstance(v, (int, float)) and v > 0 for v in value
        ):
            raise ValueError(f"{attribute.name} must be {length} positive numbers, got {value!r}")

    return check


def _str_tuple(instance, attribute, value):
    if not isinstance(value, tuple) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{attribute.name} must be a non-empty list of chemical symbols, got {value!r}")


def _axes(instance, attribute, value):
    if not isinstance(value, tuple) or not value or not set(value) <= {0, 1, 2}:
        raise ValueError(f"{attribute.name} must list major axes among 0 (a), 1 (b), 2 (c), got {value!r}")


@attrs.frozen
class DatasetParams:
    """``[dataset] type = "mep.rendered"`` (written by the core ``simulate`` task): render
    crystals into phase volumes, three Zarr stores under ``output`` (relative to the recipe).

    * ``n_train_materials`` / ``n_val_materials`` / ``n_test_materials``:
      crystals drawn (or read) for each split; each gives one volume per entry
      of ``axes`` (the paper renders along a, b and c). The validation split
      (rendered like the test split) is where guidance settings are tuned, so
      the test split stays untouched;
    * ``cif_directory``: a folder of CIFs (empty = the built-in generator of
      random symmetric crystals with ``elements``);
    * ``train_shape`` (crop, e.g. the paper's (8, 64, 64)) and
      ``test_shape`` (the evaluation volume, paper (16, 100, 100)) in voxels;
    * ``sampling_angstrom`` (depth, H, W) voxel size (Å);
    * ``voltage_kv`` sets σ in φ = σ·V (rad);
    * ``vacancy_fraction`` of atoms removed at random (paper: 1 %);
    * ``rotate`` random in-plane rotation of the training crops;
    * ``phase_scale``: the constant the phase (rad) is multiplied by so the
      data std ≈ 1; 0 = estimate it from ``scale_pilot`` training volumes;
    * ``chunk_size`` volumes per Zarr chunk / Dask task;
      ``scheduler`` a Dask scheduler address (empty = embedded cluster),
      ``n_workers`` for the embedded cluster.
    """

    n_train_materials: int = attrs.field(default=64, validator=positive)
    n_val_materials: int = attrs.field(default=0, validator=non_negative)
    n_test_materials: int = attrs.field(default=8, validator=non_negative)
    cif_directory: str = path_field("directory", default="")
    elements: tuple[str, ...] = attrs.field(
        default=(
            "O", "C", "N", "F", "Si", "Al", "Mg", "Ti", "V", "Fe", "Co", "Ni", "Cu", "Zn",
            "Ga", "As", "S", "Se", "Sr", "Ba", "La", "Mo", "W", "Pb", "Bi", "Nb", "Zr", "Ca",
        ),
        converter=_to_tuple,
        validator=_str_tuple,
    )
    axes: tuple[int, ...] = attrs.field(default=(0, 1, 2), converter=_to_tuple, validator=_axes)
    train_shape: tuple[int, int, int] = attrs.field(
        default=(8, 64, 64), converter=_to_tuple, validator=_int_tuple(3)
    )
    test_shape: tuple[int, int, int] = attrs.field(
        default=(16, 100, 100), converter=_to_tuple, validator=_int_tuple(3)
    )
    sampling_angstrom: tuple[float, float, float] = attrs.field(
        default=(1.6, 0.2, 0.2), converter=_to_tuple, validator=_float_tuple(3)
    )
    voltage_kv: float = attrs.field(default=300.0, validator=positive)
    vacancy_fraction: float = attrs.field(default=0.01, validator=in_range(0.0, 0.5))
    rotate: bool = True
    min_distance_angstrom: float = attrs.field(default=1.7, validator=positive)
    max_lattice_angstrom: float = attrs.field(default=20.0, validator=positive)
    phase_scale: float = attrs.field(default=0.0, validator=non_negative)
    scale_pilot: int = attrs.field(default=16, validator=positive)
    chunk_size: int = attrs.field(default=16, validator=positive)
    scheduler: str = ""
    n_workers: int = attrs.field(default=1, validator=positive)
    output: str = "mep-data"


@attrs.frozen
class UNet3DParams:
    """The ``mep.unet3d`` prior: a 3D UNet with anisotropic resampling.

    * ``event_shape`` (depth, H, W) voxels of one volume;
    * ``sampling_angstrom`` voxel size; the number of lateral-only (2D)
      down-sampling stages is the number of ×2 steps that make the lateral
      sampling reach the depth sampling (0.2 → 1.6 Å: three stages);
    * ``channels``: width of each stage, lateral stages first then the 3D
      stages; ``blocks_per_stage`` residual blocks per stage;
      ``attention_from_stage`` index of the first stage with self-attention
      (the deep ones);
    * ``checkpoint``: a safetensors file written by ``mep.train`` (empty =
      untrained weights);
    * ``logsnr_min`` / ``logsnr_max`` the range of λ the network is trained on.
    """

    network: ClassVar[str] = "phase_volume"

    event_shape: tuple[int, int, int] = attrs.field(
        default=(8, 64, 64), converter=_to_tuple, validator=_int_tuple(3)
    )
    sampling_angstrom: tuple[float, float, float] = attrs.field(
        default=(1.6, 0.2, 0.2), converter=_to_tuple, validator=_float_tuple(3)
    )
    channels: tuple[int, ...] = attrs.field(
        default=(16, 32, 64, 128, 256), converter=_to_tuple, validator=attrs.validators.min_len(1)
    )
    blocks_per_stage: int = attrs.field(default=2, validator=positive)
    attention_from_stage: int = attrs.field(default=3, validator=non_negative)
    attention_heads: int = attrs.field(default=4, validator=positive)
    groups: int = attrs.field(default=8, validator=positive)
    checkpoint: str = path_field("checkpoint", default="")
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0


@attrs.frozen
class VPredictionParams:
    """``[objective] type = "mep.v_prediction"`` (v-prediction in continuous logSNR).

    * loss weighting: Gaussian in λ, ``weight_mean`` / ``weight_std``
      (the paper concentrates it at high noise, λ < 0);
    * ``adaptive_bins`` bins of the adaptive λ sampler over
      [logsnr_min, logsnr_max] (Kingma & Gao 2023); 0 = uniform λ;
    * ``flip_augment`` random flips/90° rotations in-plane.
    """

    trains: ClassVar[str] = "phase_volume"

    weight_mean: float = -2.0
    weight_std: float = attrs.field(default=3.0, validator=positive)
    adaptive_bins: int = attrs.field(default=100, validator=non_negative)
    flip_augment: bool = True


@attrs.frozen
class VolumesParams:
    """``[dataset] type = "mep.volumes"``: the training volumes of a ``mep.rendered`` store
    (``path`` relative to the recipe, e.g. ``"../runs/mep-cpu-data/train.zarr"``; the first
    ``count`` volumes, 0 = all)."""

    path: str = path_field("zarr", default="mep-data/train.zarr")
    count: int = attrs.field(default=0, validator=non_negative)


@attrs.frozen
class ReconstructParams:
    """Options of ``mep.reconstruct``: guided sampling of volumes from diffraction stacks.

    * ``data``: Zarr store of test volumes (``mep.rendered``'s ``test.zarr``);
      ``first`` / ``count`` pick the volumes; their diffraction stacks are
      simulated with the recipe's ``[forward_model]`` (with its Poisson noise);
    * ``samples`` draws per measurement (≥ 2 gives a per-voxel uncertainty map);
    * ``batch``: measurements sampled together (0 = all at once). Each batch is kept in the run
      directory as it finishes, so ``emverse run --resume`` continues from the first batch that
      did not; batches of a smaller ``batch`` draw from their own seeded streams, so a change of
      ``batch`` changes the draws (not their distribution).

    The sampling itself is the recipe's ``[sampler]`` (e.g. emverse-diffusion's
    ``diffusion.dpmpp_2m_sde`` on a polyexponential σ-ladder) guided by its
    ``[guidance]`` (``diffusion.dps`` with ``likelihood = "amplitude"``,
    ``normalize = "rms"`` and a ``diffusion.shifted_sigmoid`` weight schedule).
    """

    requires: ClassVar[tuple[str, ...]] = ("prior", "forward_model", "sampler", "guidance")

    data: str = path_field("zarr", default="mep-data/test.zarr")
    first: int = attrs.field(default=0, validator=non_negative)
    count: int = attrs.field(default=4, validator=positive)
    samples: int = attrs.field(default=4, validator=positive)
    batch: int = attrs.field(default=0, validator=non_negative)


@attrs.frozen
class EvaluateParams:
    """Options of ``mep.evaluate``: guided sampling vs Adam and L-BFGS on one test set.

    * ``data`` / ``first`` / ``count``: the test volumes; diffraction stacks
      are simulated with the recipe's ``[forward_model]``;
    * guided sampling as in ``mep.reconstruct`` (the recipe's ``[sampler]`` and
      ``[guidance]``); ``samples`` draws per measurement (each is scored,
      their spread is the uncertainty map);
    * ``ablation_schedules``: also sample with the other two guidance weight
      schedules (shifted sigmoid, alpha, constant) at the recipe's peak
      weight (the paper's Table 2);
    * ``adam`` / ``lbfgs``: the gradient-reconstruction baselines (refiners
      of emverse-multislice) run on the same diffraction stacks;
    * ``steps_sweep``: extra sampler step counts for the quality-vs-steps /
      wall-time curve (empty = none);
    * ``bootstrap`` paired-bootstrap resamples.

    Each method's result (and each sweep point) is kept in the run directory as it finishes;
    ``emverse run --resume`` reads those back and computes only the rest.
    """

    requires: ClassVar[tuple[str, ...]] = ("prior", "forward_model", "sampler", "guidance")

    data: str = path_field("zarr", default="mep-data/test.zarr")
    first: int = attrs.field(default=0, validator=non_negative)
    count: int = attrs.field(default=8, validator=positive)
    samples: int = attrs.field(default=2, validator=positive)
    ablation_schedules: bool = True
    adam: ComponentSpec = nested("refiner", "multislice.adam")
    lbfgs: ComponentSpec = nested("refiner", "multislice.lbfgs")
    steps_sweep: tuple[int, ...] = attrs.field(default=(), converter=_to_tuple)
    bootstrap: int = attrs.field(default=2000, validator=positive)
