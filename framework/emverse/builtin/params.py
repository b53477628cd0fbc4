from __future__ import annotations

from typing import ClassVar

import attrs

from emverse.params import ComponentSpec, in_range, nested, one_of, path_field, positive


@attrs.frozen
class SimulateParams:
    """Options of the ``simulate`` task: a dataset campaign into a Zarr store.

    With a ``[dataset]`` table whose component writes its own store (``ensure``: e.g.
    ``cbldm.dataset``, clusters drawn from a catalogue and their PDFs) the task writes or
    resumes that store instead, and these options are not used.

    ``n`` unknowns drawn by the ``[forward_model]``'s ``example_input`` (uniform in its parameter
    space) and their observations, with the forward model's noise (``noise``) or noise-free;
    ``store``: the Zarr directory (relative to the recipe; empty = ``dataset.zarr`` in the run
    directory; a second run with the same store resumes it); ``chunk_size`` items per chunk
    (0 = one chunk), each with its own seeded stream; ``scheduler``: a Dask scheduler address
    (empty = an embedded local cluster of ``n_workers``).
    """

    n: int = attrs.field(default=4, validator=positive)
    noise: bool = True
    store: str = ""
    chunk_size: int = attrs.field(default=64, validator=in_range(0, 10**9))
    scheduler: str = ""
    n_workers: int = attrs.field(default=1, validator=positive)

    def incompatible_with(self, components) -> list[tuple[str, str]]:
        """A campaign of the [forward_model]'s draws, or a [dataset] that writes its own store."""
        if components.get("forward_model") is None and components.get("dataset") is None:
            return [("$", "task 'simulate' needs a [forward_model] table (a campaign of its draws) or a "
                          "[dataset] table that writes its own store (e.g. cbldm.dataset); add one")]
        return []


def _single_truth(instance, attribute, value):
    if instance is None:  # checked on its own: n_observations is not known yet
        return
    if instance.observation and (value or instance.n_observations != 1):
        raise ValueError("observation names a measured pattern: leave truth empty and set n_observations = 1")
    if value and instance.n_observations != 1:
        raise ValueError(f"truth is given but n_observations = {instance.n_observations}; a truth "
                         "names one observation: set n_observations = 1 or leave truth empty")


@attrs.frozen
class InferParams:
    """Options of the ``infer`` task: posterior samples for simulated observations."""

    requires: ClassVar[tuple[str, ...]] = ("forward_model", "prior")
    n_observations: int = attrs.field(default=4, validator=positive)
    n_samples: int = attrs.field(default=200, validator=positive)
    #: the truth of a single observation, in the forward model's units and parameter order
    #: (empty: drawn from the parameter space with the seed)
    truth: tuple[float, ...] = attrs.field(default=(), converter=tuple, validator=_single_truth)
    #: observations that get a posterior-predictive figure (observed, posterior-mean pattern,
    #: normalised residual)
    n_ppc: int = attrs.field(default=3, validator=in_range(0, 1000))
    #: a measured pattern (DM3/DM4, EMD, HDF5, MIB, TIFF, .npy + TOML, Zarr) instead of a
    #: simulated one; n_observations must be 1 and truth empty
    observation: str = path_field("file", default="", reader="emverse.readers:check_pattern")
    #: "counts": the file holds electron counts (divided by the [likelihood]'s dose);
    #: "fraction": fractions of the incident beam, as the forward model predicts
    observation_units: str = attrs.field(default="counts", validator=one_of("counts", "fraction"))
    #: Å⁻¹ per pixel of the measured pattern; 0: from the file's metadata
    observation_reciprocal_pixel_size: float = attrs.field(default=0.0, validator=in_range(0.0, 1e6))

    def incompatible_with(self, components) -> list[tuple[str, str]]:
        """A ``[dataset]`` gives the truths and observations; a measured pattern or a fixed truth
        would contradict it (checked at recipe validation, before any run directory)."""
        if components.get("dataset") is None:
            return []
        if self.observation:
            return [("$.options.observation", "a measured pattern and a [dataset] both give the observation; "
                                               "remove the [dataset] table or options.observation")]
        if self.truth:
            return [("$.options.truth", "the [dataset] draws the truths; remove options.truth or the "
                                         "[dataset] table")]
        return []


