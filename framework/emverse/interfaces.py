"""The six interfaces every emverse component implements.

Conventions shared by all of them:

* tensors are batch-first; the batch axis is axis 0;
* units are explicit in names or docstrings (Å, kV, mrad, Å⁻¹);
* randomness comes only from an explicit ``torch.Generator`` that the runner
  seeds from the recipe's seed;
* a component built from a recipe is made by ``cls.from_params(params, ctx)``
  where ``params`` is its frozen attrs parameter object and ``ctx`` the
  :class:`emverse.run.RunContext` (paths, device, dtype, seed, logging).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch
from torch import nn

from emverse.noise import NoiseModel, NoNoise
from emverse.parameter_space import ParameterSpace

if TYPE_CHECKING:  # pragma: no cover
    from emverse.run import RunContext, RunResult


class Configurable:
    """Mixin: build an instance from its validated recipe parameters."""

    @classmethod
    def from_params(cls, params, ctx: RunContext | None = None):
        """Default: pass every parameter field as a keyword argument."""
        if params is None or not attrs.has(type(params)):
            return cls()
        return cls(**attrs.asdict(params, recurse=False))


class ForwardModel(nn.Module, Configurable, abc.ABC):
    """A differentiable simulator from the unknown ``x`` to the observation ``y``.

    Subclasses implement :meth:`forward` (batched: ``x`` has a leading batch
    axis and so does the result) and set :attr:`parameter_space` where the
    unknown is a parameter vector. ``noise`` turns predictions into
    observations (:meth:`simulate`) and scores them (:meth:`log_likelihood`).
    """

    parameter_space: ParameterSpace | None = None
    #: what ``forward`` predicts, matched against a likelihood's ``expects``:
    #: "intensity" (non-negative intensities/probabilities), "amplitude", "pdf" (G(r)), "any"
    output: str = "any"

    def __init__(self, noise: NoiseModel | None = None):
        super().__init__()
        self.noise = noise if noise is not None else NoNoise()

    @abc.abstractmethod
    def forward(self, x: Any) -> torch.Tensor:
        """Noiseless predicted observation for a batch of unknowns."""

    @torch.no_grad()
    def simulate(self, x: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy observation: ``noise.sample(forward(x))``."""
        return self.noise.sample(self(x), generator)

    def log_likelihood(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) for each batch element, shape (batch,)."""
        return self.noise.log_likelihood(y_pred, y)

    def loss(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood over the batch (a scalar to minimise)."""
        return -self.log_likelihood(y_pred, y).mean()

    #: names of parameters :meth:`scan` evaluates much faster than one forward pass per value
    cheap_scans: tuple[str, ...] = ()

    def scan(self, x: torch.Tensor, name: str, values: torch.Tensor) -> torch.Tensor:
        """Predictions (B, T, ...) of ``x`` (B, P) with parameter ``name`` of the
        :attr:`parameter_space` set to each of ``values`` (T,). This default runs one forward
        pass per value; a model lists in :attr:`cheap_scans` the parameters it scans faster."""
        if self.parameter_space is None or name not in self.parameter_space.names:
            raise ValueError(f"{type(self).__name__} has no parameter {name!r} to scan")
        j = list(self.parameter_space.names).index(name)
        values = torch.as_tensor(values, dtype=x.dtype, device=x.device)
        grid = x[:, None, :].repeat(1, len(values), 1)
        grid[:, :, j] = values
        out = self(grid.reshape(-1, x.shape[-1]))
        return out.reshape(x.shape[0], len(values), *out.shape[1:])

    def jacobian(self, x: torch.Tensor, step: float = 1e-6, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction (B, ...) of ``x`` (B, P) and its Jacobian (B, P, ...) with respect to x.

        This default takes one-sided differences of ``step`` × the half-range of each
        parameter of :attr:`parameter_space` (inwards at a box face, so every point stays in
        the box), in forward passes of ``chunk`` rows; a model with an analytic or
        forward-mode Jacobian overrides it."""
        if self.parameter_space is None:
            raise NotImplementedError(f"{type(self).__name__} has no parameter_space; override jacobian()")
        b, p = x.shape
        low, high = self.parameter_space.bounds(x.dtype)
        half = ((high - low) / 2.0).to(x.device)
        steps = torch.where(x >= high.to(x.device) - step * half, -step * half, step * half)  # (B, P)
        stacked = x[:, None, :].repeat(1, p + 1, 1)
        idx = torch.arange(p, device=x.device)
        stacked[:, 1 + idx, idx] += steps
        flat = stacked.reshape(b * (p + 1), p)
        with torch.no_grad():
            y = torch.cat([self(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
        y = y.reshape(b, p + 1, *y.shape[1:])
        shape = (b, p) + (1,) * (y.ndim - 2)
        return y[:, 0], (y[:, 1:] - y[:, :1]) / steps.reshape(shape)

    def example_input(
        self, batch: int, generator: torch.Generator | None = None, dtype=torch.float64
    ) -> Any:
        """A valid batch of unknowns, used by the conformance kit.

        The default draws uniformly from :attr:`parameter_space`; models whose
        unknown is not a parameter vector override it.
        """
        if self.parameter_space is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no parameter_space; override example_input()"
            )
        return self.parameter_space.sample_uniform(batch, generator=generator, dtype=dtype)


class Prior(nn.Module, Configurable, abc.ABC):
    """A distribution over the unknown, possibly conditional on an observation."""

    #: shape of one draw (without the batch axis)
    event_shape: tuple[int, ...] = ()

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        condition: torch.Tensor | None = None,
        sampler: Sampler | None = None,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` draws, shape (n, *event_shape); with a batched ``condition``
        of batch B the result has shape (B, n, *event_shape)."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no tractable log_prob")

    def physical(self, draws: torch.Tensor) -> torch.Tensor:
        """Draws in the forward model's input units. A prior that samples in normalised
        coordinates (e.g. a network trained on [-1, 1]) maps them back here; by default
        draws already are what the forward model takes."""
        return draws


class DiffusionPrior(Prior):
    """A prior defined by a denoiser and a noise schedule.

    ``schedule`` maps diffusion time ``t`` (shape (batch,), in the schedule's
    own units) to ``alpha(t)``, ``sigma(t)`` with ``x_t = alpha x_0 + sigma eps``.
    :meth:`denoise` returns the estimate of the clean sample ``x_0``.
    Sampling is delegated to a :class:`Sampler`.
    """

    schedule: Any = None

    @abc.abstractmethod
    def denoise(
        self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Estimate of x_0 from the noisy ``x_t`` at time ``t``."""

    def sample(self, n, condition=None, sampler=None, guidance=None, generator=None):
        if sampler is None:
            raise ValueError(
                f"{type(self).__name__}.sample needs a sampler; add a [sampler] table to the recipe"
            )
        if condition is None:
            return sampler.sample(self, (n, *self.event_shape), None, guidance, generator)
        batch = condition.shape[0]
        repeated = condition.repeat_interleave(n, dim=0)
        draws = sampler.sample(self, (batch * n, *self.event_shape), repeated, guidance, generator)
        return draws.reshape(batch, n, *self.event_shape)


class Sampler(Configurable, abc.ABC):
    """Integrates a diffusion prior's reverse process. Holds no weights."""

    @abc.abstractmethod
    def sample(
        self,
        prior: DiffusionPrior,
        shape: tuple[int, ...],
        condition: torch.Tensor | None = None,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draws of ``shape`` from ``prior`` (batch-first)."""


class Guidance(Configurable, abc.ABC):
    """Corrects a denoiser's clean-sample estimate with a likelihood.

    Build it from parameters, then :meth:`bind` a forward model and an
    observation at call time (so any sampler works with any simulator)::

        sampler.sample(prior, shape, guidance=dps.bind(forward_model, y))
    """

    forward_model: ForwardModel | None = None
    observation: torch.Tensor | None = None
    #: the recipe's ``[likelihood]``, when it has one; else the guidance's own choice
    likelihood_term: Likelihood | None = None

    def bind(self, forward_model: ForwardModel, observation: torch.Tensor,
             likelihood: Likelihood | None = None) -> Guidance:
        """A copy of this guidance tied to ``forward_model``, ``observation`` and, when given,
        the ``likelihood`` that scores them."""
        import copy

        bound = copy.copy(self)
        bound.forward_model = forward_model
        bound.observation = observation
        if likelihood is not None:
            bound.likelihood_term = likelihood
        return bound

    @abc.abstractmethod
    def correct(
        self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, schedule: Any
    ) -> torch.Tensor:
        """The corrected estimate of x_0. ``x0_hat`` was computed from ``x_t``
        with autograd enabled, so the guidance may differentiate through it."""


class Likelihood(Configurable, abc.ABC):
    """Data fidelity: how well a prediction explains an observation (``[likelihood]``).

    Shared by guidance (DPS) and refiners, so any solver meets any physics (deepinv's
    physics × data-fidelity split). The core's likelihoods live in
    :mod:`emverse.likelihoods`; ``expects`` names what the prediction must be
    (``"any"`` or ``"intensity"``), checked against the forward model's ``output`` at
    recipe validation.
    """

    expects: str = "any"

    @abc.abstractmethod
    def negative_log_likelihood(self, y_pred: torch.Tensor, y: Any) -> torch.Tensor:
        """ℓ(y | ŷ) per batch element, shape (batch,), up to a constant in ŷ."""

    def __call__(self, y_pred: torch.Tensor, y: Any) -> torch.Tensor:
        """The mean of ℓ over the batch: the scalar a refiner minimises."""
        return self.negative_log_likelihood(y_pred, y).mean()

    def sample(self, y_pred: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy observation drawn from the likelihood (where it is generative)."""
        raise NotImplementedError(f"{type(self).__name__} cannot draw observations")

    def fisher_diagonal(self, y_pred: torch.Tensor, y: Any) -> torch.Tensor:
        """The expected Fisher information of each observed value about its prediction,
        E[(∂ℓ/∂ŷ)²] (shape of ``y_pred``; 0 where a value does not count). With the Jacobian
        J of the forward model, Jᵀ diag(this) J is the Gauss–Newton / Fisher-scoring
        curvature that Laplace approximations and posterior corrections use."""
        raise NotImplementedError(f"{type(self).__name__} gives no Fisher information")

    def chi2(self, y_pred: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Pearson χ² per batch element and the number of values that count (both (batch,)):
        divide χ² by (count − free parameters) for the reduced χ² of a fit."""
        raise NotImplementedError(f"{type(self).__name__} defines no χ²")


class Parametrization(nn.Module, Configurable, abc.ABC):
    """The trainable parameter groups of a physical model, and the map to the forward model's input.

    ``forward()`` (no argument) returns what the forward model takes: a parameter vector,
    a structure, an object volume and probe. Refiners optimise a parametrization through
    its :meth:`parameter_groups` and never know the physics.

    * :meth:`parameter_groups`: torch optimiser groups, each a dict with ``params`` and a
      ``name``, optionally ``lr_scale`` (multiplies the refiner's learning rate), so that
      positions, ADPs and a thickness network can move at their own rates;
    * :meth:`constrain`: called after every optimiser step (project onto bounds or a
      symmetry-allowed subspace);
    * :meth:`penalty`: restraints added to the negative log-likelihood (0 by default);
    * :meth:`values`: the named refined quantities for the report;
    * :meth:`check`: raise an :class:`emverse.errors.EmverseError` naming both tables when
      ``forward_model`` cannot take this parametrization.
    """

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"name": "all", "params": params}] if params else []

    def constrain(self) -> None:
        """Project the parameters back onto their allowed set (no-op by default)."""

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def values(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def check(self, forward_model: ForwardModel) -> None:
        """Raise when ``forward_model`` cannot take what :meth:`forward` returns."""


@attrs.define
class RefinementResult:
    """What a :class:`Refiner` returns.

    ``parameters`` holds the refined values by name (tensors, detached);
    ``history`` a list per quantity (``loss`` always, metrics when computed),
    one entry per iteration or epoch.
    """

    parameters: dict[str, torch.Tensor]
    history: dict[str, list[float]] = attrs.field(factory=dict)
    converged: bool = False
    iterations: int = 0
    message: str = ""

    @property
    def final_loss(self) -> float:
        losses = self.history.get("loss", [])
        return losses[-1] if losses else float("nan")


@attrs.define
class Samples:
    """Posterior draws with what they are: shape (n_observations, n_samples, ...)."""

    values: torch.Tensor
    names: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def mean(self) -> torch.Tensor:
        return self.values.mean(dim=1)

    def std(self) -> torch.Tensor:
        return self.values.std(dim=1)


class Refiner(Configurable, abc.ABC):
    """Optimises a parametrization against an observation through a forward model and a likelihood.

    The one contract (:meth:`run`): minimise
    ``likelihood(forward_model(parametrization()), observation) + parametrization.penalty()``
    over ``parametrization.parameter_groups()``. :meth:`refine` is the older form for a
    self-contained model whose ``forward()`` returns the prediction and whose
    ``loss(prediction, observation)`` the scalar to minimise; the core's refiners serve
    both through one loop.

    A refiner that can continue an interrupted refinement sets ``resumable = True`` and takes
    ``resume``, an :class:`emverse.checkpoint.ResumeFile`, in both forms: it restores the
    file's state when one exists, writes it every ``resume.every`` iterations and once at the
    end (a finished refinement is restored, not rerun), and the resumed result equals the
    uninterrupted one. Tasks pass ``resume`` only to refiners that declare it
    (:meth:`emverse.run.RunContext.resume_for` builds the file).
    """

    resumable: ClassVar[bool] = False

    def run(
        self,
        parametrization: Parametrization,
        forward_model: ForwardModel,
        likelihood: Likelihood,
        observation: Any,
        *,
        callback=None,
        generator: torch.Generator | None = None,
        resume=None,
    ) -> RefinementResult:
        """Fit ``parametrization`` to ``observation``; ``callback(iteration, parametrization,
        loss)`` may return a dict of floats that is appended to the history."""
        raise NotImplementedError(
            f"{type(self).__name__} implements only the model-owns-the-loss form (refine())"
        )

    def refine(
        self,
        model: nn.Module,
        observation: Any,
        *,
        generator: torch.Generator | None = None,
        callback=None,
        resume=None,
    ) -> RefinementResult:
        """Fit ``model``'s trainable parameters to ``observation``.

        ``callback(iteration, model, loss)`` is called once per iteration
        (for metrics and progress) and may return a dict of floats that is
        appended to the history.
        """
        raise NotImplementedError(f"{type(self).__name__} implements only run()")


@attrs.define
class PosteriorMode:
    """One mode of a corrected posterior: its location and covariance in the forward model's
    input units, its negative log-likelihood there and its posterior weight (the modes'
    weights sum to 1)."""

    location: torch.Tensor  # (P,)
    covariance: torch.Tensor  # (P, P)
    negative_log_likelihood: float
    weight: float
    converged: bool = True


@attrs.define
class CorrectedPosterior:
    """What a :class:`Correction` returns for one observation: draws of the corrected
    posterior (n, P), its modes, and diagnostics (floats: iterations, ESS, seconds, …)."""

    samples: torch.Tensor
    modes: list[PosteriorMode] = attrs.field(factory=list)
    diagnostics: dict[str, float] = attrs.field(factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything as named tensors (for a run's kept stages); :meth:`from_tensors` inverts it."""
        out = {"samples": self.samples}
        for k, mode in enumerate(self.modes):
            out.update({f"mode{k}.location": mode.location, f"mode{k}.covariance": mode.covariance,
                        f"mode{k}.facts": torch.tensor([mode.negative_log_likelihood, mode.weight,
                                                        float(mode.converged)], dtype=torch.float64)})
        out.update({f"diagnostic.{k}": torch.tensor(float(v), dtype=torch.float64)
                    for k, v in self.diagnostics.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> CorrectedPosterior:
        modes = []
        while f"mode{len(modes)}.location" in tensors:
            k = len(modes)
            nll, weight, converged = tensors[f"mode{k}.facts"].tolist()
            modes.append(PosteriorMode(tensors[f"mode{k}.location"], tensors[f"mode{k}.covariance"], nll, weight,
                                       bool(converged)))
        diagnostics = {k[len("diagnostic."):]: float(v) for k, v in tensors.items() if k.startswith("diagnostic.")}
        return cls(tensors["samples"], modes, diagnostics)


class Correction(Configurable, abc.ABC):
    """Turns approximate posterior draws (from an amortized network, a prior, anything) into
    draws of the posterior under the exact likelihood of a forward model (``[correction]``).

    ``draws`` (n, P) are in the forward model's input units; ``space`` is the forward model's
    parameter space, whose box is the prior's support (uniform prior inside it). Each
    correction states in its docstring which posterior it targets.
    """

    @abc.abstractmethod
    def correct(
        self,
        draws: torch.Tensor,
        forward_model: ForwardModel,
        likelihood: Likelihood,
        observation: Any,
        space: Any,
        *,
        n_samples: int,
        generator: torch.Generator | None = None,
    ) -> CorrectedPosterior:
        """``n_samples`` draws of the corrected posterior of one ``observation``."""


class Metric(Configurable, abc.ABC):
    """``(prediction or samples, truth or observation) -> dict of floats``.

    Metrics depend only on tensors, never on a concrete model class.
    """

    @abc.abstractmethod
    def __call__(self, prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
        """Named scalar results; names are prefixed by the runner."""

    def figure(self, prediction: torch.Tensor, truth: torch.Tensor):
        """An optional matplotlib Figure (Agg backend); ``None`` when it draws none."""
        return None


class Objective(Configurable, abc.ABC):
    """The loss one training step minimises; :func:`emverse.training.fit` owns the rest of the loop.

    ``loss(network, batch)`` returns a scalar tensor, or an object with a
    ``loss`` attribute (and whatever ``after_step`` wants to learn from). Random
    draws come from ``batch`` (:class:`emverse.training.Batch`), never from the
    global torch generator, so a resumed run draws what the uninterrupted run drew.
    Objectives with state (an adaptive time sampler) expose it through
    ``state_dict``/``load_state_dict``: the loop checkpoints it.

    As a recipe component (``[objective]`` of the core ``train`` task) it is first
    bound to the ``[prior]`` it trains and the training data (``bind``: e.g. the
    intensity scale a network normalises its input by), trains ``network(prior)``,
    may score a validation split (``validation_loss``) and add metrics after
    training (``report``).
    """

    #: the objective expects ``prior`` to be trained with the EMA of its weights
    uses_ema: bool = True

    @abc.abstractmethod
    def loss(self, network: nn.Module, batch: Any) -> Any:
        """Loss of this process's part of the batch (mean over samples)."""

    def after_step(self, result: Any, reduce) -> None:
        """Learn from the step's ``result`` (``reduce`` averages a tensor over processes)."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, but a checkpoint holds {sorted(state)}")

    def bind(self, prior: Prior, data: Any) -> None:
        """Prepare to train ``prior`` on ``data`` (checks that they fit; data-derived settings)."""
        return None

    def network(self, prior: Prior) -> nn.Module:
        """The module whose parameters are trained."""
        return prior.network

    def validation_loss(self, prior: Prior, data: Any, weights: dict[str, torch.Tensor], seed: int) -> float | None:
        """Loss on a validation split with ``weights`` (None: not defined for this objective)."""
        return None

    def report(self, prior: Prior, data: Any, generator: torch.Generator) -> dict[str, float]:
        """Metrics of the trained ``prior`` (its final weights loaded)."""
        return {}


class Task(Configurable, abc.ABC):
    """What a recipe runs (``task = "..."``): simulate, infer, train, refine, evaluate..."""

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> RunResult:
        """Do the work, using ``ctx`` to build components and write outputs."""


class OptionsTask(Task):
    """A task that keeps its ``[options]`` as one record (``self.options``, the same object as
    ``ctx.options`` at run time) instead of unpacking them into constructor arguments: the
    usual shape for tasks with many options, nested component specs or paths."""

    def __init__(self, options: Any = None):
        self.options = options

    @classmethod
    def from_params(cls, params, ctx: RunContext | None = None):
        return cls(params)
