"""The one Adam and the one L-BFGS of the project.

Both serve the :class:`~emverse.interfaces.Refiner` contract in its two forms:

* ``run(parametrization, forward_model, likelihood, observation)``: minimise
  ``likelihood(forward_model(parametrization()), observation) + parametrization.penalty()``
  over the parametrization's parameter groups (each with its own ``lr_scale``), calling
  ``parametrization.constrain()`` after every step;
* ``refine(model, observation)``: a self-contained model whose ``forward()`` returns the
  prediction and whose ``loss(prediction, observation)`` is the scalar to minimise.

What every refinement gets from this one loop: gradient sanitising (a non-finite
gradient element is set to zero and counted in ``history["bad_gradients"]``, so one
unlucky pixel cannot end a refinement), an early stop when the loss has changed by less
than ``tolerance`` (relative) over ``patience`` steps, and a per-step ``callback``
whose returned dict of floats joins the history.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from emverse.errors import EmverseError
from emverse.interfaces import RefinementResult, Refiner


class _Problem:
    """What the loop optimises: parameter groups, the objective, the projection, the snapshot."""

    def __init__(self, groups, objective: Callable[[], torch.Tensor], constrain: Callable[[], None],
                 snapshot: Callable[[], dict], subject):
        if not any(group["params"] for group in groups):
            raise EmverseError(f"{type(subject).__name__} has no trainable parameters to refine")
        self.groups, self.objective, self.constrain, self.snapshot = groups, objective, constrain, snapshot
        self.subject = subject


def _model_problem(model, observation) -> _Problem:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"name": "all", "params": params}]

    def snapshot():
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    return _Problem(groups, lambda: model.loss(model(), observation),
                    getattr(model, "constrain", lambda: None), snapshot, model)


def _parametrization_problem(parametrization, forward_model, likelihood, observation) -> _Problem:
    parametrization.check(forward_model)

    def objective():
        loss = likelihood(forward_model(parametrization()), observation)
        return loss + parametrization.penalty()

    return _Problem(parametrization.parameter_groups(), objective, parametrization.constrain,
                    parametrization.values, parametrization)


def _optimiser_groups(groups, lr: float) -> list[dict]:
    out = []
    for group in groups:
        if not group["params"]:
            continue
        entry = {"params": list(group["params"]), "lr": lr * float(group.get("lr_scale", 1.0))}
        entry["name"] = group.get("name", "")
        out.append(entry)
    return out


def _sanitise(groups) -> int:
    bad = 0
    for group in groups:
        for p in group["params"]:
            if p.grad is not None:
                finite = torch.isfinite(p.grad)
                if not bool(finite.all()):
                    bad += int((~finite).sum())
                    p.grad = torch.where(finite, p.grad, torch.zeros_like(p.grad))
    return bad


def _record(history: dict, loss: float, extra) -> None:
    history.setdefault("loss", []).append(loss)
    for key, value in (extra or {}).items():
        history.setdefault(key, []).append(float(value))


def _stalled(losses: list[float], tolerance: float, patience: int) -> bool:
    if tolerance <= 0 or len(losses) <= patience:
        return False
    old, new = losses[-1 - patience], losses[-1]
    return abs(old - new) <= tolerance * max(abs(old), 1e-300)


class AdamRefiner(Refiner):
    """Adam; ``lr`` is the base learning rate, scaled per parameter group by ``lr_scale``."""

    def __init__(self, steps: int = 500, lr: float = 1e-2, tolerance: float = 0.0, patience: int = 20):
        self.steps, self.lr, self.tolerance, self.patience = steps, lr, tolerance, patience

    def run(self, parametrization, forward_model, likelihood, observation, *, callback=None,
            generator=None):
        problem = _parametrization_problem(parametrization, forward_model, likelihood, observation)
        return self._loop(problem, callback)

    def refine(self, model, observation, *, generator=None, callback=None):
        return self._loop(_model_problem(model, observation), callback)

    def _loop(self, problem: _Problem, callback) -> RefinementResult:
        groups = _optimiser_groups(problem.groups, self.lr)
        optimiser = torch.optim.Adam(groups, lr=self.lr)
        history: dict[str, list[float]] = {"bad_gradients": []}
        converged, step = False, 0
        for step in range(self.steps):
            optimiser.zero_grad()
            loss = problem.objective()
            loss.backward()
            history["bad_gradients"].append(float(_sanitise(groups)))
            optimiser.step()
            with torch.no_grad():
                problem.constrain()
            value = float(loss.detach())
            _record(history, value, callback(step, problem.subject, value) if callback else None)
            if _stalled(history["loss"], self.tolerance, self.patience):
                converged = True
                break
        # Adam has no convergence test of its own: a finished run counts as converged, and the
        # message says whether the loss stalled or the step budget ran out
        return RefinementResult(problem.snapshot(), history, converged=True, iterations=step + 1,
                                message="loss stalled" if converged else "step budget used")


class LBFGSRefiner(Refiner):
    """L-BFGS with a strong-Wolfe line search; ``steps`` bounds the iterations.

    ``history["loss"]`` holds one entry per function evaluation (line-search trials
    included), which is how L-BFGS spends its work. Parameter groups share one
    L-BFGS memory (torch's L-BFGS takes a single group): ``lr_scale`` is ignored here,
    and a parametrization that needs it is better served by Adam.
    """

    def __init__(self, steps: int = 50, lr: float = 1.0, history_size: int = 20, tolerance: float = 1e-14):
        self.steps, self.lr, self.history_size, self.tolerance = steps, lr, history_size, tolerance

    def run(self, parametrization, forward_model, likelihood, observation, *, callback=None,
            generator=None):
        problem = _parametrization_problem(parametrization, forward_model, likelihood, observation)
        return self._loop(problem, callback)

    def refine(self, model, observation, *, generator=None, callback=None):
        return self._loop(_model_problem(model, observation), callback)

    def _loop(self, problem: _Problem, callback) -> RefinementResult:
        params = [p for group in problem.groups for p in group["params"]]
        optimiser = torch.optim.LBFGS(params, lr=self.lr, history_size=self.history_size,
                                      line_search_fn="strong_wolfe", max_iter=self.steps,
                                      tolerance_grad=1e-12, tolerance_change=self.tolerance)
        groups = [{"params": params}]
        history: dict[str, list[float]] = {"bad_gradients": []}
        evaluations = 0

        def closure():
            nonlocal evaluations
            optimiser.zero_grad()
            loss = problem.objective()
            loss.backward()
            history["bad_gradients"].append(float(_sanitise(groups)))
            value = float(loss.detach())
            _record(history, value, callback(evaluations, problem.subject, value) if callback else None)
            evaluations += 1
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            problem.constrain()
        iterations = optimiser.state[optimiser._params[0]].get("n_iter", 0)
        return RefinementResult(problem.snapshot(), history, converged=iterations < self.steps,
                                iterations=iterations)