@attrs.frozen
class TrainParams:
    """Options of the ``train`` task: the core training loop (:mod:`emverse.training`).

    Steps are optimiser steps of ``batch_size`` samples; the learning rate warms up
    linearly over ``warmup_steps``, then stays or decays by a cosine (``lr_decay``);
    ``grad_clip`` 0 disables clipping. The EMA decay is ``ema_decay`` from step
    ``ema_start`` (0 before), or with ``ema_warmup`` min(ema_decay, (1 + k)/(10 + k)).
    ``use_ema``: the saved weights are the EMA (default: what the ``[objective]``
    expects). ``checkpoint_every`` steps between resume checkpoints
    ``<run>/<checkpoint_name>-resume.safetensors``; the trained ``[prior]`` is written to
    ``<run>/<checkpoint_name>.safetensors``, which its ``checkpoint`` field reads back.
    """

    requires: ClassVar[tuple[str, ...]] = ("prior", "dataset", "objective")
    steps: int = attrs.field(default=1000, validator=positive)
    batch_size: int = attrs.field(default=64, validator=positive)
    learning_rate: float = attrs.field(default=1e-3, validator=in_range(1e-12, 10.0))
    weight_decay: float = attrs.field(default=0.0, validator=in_range(0.0, 10.0))
    warmup_steps: int = attrs.field(default=0, validator=in_range(0, 10**9))
    lr_decay: str = attrs.field(default="none", validator=one_of("none", "cosine"))
    ema_decay: float = attrs.field(default=0.999, validator=in_range(0.0, 0.999999999))
    ema_start: int = attrs.field(default=0, validator=in_range(0, 10**9))
    ema_warmup: bool = False
    use_ema: str = attrs.field(default="auto", validator=one_of("auto", "yes", "no"))
    grad_clip: float = attrs.field(default=1.0, validator=in_range(0.0, 1e9))
    amp: bool = False
    validate_every: int = attrs.field(default=0, validator=in_range(0, 10**9))
    checkpoint_every: int = attrs.field(default=500, validator=in_range(0, 10**9))
    log_every: int = attrs.field(default=0, validator=in_range(0, 10**9))
    checkpoint_name: str = "prior"
    #: after training: posterior draws (``[sampler]``, and ``[guidance]`` when given) for this many
    #: held-out observations drawn from the ``[dataset]``, scored as the ``infer`` task scores them
    #: (0: no check)
    n_observations: int = attrs.field(default=0, validator=in_range(0, 10**9))
    n_samples: int = attrs.field(default=200, validator=positive)

    def incompatible_with(self, components) -> list[tuple[str, str]]:
        """The posterior check needs a sampler and the forward model that made the observations."""
        if not self.n_observations:
            return []
        missing = [table for table in ("sampler", "forward_model") if components.get(table) is None]
        if missing:
            return [("$.options.n_observations", (
                f"= {self.n_observations} checks posteriors after training, which needs "
                f"{' and '.join(f'[{t}]' for t in missing)}; add the table(s) or set n_observations = 0"))]
        return []


@attrs.frozen
class RefineParams:
    """Options of the ``refine`` task: one simulated observation (truth drawn, start perturbed) or
    one measured pattern (``observation``, read and checked as ``infer`` reads it)."""

    requires: ClassVar[tuple[str, ...]] = ("forward_model", "refiner")
    #: simulated: start = truth + start_offset × half-range × N(0, 1) (normalised units)
    start_offset: float = attrs.field(default=0.3, validator=in_range(0.0, 2.0))
    #: the start in the forward model's units and parameter order (empty: as above, or the centre
    #: of the parameter box for a measured observation)
    start: tuple[float, ...] = attrs.field(default=(), converter=tuple)
    #: a measured pattern (DM3/DM4, EMD, HDF5, MIB, TIFF, .npy + TOML, Zarr) instead of a simulated one
    observation: str = path_field("file", default="", reader="emverse.readers:check_pattern")
    #: "counts" (divided by the [likelihood]'s dose) or "fraction" of the incident beam
    observation_units: str = attrs.field(default="counts", validator=one_of("counts", "fraction"))
    #: Å⁻¹ per pixel of the measured pattern; 0: from the file's metadata
    observation_reciprocal_pixel_size: float = attrs.field(default=0.0, validator=in_range(0.0, 1e6))


@attrs.frozen
class AdamParams:
    steps: int = attrs.field(default=500, validator=positive)
    lr: float = attrs.field(default=1e-2, validator=positive)
    #: stop when the loss changed by less than this (relative) over ``patience`` steps; 0: never
    tolerance: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    patience: int = attrs.field(default=20, validator=positive)


@attrs.frozen
class LBFGSParams:
    steps: int = attrs.field(default=50, validator=positive)
    lr: float = attrs.field(default=1.0, validator=positive)
    history_size: int = attrs.field(default=20, validator=positive)
    #: L-BFGS stops when a step changes the loss or the parameters by less than this
    tolerance: float = attrs.field(default=1e-14, validator=in_range(0.0, 1.0))


# ----------------------------------------------------------------- likelihoods
@attrs.frozen
class GaussianLikelihoodParams:
    expects: ClassVar[str] = "any"
    #: standard deviation of the additive noise, in observation units
    sigma: float = attrs.field(default=1.0, validator=positive)


