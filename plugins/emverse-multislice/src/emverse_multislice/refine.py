"""Gradient-based multislice ptychography: ``multislice.adam`` and ``multislice.lbfgs``.

Both reconstruct the phase volume x (B, depth, H, W) (radians) of a
:class:`~emverse_multislice.ptychography.MultislicePtychography` model from
an observed diffraction stack (B, n_scan, kH, kW) by minimising

    L(x) = mean over objects and scan positions of D(I_pred, I_obs) + λ₁·mean|x|

with D the "amplitude" misfit Σ_k (√I_pred − √I_obs)² (default; the
Gaussian approximation to Poisson counting noise, well conditioned in dark
pixels), the "intensity" misfit Σ_k (I_pred − I_obs)², or "model": the
forward model's own negative log-likelihood (Poisson at its dose).

Usage::

    refiner = AdamReconstruction(epochs=300, batch_size=16, learning_rate=0.02)
    result = refiner.refine(model, y, generator=torch.Generator().manual_seed(0))
    volume = result.parameters["object"]         # (B, depth, H, W), rad
    result.history["loss"]                       # one value per epoch

``callback(iteration, model, loss)`` runs once per epoch / iteration; the
current volume is ``refiner.current_object`` at that moment.

Both are resumable: given ``resume`` (an :class:`emverse.checkpoint.ResumeFile`) they write the
volume, any refined probe or positions, the optimiser, the learning-rate schedule, the
mini-batch generator and the history every ``resume.every`` epochs / iterations, and an
interrupted reconstruction continues from the last file to the uninterrupted result.
"""

from __future__ import annotations

import math

import torch
from emverse.checkpoint import start_from
from emverse.errors import EmverseError
from emverse.interfaces import RefinementResult, Refiner

from emverse_multislice.propagation import bandlimit, spatial_frequencies

_AMPLITUDE_EPS = 1e-12


def _rows(y, indices) -> torch.Tensor:
    """The observed patterns of ``indices`` (B, n, kH, kW): from a tensor, or read on demand
    from a lazy stack (e.g. :class:`emverse_multislice.measured.PatternStack` over Zarr)."""
    if isinstance(y, torch.Tensor):
        return y[:, indices]
    return y.rows(indices)


def _as_stack(model, observation):
    if hasattr(observation, "rows") and hasattr(observation, "shape"):  # a lazy, streamed stack
        expected = (1, *model.observation_shape)
        if tuple(observation.shape) != expected:
            raise EmverseError(
                f"observation has shape {tuple(observation.shape)} but the model predicts {expected} "
                "= (B, n_scan, kH, kW); read the data with the model's scan and detector"
            )
        return observation
    if not isinstance(observation, torch.Tensor):
        raise EmverseError(
            f"observation must be a torch.Tensor diffraction stack, got {type(observation).__name__}"
        )
    y = observation
    if y.ndim == 3:
        y = y[None]
    expected = tuple(model.observation_shape)
    if y.ndim != 4 or tuple(y.shape[1:]) != expected:
        raise EmverseError(
            f"observation has shape {tuple(observation.shape)} but the model predicts "
            f"(B, {', '.join(map(str, expected))}) = (B, n_scan, kH, kW); simulate the data with "
            "the same scan and probe window, or rebuild the model to match"
        )
    if not torch.isfinite(y).all():
        raise EmverseError("observation holds NaN or infinite values; clean the data first")
    return y.detach()


def data_misfit(model, y_pred: torch.Tensor, y_obs: torch.Tensor, kind: str) -> torch.Tensor:
    """Misfit per object and scan position, averaged: a scalar."""
    if kind == "amplitude":
        diff = torch.sqrt(y_pred.clamp_min(0) + _AMPLITUDE_EPS) - torch.sqrt(
            y_obs.clamp_min(0) + _AMPLITUDE_EPS
        )
        return (diff**2).sum(dim=(-2, -1)).mean()
    if kind == "intensity":
        return ((y_pred - y_obs) ** 2).sum(dim=(-2, -1)).mean()
    if kind == "model":
        flat_pred = y_pred.reshape(-1, 1, *y_pred.shape[-2:])
        flat_obs = y_obs.reshape(-1, 1, *y_obs.shape[-2:])
        return -model.log_likelihood(flat_pred, flat_obs).mean()
    raise EmverseError(f"loss {kind!r} is unknown; use 'amplitude', 'intensity' or 'model'")


