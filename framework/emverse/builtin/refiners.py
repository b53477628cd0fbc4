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

from emverse.checkpoint import start_from
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

    def tensors(self) -> dict[str, torch.Tensor]:
        """The free tensors by position (group.index), what a resume file holds."""
        return {f"{g}.{i}": p for g, group in enumerate(self.groups) for i, p in enumerate(group["params"])}


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


class _LoopRefiner(Refiner):
    """Both contracts onto one ``_loop(problem, callback, resume)``: ``run`` (a parametrization,
    a forward model, a likelihood, an observation) and ``refine`` (a model with ``loss``)."""

    resumable = True

    def run(self, parametrization, forward_model, likelihood, observation, *, callback=None,
            generator=None, resume=None):
        problem = _parametrization_problem(parametrization, forward_model, likelihood, observation)
        return self._loop(problem, callback, resume)

    def refine(self, model, observation, *, generator=None, callback=None, resume=None):
        return self._loop(_model_problem(model, observation), callback, resume)

    def _loop(self, problem: _Problem, callback, resume) -> RefinementResult:
        raise NotImplementedError


class AdamRefiner(_LoopRefiner):
    """Adam; ``lr`` is the base learning rate, scaled per parameter group by ``lr_scale``."""

    def __init__(self, steps: int = 500, lr: float = 1e-2, tolerance: float = 0.0, patience: int = 20):
        self.steps, self.lr, self.tolerance, self.patience = steps, lr, tolerance, patience

    def _loop(self, problem: _Problem, callback, resume) -> RefinementResult:
        groups = _optimiser_groups(problem.groups, self.lr)
        optimiser = torch.optim.Adam(groups, lr=self.lr)
        state = problem.tensors()
        first, history, extra = start_from(resume, state, optimiser)
        history = history or {"bad_gradients": []}
        stalled = bool(extra.get("stalled", False))
        for step in range(first, first if extra.get("finished") else self.steps):
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
                stalled = True
                break
            if resume is not None and resume.due(step + 1):
                resume.save(state, optimiser, step + 1, history)
        iterations = len(history.get("loss", []))
        if resume is not None:  # a finished refinement is restored, not rerun
            resume.save(state, optimiser, iterations, history, {"finished": True, "stalled": stalled})
        # Adam has no convergence test of its own: a finished run counts as converged, and the
        # message says whether the loss stalled or the step budget ran out
        return RefinementResult(problem.snapshot(), history, converged=True, iterations=iterations,
                                message="loss stalled" if stalled else "step budget used")


