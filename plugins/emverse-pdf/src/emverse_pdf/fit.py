"""``pdf.fit``: refine a particle's positions (and qdamp, B, scale) against a G(r).

The model is a :class:`StructureFitModel`: the trainable positions (Å) of one
particle plus log-parametrised qdamp (Å⁻¹) and B (Å²) around a
:class:`~emverse_pdf.model.DebyePDF`. The loss is Rw² over the fit range,

    Rw^2 = sum_k (G_obs,k - s G_calc,k)^2 / sum_k G_obs,k^2,

with the scale s solved in closed form at every step (the scale is profiled
out, not a free parameter). A PDF is invariant under rigid motions and
mirror images of the particle, so recovered positions are compared after
alignment (:func:`~emverse_pdf.structures.kabsch_rmsd`).
"""

from __future__ import annotations

import math

import torch
from emverse.checkpoint import start_from
from emverse.errors import EmverseError
from emverse.interfaces import RefinementResult, Refiner
from torch import nn

from emverse_pdf.gr_io import GrData
from emverse_pdf.metrics import fit_scale_offset, r_window, rwp
from emverse_pdf.model import DebyePDF
from emverse_pdf.structures import Structure

__all__ = ["StructureFitModel", "PDFFit"]


class StructureFitModel(nn.Module):
    """Trainable particle for :class:`PDFFit`: ``positions`` (N, 3) Å, ``log_qdamp``, ``log_biso``.

    ``forward()`` returns the unscaled G(r) (1, n_r) in Å⁻² on the grid ``r`` (Å;
    default: the forward model's grid).
    """

    def __init__(
        self,
        forward_model: DebyePDF,
        structure: Structure,
        *,
        r: torch.Tensor | None = None,
        qdamp: float | None = None,
        biso: float | None = None,
        dtype=torch.float64,
    ):
        super().__init__()
        if forward_model.output != "gr":
            raise EmverseError(
                f"pdf.fit fits G(r) but the forward model's output is {forward_model.output!r}; set output = 'gr'"
            )
        self.forward_model = forward_model
        self.symbols = tuple(structure.symbols)
        self.positions = nn.Parameter(torch.as_tensor(structure.positions, dtype=dtype).clone())
        qdamp = forward_model.settings.qdamp if qdamp is None else qdamp
        biso = forward_model.settings.biso if biso is None else biso
        # log parametrisation keeps qdamp and B positive; a zero qdamp stays fixed at zero
        self.qdamp_is_zero = not qdamp > 0
        self.log_qdamp = nn.Parameter(torch.tensor(math.log(max(qdamp, 1e-12)), dtype=dtype))
        self.log_biso = nn.Parameter(torch.tensor(math.log(max(biso, 1e-6)), dtype=dtype))
        grid = forward_model.r if r is None else torch.as_tensor(r)
        self.register_buffer("r", grid.to(dtype).clone())

    @property
    def qdamp(self) -> torch.Tensor:
        return torch.zeros_like(self.log_qdamp) if self.qdamp_is_zero else self.log_qdamp.exp()

    @property
    def biso(self) -> torch.Tensor:
        return self.log_biso.exp()

    def structure(self) -> Structure:
        return Structure(self.symbols, self.positions.detach().cpu().numpy().copy())

    def forward(self) -> torch.Tensor:
        return self.forward_model(
            self.positions[None], elements=self.symbols, biso=self.biso, qdamp=self.qdamp, r=self.r
        )