@attrs.frozen
class PoissonLikelihoodParams:
    expects: ClassVar[str] = "intensity"
    #: electrons per unit of the observation (observation = counts / dose)
    dose: float = attrs.field(default=1000.0, validator=positive)


@attrs.frozen
class AmplitudeLikelihoodParams:
    expects: ClassVar[str] = "intensity"
    #: σ of the amplitudes √I; unset: 1/(2√dose) for counts, else 1
    sigma: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))
    dose: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))


@attrs.frozen
class IntensityLikelihoodParams:
    """Likelihoods with no parameters that score intensities (weighted_intensity, ncc)."""

    expects: ClassVar[str] = "intensity"


@attrs.frozen
class AnyLikelihoodParams:
    """Likelihoods with no parameters that score any prediction (rw)."""

    expects: ClassVar[str] = "any"


# ------------------------------------------------------------------ corrections
@attrs.frozen
class LaplaceParams:
    """``core.laplace``: multistart Fisher scoring from the draws, then a Laplace mixture."""

    #: refined starts (the lowest-ℓ draws, at least ``separation`` apart)
    n_starts: int = attrs.field(default=12, validator=positive)
    #: minimum distance between two starts, normalised units (the box is [-1, 1] per parameter)
    separation: float = attrs.field(default=0.02, validator=in_range(0.0, 4.0))
    max_iterations: int = attrs.field(default=40, validator=positive)
    #: a start stops when an accepted step lowers ℓ by less than this, nats
    tolerance: float = attrs.field(default=1e-4, validator=positive)
    #: one-sided difference step of the Jacobian, normalised units
    jacobian_step: float = attrs.field(default=1e-6, validator=in_range(1e-12, 1e-2))
    #: two refined points closer than this Mahalanobis distance are one mode
    merge_distance: float = attrs.field(default=3.0, validator=positive)
    #: forward-model batch size
    chunk: int = attrs.field(default=64, validator=positive)
    #: values per cheap scan (the forward model's cheap_scans, e.g. thickness) over the box; 0: none
    scan_points: int = attrs.field(default=96, validator=in_range(0, 100000))
    #: the lowest-ℓ draws that are scanned before the starts are chosen; 0: every draw
    scan_candidates: int = attrs.field(default=0, validator=in_range(0, 10**7))
    #: during the refinement, scan again every this many iterations (0: only before and after)
    scan_every: int = attrs.field(default=5, validator=in_range(0, 10**6))


@attrs.frozen
class ImportanceParams(LaplaceParams):
    """``core.importance``: the Laplace mixture as a proposal, importance-resampled under the likelihood."""

    #: proposal draws whose importance weights are computed
    proposals: int = attrs.field(default=1024, validator=in_range(2, 10**7))


# ------------------------------------------------------------- parametrizations
@attrs.frozen
class ParameterVectorParams:
    """The forward model's parameter vector, optimised in normalised units ([-1, 1] over its bounds)."""

    takes: ClassVar[str] = "parameter_vector"
    #: names of the free parameters (default: all); the others stay at the start value
    free: tuple[str, ...] = attrs.field(default=(), converter=tuple)


# ------------------------------------------------------------------ evaluation
def _optional(kind: str):
    return attrs.field(default=None, metadata={"emverse_kind": kind})


@attrs.frozen
class RefineMethodParams:
    """``core.refine`` in ``[[compare]]``: a refiner (+ parametrization, likelihood) from the shared start."""

    label: str = "refine"
    refiner: ComponentSpec = nested("refiner", "core.adam")
    parametrization: ComponentSpec | None = _optional("parametrization")
    likelihood: ComponentSpec | None = _optional("likelihood")


@attrs.frozen
class InferMethodParams:
    """``core.infer`` in ``[[compare]]``: posterior draws; the estimate is their mean."""

    prior: ComponentSpec = nested("prior", required=True)
    label: str = "infer"
    sampler: ComponentSpec | None = _optional("sampler")
    guidance: ComponentSpec | None = _optional("guidance")
    n_samples: int = attrs.field(default=100, validator=positive)


@attrs.frozen
class EvaluateParams:
    """Options of the ``evaluate`` task: every ``[[compare]]`` method on the same test set."""

    requires: ClassVar[tuple[str, ...]] = ("forward_model", "compare")
    n_observations: int = attrs.field(default=10, validator=positive)
    #: refine methods start at truth + start_offset × half-range × N(0, 1) (the same start for all)
    start_offset: float = attrs.field(default=0.3, validator=in_range(0.0, 2.0))
    n_boot: int = attrs.field(default=2000, validator=positive)
    confidence: float = attrs.field(default=0.95, validator=in_range(0.5, 0.999))