class LBFGSRefiner(_LoopRefiner):
    """L-BFGS with a strong-Wolfe line search; ``steps`` bounds the iterations.

    ``history["loss"]`` holds one entry per function evaluation (line-search trials
    included), which is how L-BFGS spends its work. Parameter groups share one
    L-BFGS memory (torch's L-BFGS takes a single group): ``lr_scale`` is ignored here,
    and a parametrization that needs it is better served by Adam.

    With a ``resume`` file the iterations run in blocks of ``resume.every``, the file written
    after each, and the path is the one of a single uninterrupted call: a block starts from the
    line search's last accepted evaluation (kept, and saved with the file, so nothing is
    evaluated twice), the evaluation budget is shared, and torch's stopping tests are repeated
    at each block's end.
    """

    def __init__(self, steps: int = 50, lr: float = 1.0, history_size: int = 20, tolerance: float = 1e-14):
        self.steps, self.lr, self.history_size, self.tolerance = steps, lr, history_size, tolerance

    def _loop(self, problem: _Problem, callback, resume) -> RefinementResult:
        params = [p for group in problem.groups for p in group["params"]]
        optimiser = torch.optim.LBFGS(params, lr=self.lr, history_size=self.history_size,
                                      line_search_fn="strong_wolfe", max_iter=self.steps,
                                      tolerance_grad=1e-12, tolerance_change=self.tolerance)
        groups = [{"params": params}]
        history: dict[str, list[float]] = {"bad_gradients": []}
        recent: list[tuple[list[torch.Tensor], torch.Tensor, list]] = []  # (x, loss, grads), newest last
        reuse = [False]

        def closure():
            if reuse[0]:  # a block's opening evaluation: the accepted point of the last line search
                reuse[0] = False
                hit = _evaluated_at(recent, params)
                if hit is not None:
                    for p, g in zip(params, hit[2], strict=True):
                        p.grad = None if g is None else g.clone()
                    return hit[1].clone()
            optimiser.zero_grad()
            loss = problem.objective()
            loss.backward()
            history["bad_gradients"].append(float(_sanitise(groups)))
            value = float(loss.detach())
            index = len(history.get("loss", ()))  # evaluations so far
            _record(history, value, callback(index, problem.subject, value) if callback else None)
            if resume is not None:
                recent.append(([p.detach().clone() for p in params], loss.detach().clone(),
                               [None if p.grad is None else p.grad.clone() for p in params]))
                del recent[:-_KEPT_EVALUATIONS]
            return loss

        if resume is None:
            optimiser.step(closure)
        else:
            self._blocks(optimiser, closure, params, problem, history, recent, reuse, resume)
        with torch.no_grad():
            problem.constrain()
        iterations = optimiser.state[optimiser._params[0]].get("n_iter", 0)
        return RefinementResult(problem.snapshot(), history, converged=iterations < self.steps,
                                iterations=iterations)

    def _blocks(self, optimiser, closure, params, problem, history, recent, reuse, resume) -> None:
        """Run the iterations ``resume.every`` at a time, writing the resume file after each."""
        state = problem.tensors()
        aux: dict[str, torch.Tensor] = {}
        first, saved, extra = resume.load(state, optimiser, aux)
        if saved is not None:
            history.clear()
            history.update(saved)
            if "loss" in aux:  # the saved point's evaluation: the next block opens with it
                recent.append(([p.detach().clone() for p in params], aux["loss"],
                               [aux.get(f"grad.{i}") for i in range(len(params))]))
        budget = self.steps * 5 // 4  # torch's max_eval for one call of max_iter = steps
        done = bool(extra.get("finished", False))
        while not done:
            opened = bool(recent)
            reuse[0] = opened
            before = optimiser.state[params[0]].get("n_iter", 0)
            block = min(resume.every if resume.every > 0 else self.steps, self.steps - before)
            group = optimiser.param_groups[0]
            group["max_iter"] = block
            # the count torch checks includes the block's opening evaluation, reused or not
            group["max_eval"] = budget - len(history.get("loss", ())) + (1 if opened else 0)
            optimiser.step(closure)
            evaluations = len(history.get("loss", ()))
            after = optimiser.state[params[0]].get("n_iter", 0)
            done = after - before < block or after >= self.steps or evaluations >= budget \
                or self._would_stop(optimiser, params, recent)
            hit = _evaluated_at(recent, params)
            aux = {} if hit is None else {"loss": hit[1], **{f"grad.{i}": g for i, g in enumerate(hit[2])
                                                             if g is not None}}
            resume.save(state, optimiser, after, history, {"finished": done}, aux)

    def _would_stop(self, optimiser, params, recent) -> bool:
        """torch's end-of-iteration tests on the step and the loss change, which a block that ended
        on its iteration count did not reach."""
        state = optimiser.state[params[0]]
        hit = _evaluated_at(recent, params)
        if "d" not in state or hit is None:
            return False
        tol = optimiser.param_groups[0]["tolerance_change"]
        step_small = bool(state["d"].mul(state["t"]).abs().max() <= tol)
        return step_small or abs(float(hit[1]) - state["prev_loss"]) < tol


# torch's strong-Wolfe search evaluates at most 26 points and may settle on the point it started from
_KEPT_EVALUATIONS = 27


def _evaluated_at(recent, params):
    """The remembered evaluation whose parameters equal ``params`` exactly, if any."""
    for entry in reversed(recent):
        if all(torch.equal(a, p.detach()) for a, p in zip(entry[0], params, strict=True)):
            return entry
    return None
