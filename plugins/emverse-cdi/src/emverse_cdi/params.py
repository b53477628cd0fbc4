"""Parameters of the emverse-cdi components (attrs only; no torch).

Image sizes are in pixels; angles in degrees; learning rates per step.
A ``checkpoint`` is a path to a safetensors file (relative to the recipe) or
``builtin:NAME`` for a model shipped in ``emverse_cdi/data``; empty means
"freshly initialised" (a training task fills it).
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

DEPTHS = (10, 18, 34, 50)


def _scale_pair(instance, attribute, value):
    lo, hi = value
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"{attribute.name} must satisfy 0 < low <= high <= 1, got {value!r}")


@attrs.frozen
class TransformerPriorParams:
    """``cdi.transformer``: image-conditioned diffusion over the 13 normalised parameters.

    Defaults are the paper's (appendix B.3/B.4): ResNet-34 encoder with the
    ImageNet stem, 8 pre-norm layers of width 256, 8 heads, FFN 1024; DDPM
    linear-β schedule with ``steps`` = T, β from ``beta_start`` to ``beta_end``.
    ``crop_size`` (centre crop of the simulated pattern) and ``input_size``
    (the encoder's input, after resizing) fix the preprocessing the model
    was trained with.
    """

    network: ClassVar[str] = "cbed_pattern"

    checkpoint: str = path_field("checkpoint", default="")
    encoder_depth: int = attrs.field(default=34, validator=one_of(*DEPTHS))
    encoder_width: int = attrs.field(default=64, validator=positive)
    encoder_stem: str = attrs.field(default="imagenet", validator=one_of("imagenet", "small"))
    token_dim: int = attrs.field(default=256, validator=positive)
    n_layers: int = attrs.field(default=8, validator=positive)
    n_heads: int = attrs.field(default=8, validator=positive)
    ffn_dim: int = attrs.field(default=1024, validator=positive)
    crop_size: int = attrs.field(default=320, validator=positive)
    input_size: int = attrs.field(default=320, validator=positive)
    steps: int = attrs.field(default=1000, validator=positive)
    beta_start: float = attrs.field(default=1e-4, validator=in_range(0.0, 1.0, inclusive=False))
    beta_end: float = attrs.field(default=0.02, validator=in_range(0.0, 1.0, inclusive=False))
    ema_decay: float = attrs.field(default=0.9999, validator=in_range(0.0, 1.0))


@attrs.frozen
class RegressionParams:
    """``cdi.regression``: a ResNet-{10,18,34,50} that predicts the normalised
    parameters directly (MSE), treated as a point-mass posterior."""

    network: ClassVar[str] = "cbed_pattern"

    checkpoint: str = path_field("checkpoint", default="")
    depth: int = attrs.field(default=50, validator=one_of(*DEPTHS))
    width: int = attrs.field(default=64, validator=positive)
    stem: str = attrs.field(default="imagenet", validator=one_of("imagenet", "small"))
    crop_size: int = attrs.field(default=320, validator=positive)
    input_size: int = attrs.field(default=320, validator=positive)


@attrs.frozen
class PatternsParams:
    """``[dataset] type = "cdi.patterns"``: a ``simulate`` task Zarr store as training data for
    the core ``train`` task, or as held-out observations for the core ``infer`` task (its first
    ``n_observations`` pairs) (``path`` relative to the recipe; the first ``max_items`` pairs, 0 = all)."""

    path: str = path_field("zarr", default="dataset.zarr")
    max_items: int = attrs.field(default=0, validator=non_negative)


@attrs.frozen
class AugmentedParams:
    """``[objective] type = "cdi.augmented"``: the loss of the ``[prior]`` (``cdi.transformer``:
    ε-MSE, EMA weights kept; ``cdi.regression``: MSE on normalised parameters) on augmented
    patterns (appendix B.1): rotation by U(±``rotation_degrees``) with bilinear
    interpolation, centre crop, random resized crop with area fraction U(``resized_crop_scale``).
    ``noise_draws``: diffusion (step, noise) pairs per pattern and step (the pattern is encoded
    once).
    """

    trains: ClassVar[str] = "cbed_pattern"

    rotation_degrees: float = attrs.field(default=2.0, validator=non_negative)
    resized_crop_scale: tuple[float, float] = attrs.field(
        default=(0.9, 1.0), converter=tuple, validator=_scale_pair
    )
    noise_draws: int = attrs.field(default=1, validator=positive)


@attrs.frozen
class PipelineOptions:
    """``cdi.pipeline``: simulate train and test sets, train the CDI prior and the
    regression baseline, evaluate both; one recipe from simulation to report.

    The ``[prior]`` and ``baseline`` tables give the architectures; their
    ``checkpoint`` fields are ignored (the pipeline trains them).
    """

    n_train: int = attrs.field(default=1000, validator=positive)
    n_test: int = attrs.field(default=100, validator=positive)
    chunk_size: int = attrs.field(default=64, validator=positive)
    dataset_dir: str = ""
    scheduler: str = ""
    n_workers: int | None = attrs.field(default=None, validator=optional_positive)
    epochs: int = attrs.field(default=100, validator=positive)
    baseline_epochs: int = attrs.field(default=100, validator=positive)
    batch_size: int = attrs.field(default=64, validator=positive)
    steps_per_epoch: int | None = attrs.field(default=None, validator=optional_positive)
    learning_rate: float = attrs.field(default=1e-3, validator=positive)
    baseline_learning_rate: float = attrs.field(default=1e-3, validator=positive)
    weight_decay: float = attrs.field(default=0.0, validator=non_negative)
    cosine_schedule: bool = True
    rotation_degrees: float = attrs.field(default=2.0, validator=non_negative)
    resized_crop_scale: tuple[float, float] = attrs.field(
        default=(0.9, 1.0), converter=tuple, validator=_scale_pair
    )
    noise_draws: int = attrs.field(default=1, validator=positive)
    #: optimiser steps between resume checkpoints (<run>/cdi-resume.safetensors, regression-resume...)
    checkpoint_every: int = attrs.field(default=500, validator=non_negative)
    baseline: ComponentSpec = nested("prior", "cdi.regression")
    n_samples: int = attrs.field(default=100, validator=positive)
    eval_batch_size: int = attrs.field(default=32, validator=positive)
    max_eval_patterns: int | None = attrs.field(default=None, validator=optional_positive)
    n_histogram_patterns: int = attrs.field(default=2, validator=non_negative)
    n_ppc_patterns: int = attrs.field(default=2, validator=non_negative)
    n_ppc_samples: int = attrs.field(default=8, validator=positive)


@attrs.frozen
class ToyPatternParams:
    """``cdi.toy_pattern``: image side in pixels and optional Gaussian pixel noise σ."""

    size_px: int = attrs.field(default=32, validator=positive)
    noise_sigma: float = attrs.field(default=0.0, validator=non_negative)
