"""Generic first- and second-order refiners.

A model handed to these refiners is an ``nn.Module`` whose ``forward()``
takes no argument and returns the prediction, and whose ``loss(prediction,
observation)`` returns a scalar to minimise.
"""

from __future__ import annotations

import torch

from emverse.interfaces import RefinementResult, Refiner


def _trainable(model):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to refine")
    return params


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _record(history: dict, loss: float, extra) -> None:
    history.setdefault("loss", []).append(loss)
    for key, value in (extra or {}).items():
        history.setdefault(key, []).append(float(value))


class AdamRefiner(Refiner):
    def __init__(self, steps: int = 500, lr: float = 1e-2):
        self.steps, self.lr = steps, lr

    def refine(self, model, observation, *, generator=None, callback=None):
        optimiser = torch.optim.Adam(_trainable(model), lr=self.lr)
        history: dict[str, list[float]] = {}
        for step in range(self.steps):
            optimiser.zero_grad()
            loss = model.loss(model(), observation)
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            _record(history, value, callback(step, model, value) if callback else None)
        return RefinementResult(_snapshot(model), history, converged=True, iterations=self.steps)


class LBFGSRefiner(Refiner):
    """L-BFGS with a strong-Wolfe line search; ``steps`` bounds the iterations.

    ``history["loss"]`` holds one entry per function evaluation (line-search
    trials included), which is how L-BFGS spends its work.
    """

    def __init__(self, steps: int = 50, lr: float = 1.0, history_size: int = 20):
        self.steps, self.lr, self.history_size = steps, lr, history_size

    def refine(self, model, observation, *, generator=None, callback=None):
        optimiser = torch.optim.LBFGS(_trainable(model), lr=self.lr, history_size=self.history_size,
                                      line_search_fn="strong_wolfe", max_iter=self.steps,
                                      tolerance_grad=1e-12, tolerance_change=1e-14)
        history: dict[str, list[float]] = {}
        evaluations = 0

        def closure():
            nonlocal evaluations
            optimiser.zero_grad()
            loss = model.loss(model(), observation)
            loss.backward()
            value = float(loss.detach())
            _record(history, value, callback(evaluations, model, value) if callback else None)
            evaluations += 1
            return loss

        optimiser.step(closure)
        iterations = optimiser.state[optimiser._params[0]].get("n_iter", 0)
        return RefinementResult(_snapshot(model), history, converged=iterations < self.steps,
                                iterations=iterations)
