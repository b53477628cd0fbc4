"""Parameters of the diffusion components (attrs only, no torch: recipes validate without it).

Time convention everywhere: t ∈ [0, 1], t = 0 clean, t = 1 noise; logSNR λ = log(α²/σ²).
"""

from __future__ import annotations

from typing import ClassVar

import attrs
from emverse.params import (
    ComponentSpec,
    in_range,
    nested,
    non_negative,
    one_of,
    optional_positive,
    path_field,
    positive,
)

SPACINGS = ("uniform", "logsnr", "karras", "polyexponential")
PREDICTIONS = ("eps", "x0", "v")


def _positive_int(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------- noise schedules
@attrs.frozen
class LinearBetaParams:
    """DDPM linear-β schedule: β from ``beta_start`` (β₁) to ``beta_end`` (β_T) over ``steps`` (T)."""

    beta_start: float = attrs.field(default=1e-4, validator=in_range(0.0, 1.0, inclusive=False))
    beta_end: float = attrs.field(default=0.02, validator=in_range(0.0, 1.0, inclusive=False))
    steps: int = attrs.field(default=1000, validator=_positive_int)
    spacing: str = attrs.field(default="linear", validator=one_of("linear", "sqrt"))


@attrs.frozen
class CosineParams:
    """Cosine schedule with offset s; λ clamped to [logsnr_min, logsnr_max]."""

    offset: float = attrs.field(default=0.008, validator=non_negative)
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0


@attrs.frozen
class LogSNRParams:
    """Schedule given in logSNR: α² = sigmoid(λ); ``shape`` linear or (shifted) cosine in t."""

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shape: str = attrs.field(default="cosine", validator=one_of("linear", "cosine"))
    shift: float = 0.0


# ----------------------------------------------------------------------------- guidance weights
@attrs.frozen
class ConstantWeightParams:
    scale: float = 1.0


@attrs.frozen
class AlphaWeightParams:
    """w = scale · α_t^power."""

    scale: float = 1.0
    power: float = 1.0


@attrs.frozen
class ShiftedSigmoidParams:
    """w = scale · sigmoid(−sharpness (λ − center)); strong at high noise, → 0 at the end."""

    scale: float = 1.0
    center: float = 0.0
    sharpness: float = attrs.field(default=1.0, validator=positive)


# ----------------------------------------------------------------------------- samplers
def _spacing_field(default: str):
    return attrs.field(default=default, validator=one_of(*SPACINGS))


@attrs.frozen
class DDPMParams:
    """DDPM ancestral sampling; ``variance`` posterior (β̃) or beta."""

    steps: int = attrs.field(default=1000, validator=_positive_int)
    variance: str = attrs.field(default="posterior", validator=one_of("posterior", "beta"))
    spacing: str = _spacing_field("uniform")
    rho: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_min: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_max: float | None = attrs.field(default=None, validator=optional_positive)


@attrs.frozen
class DDIMParams:
    """DDIM; ``eta`` 0 deterministic, 1 DDPM-like."""

    steps: int = attrs.field(default=50, validator=_positive_int)
    eta: float = attrs.field(default=0.0, validator=non_negative)
    spacing: str = _spacing_field("uniform")
    rho: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_min: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_max: float | None = attrs.field(default=None, validator=optional_positive)


@attrs.frozen
class DPMSolverParams:
    """DPM-Solver++(2M) (ODE)."""

    steps: int = attrs.field(default=20, validator=_positive_int)
    spacing: str = _spacing_field("logsnr")
    rho: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_min: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_max: float | None = attrs.field(default=None, validator=optional_positive)


@attrs.frozen
class DPMSolverSDEParams:
    """DPM-Solver++(2M) SDE with stochasticity ``eta``."""

    steps: int = attrs.field(default=20, validator=_positive_int)
    eta: float = attrs.field(default=1.0, validator=non_negative)
    spacing: str = _spacing_field("logsnr")
    rho: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_min: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_max: float | None = attrs.field(default=None, validator=optional_positive)


@attrs.frozen
class EulerParams:
    """Euler (Karras Alg. 2) with optional churn; churn = 0 is deterministic."""

    steps: int = attrs.field(default=50, validator=_positive_int)
    churn: float = attrs.field(default=0.0, validator=non_negative)
    churn_min: float = attrs.field(default=0.0, validator=non_negative)
    churn_max: float = float("inf")
    noise_scale: float = attrs.field(default=1.0, validator=non_negative)
    spacing: str = _spacing_field("uniform")
    rho: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_min: float | None = attrs.field(default=None, validator=optional_positive)
    sigma_max: float | None = attrs.field(default=None, validator=optional_positive)


# ----------------------------------------------------------------------------- guidance
@attrs.frozen
class DPSParams:
    """DPS: x̂₀ ← x̂₀ − w(t)·c(t)·∇ℓ; ``schedule`` is the weight schedule component."""

    schedule: ComponentSpec = nested("guidance_weight", "diffusion.shifted_sigmoid")
    likelihood: str = attrs.field(
        default="gaussian", validator=one_of("gaussian", "poisson", "amplitude", "model")
    )
    noise_sigma: float | None = attrs.field(default=None, validator=optional_positive)
    dose: float | None = attrs.field(default=None, validator=optional_positive)
    tweedie: bool = True
    normalize: str = attrs.field(default="none", validator=one_of("none", "residual", "rms"))


# ----------------------------------------------------------------------------- prior
@attrs.frozen
class MLPPriorParams:
    """A diffusion prior over flat vectors of size ``dim`` with an MLP denoiser.

    ``condition_dim`` = 0 makes it unconditional. ``checkpoint`` (a path,
    relative to the recipe) loads weights written by the core ``train`` task;
    its recipe must agree on the architecture fields.
    """

    #: what kind of network it is (objectives declare the kinds they train)
    network: ClassVar[str] = "diffusion"

    dim: int = attrs.field(default=4, validator=_positive_int)
    condition_dim: int = attrs.field(default=0, validator=non_negative)
    hidden: int = attrs.field(default=128, validator=_positive_int)
    depth: int = attrs.field(default=3, validator=_positive_int)
    time_features: int = attrs.field(default=32, validator=_positive_int)
    prediction: str = attrs.field(default="v", validator=one_of(*PREDICTIONS))
    time_input: str = attrs.field(default="t", validator=one_of("t", "logsnr", "step"))
    schedule: ComponentSpec = nested("noise_schedule", "diffusion.cosine")
    checkpoint: str = path_field("checkpoint", default="")
    use_ema: bool = True
    clip_x0: float | None = attrs.field(default=None, validator=optional_positive)


# ----------------------------------------------------------------------------- datasets
@attrs.frozen
class SimulatedDataParams:
    """Pairs (x, y): x from the nested ``prior`` (e.g. example.gaussian), y = forward_model.simulate(x).

    ``conditional = false`` keeps x only (to train an unconditional prior).
    """

    prior: ComponentSpec = nested("prior", required=True)
    n_train: int = attrs.field(default=20000, validator=_positive_int)
    n_validation: int = attrs.field(default=2000, validator=non_negative)
    conditional: bool = True


@attrs.frozen
class ZarrDataParams:
    """Training pairs from a Zarr group (as written by emverse.parallel.map_to_zarr)."""

    path: str = path_field("zarr")
    x_key: str = "parameters"
    condition_key: str = "observations"
    validation_fraction: float = attrs.field(default=0.05, validator=in_range(0.0, 0.5))


# ----------------------------------------------------------------------------- objective
@attrs.frozen
class DenoisingParams:
    """``[objective] type = "diffusion.denoising"``: the diffusion loss of a network prior.

    ``weighting`` uniform | sigmoid (``weighting_bias``) | gaussian (``weighting_center``,
    ``weighting_width``) in logSNR; ``time_sampler`` uniform | adaptive (``adaptive_bins``
    bins, Kingma & Gao 2023); ``norm`` l2 | l1. The prior's ``prediction`` (ε, x₀ or v) is the
    target.
    """

    #: the networks it trains (checked against [prior] `network` at validation)
    trains: ClassVar[str] = "diffusion"

    weighting: str = attrs.field(default="uniform", validator=one_of("uniform", "sigmoid", "gaussian"))
    weighting_bias: float = 0.0
    weighting_center: float = 0.0
    weighting_width: float = attrs.field(default=2.4, validator=positive)
    time_sampler: str = attrs.field(default="uniform", validator=one_of("uniform", "adaptive"))
    adaptive_bins: int = attrs.field(default=100, validator=_positive_int)
    norm: str = attrs.field(default="l2", validator=one_of("l2", "l1"))


# ----------------------------------------------------------------------------- metrics
@attrs.frozen
class NRMSEParams:
    """NRMSE per parameter, normalised by the range (``low``/``high`` per parameter or one value)."""

    low: tuple[float, ...] = (-1.0,)
    high: tuple[float, ...] = (1.0,)
    names: tuple[str, ...] = ()


@attrs.frozen
class CalibrationParams:
    levels: int = attrs.field(default=19, validator=_positive_int)


@attrs.frozen
class SharpnessParams:
    level: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0, inclusive=False))
    low: tuple[float, ...] = (-1.0,)
    high: tuple[float, ...] = (1.0,)


@attrs.frozen
class SBCParams:
    bins: int = attrs.field(default=10, validator=_positive_int)


@attrs.frozen
class ImageParams:
    """PSNR/SSIM on instances normalised to [0, 1] (``normalize``); ``spatial_dims`` 2 or 3;
    ``sigma``: the SSIM's Gaussian window (px, truncated at 3.5 σ; PSNR ignores it)."""

    spatial_dims: int = attrs.field(default=2, validator=one_of(2, 3))
    normalize: bool = True
    sigma: float = attrs.field(default=1.5, validator=positive)


@attrs.frozen
class BootstrapParams:
    """Paired bootstrap of the per-instance score difference between two methods."""

    score: str = attrs.field(default="mse", validator=one_of("mse", "mae"))
    n_boot: int = attrs.field(default=2000, validator=_positive_int)
    confidence: float = attrs.field(default=0.95, validator=in_range(0.0, 1.0, inclusive=False))
    seed: int = 0