class _GradientReconstruction(Refiner):
    """Shared set-up of the two refiners."""

    loss: str
    l1_weight: float
    positivity: bool
    object_bandlimit: bool
    batch_size: int | None

    current_object: torch.Tensor | None = None
    resumable = True

    def _initial(self, model, y: torch.Tensor, initial) -> torch.Tensor:
        real = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
        shape = (y.shape[0], *model.object_shape)
        if initial is None:
            return torch.zeros(shape, dtype=real, device=y.device)
        initial = torch.as_tensor(initial, dtype=real, device=y.device)
        if initial.ndim == 3:
            initial = initial[None].expand(shape)
        if tuple(initial.shape) != shape:
            raise EmverseError(
                f"initial volume has shape {tuple(initial.shape)}, expected {shape} "
                "(B, depth, H, W) matching the observation batch and the model's object_shape"
            )
        return initial.clone()

    absorption: torch.Tensor | None = None  # optimised −ln|t| when the amplitude is refined

    def _objective(self, model, x, y, indices) -> torch.Tensor:
        phase = self._volume(model, x)
        obj = phase
        if self.absorption is not None:
            obj = torch.polar(torch.exp(-self._volume(model, self.absorption)), phase)
        y_pred = model(obj, scan_indices=indices)
        loss = data_misfit(model, y_pred, _rows(y, indices), self.loss)
        if self.l1_weight > 0:
            loss = loss + self.l1_weight * phase.abs().mean()
        return loss

    object_lowpass: float = 0.0

    def _volume(self, model, x: torch.Tensor) -> torch.Tensor:
        """The volume the optimised variable stands for: with ``object_bandlimit`` the
        variable low-passed to the model's antialias band (a reparametrisation, so the
        optimiser sees a smooth objective and leaves the band's null space at zero); with
        ``object_lowpass`` σ_k (Å⁻¹) > 0 also a Gaussian low-pass exp(−k²/2σ_k²), i.e. a real-space
        Gaussian blur of σ = 1/(2π σ_k) Å (regularisation for noisy, low-dose data)."""
        transfer = None
        if self.object_bandlimit and getattr(model, "antialias", False):
            transfer = model.object_aperture.to(x.dtype)
        if self.object_lowpass > 0:
            kx, ky = spatial_frequencies(x.shape[-2:], model.sampling_angstrom, dtype=x.dtype, device=x.device)
            gaussian = torch.exp(-(kx**2 + ky**2) / (2 * self.object_lowpass**2))
            transfer = gaussian if transfer is None else transfer * gaussian
        if transfer is None:
            return x
        return bandlimit(x, transfer).real

    @torch.no_grad()
    def _project(self, model, x: torch.Tensor):
        """Projections after each step: phase positivity; amplitude ≤ 1 (absorption ≥ 0); a refined
        probe keeps no amplitude outside the bright-field disc (``probe_support``: the measured
        aperture pins the detector's scale, which a freely deforming probe would trade against a
        distorted scan and object); the
        position corrections keep zero mean (a common shift is a shift of the object, invisible
        in the data) and, while the scan affine is refined, no linear part (that is the
        affine's)."""
        if self.positivity:
            x.clamp_(min=0.0)
        if self.absorption is not None:
            self.absorption.clamp_(min=0.0)
        probe = getattr(model, "probe_fourier_ri", None)
        if isinstance(probe, torch.nn.Parameter) and getattr(self, "probe_support", False):
            probe *= model.probe_support.to(probe.dtype)[None, :, :, None]
        offsets = getattr(model, "position_offsets", None)
        if isinstance(offsets, torch.nn.Parameter) and getattr(self, "refine_positions", False):
            offsets -= offsets.mean(dim=0)
            if getattr(self, "refine_affine", False):
                relative = model.nominal_positions - model.scan_centre
                linear = torch.linalg.lstsq(relative, offsets).solution
                offsets -= relative @ linear

    def _chunks(self, n: int, generator: torch.Generator | None, shuffle: bool):
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        size = n if self.batch_size is None else min(int(self.batch_size), n)
        return list(torch.split(order, size))

    def _result(self, model, x, history, converged, iterations, message, extra):
        parameters = {"object": self._volume(model, x.detach()).clone()}
        if self.absorption is not None:
            parameters["amplitude"] = torch.exp(-self._volume(model, self.absorption.detach()))
        for name in extra:
            parameters[name] = getattr(model, name).detach().clone()
        if {"position_offsets", "scan_affine"} & set(extra):
            parameters["positions_angstrom"] = model.positions_angstrom.detach().clone()
        return RefinementResult(
            parameters=parameters,
            history=history,
            converged=converged,
            iterations=iterations,
            message=message,
        )


