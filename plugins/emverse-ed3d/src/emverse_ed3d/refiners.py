"""Refiners of the hybrid model: Adam (the paper's), L-BFGS (comparison) and
Nelder–Mead orientation refinement per frame (scipy).

Adam and L-BFGS minimise ``model.loss()`` = wR(all) over all reflections of
all frames at once (full batch: one epoch = one pass over every frame). The
history records the loss (wR(all)) and whatever the callback returns, one
entry per epoch, plus the wall time.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from emverse.checkpoint import start_from
from emverse.interfaces import RefinementResult, Refiner


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _snapshot(model) -> dict[str, torch.Tensor]:
    out = {name: p.detach().clone() for name, p in model.named_parameters()}
    out.update({"frac_asu": model.structure.frac_asu().detach(), "u_asu": model.structure.u_asu().detach(),
                "thickness_angstrom": model.thickness().detach()})
    return out


def _record(history, name, value):
    history.setdefault(name, []).append(float(value))


def _run_callback(history, callback, epoch, model, loss):
    if callback is None:
        return False
    extra = callback(epoch, model, loss)
    stop = False
    if extra:
        for key, value in extra.items():
            if key == "stop":
                stop = bool(value)
            else:
                _record(history, key, value)
    return stop


def _resume(resume, model, optimizer) -> tuple[int, dict[str, list[float]], bool, bool]:
    """(last finished epoch, history, converged, finished) from ``resume``'s file (restoring the
    model and optimiser in place); a fresh start without one."""
    step, history, extra = start_from(resume, model, optimizer)
    return step, history or {}, bool(extra.get("converged", False)), bool(extra.get("finished", False))


class Ed3dAdam(Refiner):
    """Adam over all parameters jointly (paper: lr 1e-3, 200 epochs, full batch)."""

    resumable = True

    def __init__(self, epochs: int = 200, lr: float = 1e-3, lr_thickness: float | None = None,
                 target_wr: float = 0.0, lr_orientation: float = 2e-4, lr_absorption: float = 1e-2):
        self.epochs = int(epochs)
        self.lr_absorption = float(lr_absorption)
        self.lr = float(lr)
        self.lr_thickness = lr_thickness
        self.lr_orientation = float(lr_orientation)
        self.target_wr = float(target_wr)

    def refine(self, model, observation=None, *, generator=None, callback=None, resume=None) -> RefinementResult:
        """Refine ``model`` in place; ``resume`` (an :class:`emverse.checkpoint.ResumeFile`) continues
        an interrupted refinement exactly and is written every ``resume.every`` epochs."""
        thickness_params = set(id(p) for p in model.thickness_model.parameters())
        angles = getattr(model, "orientation_angles", None)
        log_kappa = getattr(model, "log_absorption", None)
        special = thickness_params | {id(p) for p in (angles, log_kappa) if p is not None}
        others = [p for p in _trainable(model) if id(p) not in special]
        groups = [{"params": others, "lr": self.lr}]
        thick = [p for p in model.thickness_model.parameters() if p.requires_grad]
        if thick:
            groups.append({"params": thick, "lr": self.lr_thickness or self.lr})
        if angles is not None and angles.requires_grad:  # per-frame orientation angles (rad)
            groups.append({"params": [angles], "lr": self.lr_orientation})
        if log_kappa is not None and log_kappa.requires_grad:  # log κ of the absorption
            groups.append({"params": [log_kappa], "lr": self.lr_absorption})
        opt = torch.optim.Adam(groups)
        first, history, converged, finished = _resume(resume, model, opt)
        start = time.perf_counter()
        epoch = first
        for epoch in range(first + 1, (first if finished else self.epochs) + 1):
            opt.zero_grad(set_to_none=True)
            loss = model.loss()
            loss.backward()
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        # a degenerate eigenvalue pair can make one gradient non-finite; skip that entry
                        p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            opt.step()
            _record(history, "loss", loss.item())
            _record(history, "time_s", time.perf_counter() - start)
            stop = _run_callback(history, callback, epoch, model, loss.item())
            converged = self.target_wr > 0 and loss.item() <= self.target_wr
            if converged or stop:
                break
            if resume is not None and resume.due(epoch):
                resume.save(model, opt, epoch, history)
        return _finished(model, opt, epoch, history, converged, resume, f"Adam {epoch} epochs")


def _finished(model, opt, epoch, history, converged, resume, what: str) -> RefinementResult:
    """The end of a refinement: the resume file marked finished (a rerun restores it), the final
    wR(all) recorded, the result."""
    if resume is not None:  # a finished refinement is restored, not rerun
        resume.save(model, opt, epoch, history, {"finished": True, "converged": converged})
    with torch.no_grad():
        final = model.loss().item()
    _record(history, "final_loss", final)
    return RefinementResult(parameters=_snapshot(model), history=history, converged=converged,
                            iterations=epoch, message=f"{what}, wR(all) {final:.4f}")


class Ed3dLBFGS(Refiner):
    """L-BFGS with a strong-Wolfe line search; one epoch = one outer step."""

    resumable = True

    def __init__(self, epochs: int = 50, lr: float = 1.0, max_iter: int = 5, history_size: int = 20,
                 target_wr: float = 0.0):
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.max_iter = int(max_iter)
        self.history_size = int(history_size)
        self.target_wr = float(target_wr)

    def refine(self, model, observation=None, *, generator=None, callback=None, resume=None) -> RefinementResult:
        """As :meth:`Ed3dAdam.refine` (L-BFGS's direction history is part of the resume state)."""
        opt = torch.optim.LBFGS(_trainable(model), lr=self.lr, max_iter=self.max_iter,
                                history_size=self.history_size, line_search_fn="strong_wolfe")
        first, history, converged, finished = _resume(resume, model, opt)
        start = time.perf_counter()
        evaluations = [int(history["evaluations"][-1]) if history.get("evaluations") else 0]

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = model.loss()
            loss.backward()
            for p in _trainable(model):
                if p.grad is not None:
                    p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            evaluations[0] += 1
            return loss

        epoch = first
        for epoch in range(first + 1, (first if finished else self.epochs) + 1):
            loss = opt.step(closure)
            with torch.no_grad():
                current = model.loss().item()
            _record(history, "loss", current)
            _record(history, "time_s", time.perf_counter() - start)
            _record(history, "evaluations", evaluations[0])
            stop = _run_callback(history, callback, epoch, model, current)
            converged = self.target_wr > 0 and current <= self.target_wr
            if not math.isfinite(float(loss.detach())) or converged or stop:
                break
            if resume is not None and resume.due(epoch):
                resume.save(model, opt, epoch, history)
        return _finished(model, opt, epoch, history, converged, resume, f"L-BFGS {epoch} steps")


def small_rotation(angles_rad) -> torch.Tensor:
    """R = R_z(ω) R_y(β) R_x(α) for angles (α, β, ω) in rad (paper §4.3)."""
    from emverse_ed3d.model import small_rotations

    return small_rotations(torch.as_tensor(np.asarray(angles_rad, float), dtype=torch.float64))


def refine_orientations(model, *, frames=None, initial_step_deg: float = 0.05, max_iter: int = 60,
                        max_angle_deg: float = 1.0) -> dict[str, np.ndarray]:
    """Per-frame Nelder–Mead over three small rotations minimising the frame's wR(all).

    The result is stored in ``model.orientation_delta`` (left-multiplied onto each
    frame's orientation). Returns the angles (deg) and the per-frame wR before/after.
    """
    from scipy.optimize import minimize

    frames = range(model.n_frames) if frames is None else frames
    limit = math.radians(max_angle_deg)
    step = math.radians(initial_step_deg)
    angles, before, after = [], [], []
    for f in frames:
        base = model.orientation_delta[f].clone()

        def objective(x, f=f, base=base):
            if np.abs(x).max() > limit:
                return 10.0
            return model.frame_wr(f, small_rotation(x) @ base)

        start = objective(np.zeros(3))
        simplex = np.vstack([np.zeros(3), np.eye(3) * step])
        res = minimize(objective, np.zeros(3), method="Nelder-Mead",
                       options={"initial_simplex": simplex, "maxiter": max_iter, "xatol": 1e-5, "fatol": 1e-5})
        best = res.x if res.fun < start else np.zeros(3)
        with torch.no_grad():
            model.orientation_delta[f] = small_rotation(best).to(base.dtype) @ base
        angles.append(np.degrees(best))
        before.append(start)
        after.append(min(res.fun, start))
    return {"angles_deg": np.array(angles), "wr_before": np.array(before), "wr_after": np.array(after)}