class PDFFit(Refiner):
    """Gradient-descent refinement of a :class:`StructureFitModel` against an observed G(r).

    ``observation``: a :class:`~emverse_pdf.gr_io.GrData` (its r must equal the
    model's grid) or a tensor G (n_r,) on the model's grid, in Å⁻².

    Resumable: with ``resume`` (an :class:`emverse.checkpoint.ResumeFile`) the positions,
    Qdamp, Biso, optimiser state and history are written every ``resume.every`` steps, and an
    interrupted fit continues from the last file to the uninterrupted result.
    """

    resumable = True

    def __init__(
        self,
        optimizer: str = "adam",
        steps: int = 300,
        lr_positions_angstrom: float = 0.01,
        lr_nuisance: float = 0.02,
        refine_positions: bool = True,
        refine_scale: bool = True,
        refine_qdamp: bool = False,
        refine_biso: bool = False,
        fit_rmin: float | None = None,
        fit_rmax: float | None = None,
        tolerance: float = 1e-7,
    ):
        if optimizer not in ("adam", "lbfgs"):
            raise EmverseError(f"pdf.fit optimizer {optimizer!r} is unknown; use 'adam' or 'lbfgs'")
        self.optimizer = optimizer
        self.steps = int(steps)
        self.lr_positions = float(lr_positions_angstrom)
        self.lr_nuisance = float(lr_nuisance)
        self.refine_positions = refine_positions
        self.refine_scale = refine_scale
        self.refine_qdamp = refine_qdamp
        self.refine_biso = refine_biso
        self.fit_rmin = fit_rmin
        self.fit_rmax = fit_rmax
        self.tolerance = float(tolerance)

    def _observed(self, model: StructureFitModel, observation) -> torch.Tensor:
        if isinstance(observation, GrData):
            r_obs, g_obs = observation.tensors(dtype=model.r.dtype, device=model.r.device)
            if r_obs.shape != model.r.shape or not torch.allclose(r_obs, model.r, atol=1e-6):
                raise EmverseError(
                    f"the observed r grid ({r_obs.numel()} points, {float(r_obs[0]):.3f}-{float(r_obs[-1]):.3f} Å) "
                    "differs from the model's; build StructureFitModel(..., r=data.r)"
                )
            return g_obs
        g_obs = torch.as_tensor(observation, dtype=model.r.dtype, device=model.r.device).reshape(-1)
        if g_obs.shape != model.r.shape:
            raise EmverseError(
                f"observation has {g_obs.numel()} points but the model's r grid has {model.r.numel()}"
            )
        return g_obs

    def refine(self, model, observation, *, generator=None, callback=None, resume=None) -> RefinementResult:
        if not isinstance(model, StructureFitModel):
            raise EmverseError(
                f"pdf.fit refines a StructureFitModel, got {type(model).__name__}; wrap the forward model and start structure"
            )
        g_obs = self._observed(model, observation)
        keep = r_window(model.r, self.fit_rmin, self.fit_rmax)
        g_obs_fit = g_obs[keep]

        model.positions.requires_grad_(self.refine_positions)
        model.log_qdamp.requires_grad_(self.refine_qdamp and not model.qdamp_is_zero)
        model.log_biso.requires_grad_(self.refine_biso)
        groups = []
        if self.refine_positions:
            groups.append({"params": [model.positions], "lr": self.lr_positions})
        nuisance = [p for p in (model.log_qdamp, model.log_biso) if p.requires_grad]
        if nuisance:
            groups.append({"params": nuisance, "lr": self.lr_nuisance})
        if not groups:
            raise EmverseError("pdf.fit has nothing to refine; switch on refine_positions, refine_qdamp or refine_biso")

        def objective():
            g_calc = model()[0][keep]
            return rwp(g_calc, g_obs_fit, fit_scale=self.refine_scale) ** 2

        if self.optimizer == "adam":
            opt = torch.optim.Adam(groups)
            window = 20

            def step_once():
                opt.zero_grad()
                loss = objective()
                loss.backward()
                opt.step()
                return loss
        else:
            opt = torch.optim.LBFGS([p for g in groups for p in g["params"]], lr=1.0, max_iter=20,
                                    history_size=20, line_search_fn="strong_wolfe")
            window = 2

            def closure():
                opt.zero_grad()
                loss = objective()
                loss.backward()
                return loss

            def step_once():
                return opt.step(closure)

        state = {"positions": model.positions, "log_qdamp": model.log_qdamp, "log_biso": model.log_biso}
        first, saved, extra = start_from(resume, state, opt)
        history: dict[str, list[float]] = saved or {"loss": [], "rwp": []}
        converged = bool(extra.get("converged", False))
        iterations = first
        for step in range(first, first if extra.get("finished") else self.steps):
            loss = step_once()
            iterations = step + 1
            self._record(history, loss, step, model, callback)
            if step >= window and _relative_change(history["loss"], window) < self.tolerance:
                converged = True
                break
            if resume is not None and resume.due(iterations):
                resume.save(state, opt, iterations, history)
        if resume is not None:  # a finished fit is restored, not rerun
            resume.save(state, opt, iterations, history, {"finished": True, "converged": converged})

        with torch.no_grad():
            g_calc = model()[0]
            scale, _ = fit_scale_offset(g_calc[keep], g_obs_fit)
            if not self.refine_scale:
                scale = torch.ones_like(scale)
        return RefinementResult(
            parameters={
                "positions": model.positions.detach().clone(),
                "scale": scale.detach(),
                "qdamp": model.qdamp.detach().clone(),
                "biso": model.biso.detach().clone(),
                "g_calc": (scale * g_calc).detach(),
            },
            history=history,
            converged=converged,
            iterations=iterations,
            message=f"Rw {history['rwp'][-1]:.5f} after {iterations} iterations ({self.optimizer})",
        )

    @staticmethod
    def _record(history, loss, step, model, callback):
        value = float(loss.detach())
        history["loss"].append(value)
        history["rwp"].append(math.sqrt(max(value, 0.0)))
        if callback is not None:
            extra = callback(step, model, value)
            if extra:
                for key, val in extra.items():
                    history.setdefault(key, []).append(float(val))


def _relative_change(values: list[float], window: int) -> float:
    old, new = values[-window - 1], values[-1]
    return abs(old - new) / max(abs(old), 1e-30)