class AdamReconstruction(_GradientReconstruction):
    """``multislice.adam``: stochastic mini-batches of scan positions, Adam steps.

    Parameters as in :class:`emverse_multislice.params.AdamParams`.
    """

    def __init__(
        self,
        epochs: int = 200,
        batch_size: int | None = None,
        learning_rate: float = 0.02,
        loss: str = "amplitude",
        l1_weight: float = 0.0,
        positivity: bool = False,
        object_bandlimit: bool = True,
        refine_probe: bool = False,
        refine_positions: bool = False,
        probe_learning_rate: float = 1e-3,
        positions_learning_rate: float = 1e-3,
        tolerance: float = 0.0,
        patience: int = 10,
        schedule: str = "constant",
        refine_affine: bool = False,
        affine_learning_rate: float = 1e-3,
        refine_amplitude: bool = False,
        correction_start_epoch: int = 0,
        probe_support: bool = True,
        object_lowpass: float = 0.0,
    ):
        if int(epochs) <= 0:
            raise EmverseError(f"epochs must be a positive integer, got {epochs!r}")
        if batch_size is not None and int(batch_size) <= 0:
            raise EmverseError(f"batch_size must be a positive integer or omitted, got {batch_size!r}")
        if not learning_rate > 0:
            raise EmverseError(f"learning_rate must be > 0, got {learning_rate!r}")
        if loss not in ("amplitude", "intensity", "model"):
            raise EmverseError(f"loss {loss!r} is unknown; use 'amplitude', 'intensity' or 'model'")
        if not l1_weight >= 0:
            raise EmverseError(f"l1_weight must be >= 0, got {l1_weight!r}")
        self.epochs = int(epochs)
        self.batch_size = batch_size
        self.learning_rate = float(learning_rate)
        self.loss = loss
        self.l1_weight = float(l1_weight)
        self.positivity = bool(positivity)
        self.object_bandlimit = bool(object_bandlimit)
        self.refine_probe = bool(refine_probe)
        self.refine_positions = bool(refine_positions)
        self.refine_affine = bool(refine_affine)
        self.refine_amplitude = bool(refine_amplitude)
        self.probe_learning_rate = float(probe_learning_rate)
        self.positions_learning_rate = float(positions_learning_rate)
        self.affine_learning_rate = float(affine_learning_rate)
        if int(correction_start_epoch) < 0:
            raise EmverseError(f"correction_start_epoch must be >= 0, got {correction_start_epoch!r}")
        self.correction_start_epoch = int(correction_start_epoch)
        self.probe_support = bool(probe_support)
        if not (math.isfinite(object_lowpass) and object_lowpass >= 0):
            raise EmverseError(f"object_lowpass must be >= 0 (Å⁻¹; 0 = off), got {object_lowpass!r}")
        self.object_lowpass = float(object_lowpass)
        self.tolerance = float(tolerance)
        self.patience = int(patience)
        if schedule not in ("constant", "cosine"):
            raise EmverseError(f"schedule {schedule!r} is unknown; use 'constant' or 'cosine'")
        self.schedule = schedule

    def _model_groups(self, model):
        groups, names = [], []
        for flag, name, lr, what in (
            (self.refine_probe, "probe_fourier_ri", self.probe_learning_rate, "probe"),
            (self.refine_positions, "position_offsets", self.positions_learning_rate, "positions"),
            (self.refine_affine, "scan_affine", self.affine_learning_rate, "affine"),
        ):
            if not flag:
                continue
            param = getattr(model, name, None)
            if not isinstance(param, torch.nn.Parameter):
                raise EmverseError(
                    f"refine_{what} = true needs a model built with learn_{what} = true"
                )
            groups.append({"params": [param], "lr": lr})
            names.append(name)
        return groups, names

    def refine(self, model, observation, *, generator=None, callback=None, initial=None, resume=None):
        """Reconstruct; ``initial`` (B, depth, H, W) or (depth, H, W) starts from a given volume
        (default zeros). Returns parameters {"object", + refined model tensors}."""
        y = _as_stack(model, observation)
        x = self._initial(model, y, initial).requires_grad_(True)
        groups, extra = self._model_groups(model)
        object_groups = [{"params": [x], "lr": self.learning_rate}]
        self.absorption = None
        if self.refine_amplitude:
            self.absorption = torch.zeros_like(x, requires_grad=True)
            object_groups.append({"params": [self.absorption], "lr": self.learning_rate})
        optimiser = torch.optim.Adam([*object_groups, *groups])
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=self.epochs)
            if self.schedule == "cosine"
            else None
        )
        state = {"object": x, **{name: getattr(model, name) for name in extra}}
        if self.absorption is not None:
            state["absorption"] = self.absorption
        aux: dict[str, torch.Tensor] = {}
        first, saved, facts = start_from(resume, state, optimiser, aux)
        if "generator" in aux and generator is not None:
            generator.set_state(aux["generator"])
        if scheduler is not None and "scheduler" in facts:
            scheduler.load_state_dict(facts["scheduler"])
            for group, lr in zip(optimiser.param_groups, scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
        history: dict[str, list[float]] = saved or {"loss": []}
        n_scan = model.n_scan
        converged, calm = bool(facts.get("converged", False)), int(facts.get("calm", 0))
        message = facts.get("message", "reached the epoch limit")
        if saved is not None:
            self.current_object = self._volume(model, x.detach())

        def save(epoch, finished=False):
            rng = {"generator": generator.get_state()} if generator is not None else {}
            schedule = {"scheduler": scheduler.state_dict()} if scheduler is not None else {}
            resume.save(state, optimiser, epoch, history,
                        {"calm": calm, "converged": converged, "message": message, "finished": finished,
                         **schedule}, rng)

        for epoch in range(first, first if facts.get("finished") else self.epochs):
            total = 0.0
            for indices in self._chunks(n_scan, generator, shuffle=True):
                optimiser.zero_grad(set_to_none=True)
                loss = self._objective(model, x, y, indices)
                loss.backward()
                if epoch < self.correction_start_epoch:  # the object settles before the corrections move
                    for group in groups:
                        group["params"][0].grad = None
                optimiser.step()
                self._project(model, x)
                total += float(loss.detach()) * len(indices)
            epoch_loss = total / n_scan
            if scheduler is not None:
                scheduler.step()
            if not math.isfinite(epoch_loss):
                message = f"loss became {epoch_loss} at epoch {epoch}; lower learning_rate"
                break
            previous = history["loss"][-1] if history["loss"] else None
            history["loss"].append(epoch_loss)
            self.current_object = self._volume(model, x.detach())
            if callback is not None:
                extra_values = callback(epoch, model, epoch_loss)
                for key, value in (extra_values or {}).items():
                    history.setdefault(key, []).append(float(value))
            if self.tolerance > 0 and previous is not None:
                change = abs(previous - epoch_loss) / max(abs(previous), 1e-30)
                calm = calm + 1 if change < self.tolerance else 0
                if calm >= self.patience:
                    converged, message = True, f"relative loss change < {self.tolerance} for {self.patience} epochs"
                    break
            if resume is not None and resume.due(epoch + 1):
                save(epoch + 1)
        if resume is not None:  # a finished reconstruction is restored, not rerun
            save(len(history["loss"]), finished=True)
        return self._result(model, x, history, converged, len(history["loss"]), message, extra)


class LbfgsReconstruction(_GradientReconstruction):
    """``multislice.lbfgs``: full-batch L-BFGS with a strong-Wolfe line search.

    ``batch_size`` splits each objective evaluation over scan positions
    (gradients accumulated), so memory is bounded while the objective stays
    exact. Parameters as in :class:`emverse_multislice.params.LbfgsParams`.
    """

    def __init__(
        self,
        iterations: int = 50,
        batch_size: int | None = None,
        learning_rate: float = 1.0,
        history_size: int = 20,
        max_evaluations_per_iteration: int = 25,
        loss: str = "amplitude",
        l1_weight: float = 0.0,
        positivity: bool = False,
        object_bandlimit: bool = False,
        tolerance: float = 1e-10,
    ):
        if int(iterations) <= 0:
            raise EmverseError(f"iterations must be a positive integer, got {iterations!r}")
        if batch_size is not None and int(batch_size) <= 0:
            raise EmverseError(f"batch_size must be a positive integer or omitted, got {batch_size!r}")
        if loss not in ("amplitude", "intensity", "model"):
            raise EmverseError(f"loss {loss!r} is unknown; use 'amplitude', 'intensity' or 'model'")
        if not l1_weight >= 0:
            raise EmverseError(f"l1_weight must be >= 0, got {l1_weight!r}")
        self.iterations = int(iterations)
        self.batch_size = batch_size
        self.learning_rate = float(learning_rate)
        self.history_size = int(history_size)
        self.max_evaluations_per_iteration = int(max_evaluations_per_iteration)
        self.loss = loss
        self.l1_weight = float(l1_weight)
        self.positivity = bool(positivity)
        self.object_bandlimit = bool(object_bandlimit)
        self.tolerance = float(tolerance)

    def refine(self, model, observation, *, generator=None, callback=None, initial=None, resume=None):
        """Reconstruct; see :class:`AdamReconstruction.refine`."""
        y = _as_stack(model, observation)
        x = self._initial(model, y, initial).requires_grad_(True)
        n_scan = model.n_scan
        chunks = self._chunks(n_scan, generator, shuffle=False)
        optimiser = torch.optim.LBFGS(
            [x],
            lr=self.learning_rate,
            max_iter=1,
            max_eval=self.max_evaluations_per_iteration,
            history_size=self.history_size,
            tolerance_grad=self.tolerance,
            tolerance_change=self.tolerance,
            line_search_fn="strong_wolfe",
        )

        def closure():
            optimiser.zero_grad(set_to_none=True)
            total = torch.zeros((), dtype=x.dtype)
            for indices in chunks:
                weight = len(indices) / n_scan
                loss = self._objective(model, x, y, indices) * weight
                loss.backward()
                total = total + loss.detach()
            return total

        state = {"object": x}
        first, saved, facts = start_from(resume, state, optimiser)
        history: dict[str, list[float]] = saved or {"loss": []}
        converged = bool(facts.get("converged", False))
        message = facts.get("message", "reached the iteration limit")
        if saved is not None:
            self.current_object = self._volume(model, x.detach())
        for iteration in range(first, first if facts.get("finished") else self.iterations):
            optimiser.step(closure)
            self._project(model, x)
            with torch.no_grad():
                value = float(
                    sum(
                        self._objective(model, x, y, indices) * (len(indices) / n_scan)
                        for indices in chunks
                    )
                )
            if not math.isfinite(value):
                message = f"loss became {value} at iteration {iteration}; lower learning_rate"
                break
            previous = history["loss"][-1] if history["loss"] else None
            history["loss"].append(value)
            self.current_object = self._volume(model, x.detach())
            if callback is not None:
                extra_values = callback(iteration, model, value)
                for key, val in (extra_values or {}).items():
                    history.setdefault(key, []).append(float(val))
            if previous is not None and abs(previous - value) <= self.tolerance * max(abs(previous), 1e-30):
                converged, message = True, "loss stopped changing"
                break
            if resume is not None and resume.due(iteration + 1):
                resume.save(state, optimiser, iteration + 1, history)
        if resume is not None:  # a finished reconstruction is restored, not rerun
            resume.save(state, optimiser, len(history["loss"]), history,
                        {"converged": converged, "message": message, "finished": True})
        return self._result(model, x, history, converged, len(history["loss"]), message, [])
