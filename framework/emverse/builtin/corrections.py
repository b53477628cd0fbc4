"""Posterior corrections (``[correction]``): approximate draws in, the exact-likelihood posterior out.

Both components work in the forward model's normalised coordinates u ∈ [−1, 1]^P
(x = ``space.denormalise(u)``) with the prior uniform in that box — the prior an amortized
network of the same parameter space was trained on. ℓ(x) is the ``[likelihood]``'s negative
log-likelihood of the observation (nats).

``core.laplace`` — multistart Fisher scoring, then a Laplace mixture:

1. *Screen.* ℓ of every approximate draw, batched. Where the forward model scans a parameter
   cheaply (``cheap_scans``: a CBED thickness, whose eigendecompositions serve every value),
   every draw (or the ``scan_candidates`` most likely) moves to the best of ``scan_points``
   values of it over the box: a draw with the right structure but on another Pendellösung
   fringe ranks low before its scan and high after it. The starts are the ``n_starts``
   draws of lowest ℓ, taken greedily at least ``separation`` apart (normalised units).
2. *Refine* every start at once by Levenberg–Marquardt on the Fisher-scoring curvature
   H = Jᵀ diag(F) J and gradient g = Jᵀ ∂ℓ/∂ŷ (J the forward model's Jacobian in normalised
   units, ``ForwardModel.jacobian``: one-sided differences of step ``jacobian_step`` unless the
   model has its own, as bloch.cbed's perturbation theory; F the likelihood's Fisher
   diagonal); steps are projected onto the box; every ``scan_every`` iterations the cheap
   scans run again (a jump to a better alias); a start stops when ℓ falls by less than
   ``tolerance`` nats in an accepted step, or is frozen once it is far behind the best.
   The refined points are scanned once more, and those that move are refined again.
3. *Modes.* The refined points in order of ℓ; one within Mahalanobis distance
   ``merge_distance`` of a better mode (under that mode's covariance) is the same mode.
4. *Laplace.* Mode k is N(u_k, H_k⁻¹) (eigenvalues of H_k floored at 0.25: a direction the
   data leave unconstrained stays nearly uniform over the box); its weight is proportional to
   exp(−ℓ_k) · √det(2π H_k⁻¹) · Z_k, with Z_k the Gaussian's mass inside the box: the
   posterior mass of the basin under the Laplace approximation.
5. *Draws* from the mixture truncated to the box.

Target: the Laplace (one Gaussian per basin) approximation of p(x | y) ∝ L(y | x) 1_box(x).
It is exact for a linear forward model with Gaussian noise away from the box's faces, and
close when the counts are high (the basins are then nearly Gaussian). A basin that no start
reaches is missing from it.

``core.importance`` — the same mixture as a proposal q, corrected by importance resampling:
``proposals`` draws from q, log w = −ℓ(x) − log q(x), and ``n_samples`` draws resampled in
proportion to w. This targets the exact posterior (consistent as the number of proposals
grows, provided the modes found hold its mass); the effective sample size
ESS = (Σw)² / Σw² is reported, with a warning when it is below 10 % of the proposals.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from emverse.errors import EmverseError
from emverse.interfaces import CorrectedPosterior, Correction, PosteriorMode
from emverse.progress import steps

log = logging.getLogger(__name__)

#: iterations every start gets before one far behind the best is frozen, and how far (nats)
MIN_ITERATIONS, DROP_MARGIN = 8, 100.0

#: precision (normalised units) below which a direction counts as unconstrained by the data
UNCONSTRAINED_PRECISION = 0.25


def _nll(forward_model, likelihood, observation, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """ℓ of each row of ``x`` (physical units), in chunks of ``chunk`` rows, no gradient."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            out.append(likelihood.negative_log_likelihood(forward_model(x[i:i + chunk]), observation))
    return torch.cat(out)


class LaplaceMixture(Correction):
    """``core.laplace``: multistart Fisher scoring from the draws, a Laplace mixture over the modes."""

    def __init__(self, n_starts: int = 12, separation: float = 0.02, max_iterations: int = 40,
                 tolerance: float = 1e-4, jacobian_step: float = 1e-6, merge_distance: float = 3.0,
                 chunk: int = 64, scan_points: int = 96, scan_candidates: int = 0, scan_every: int = 5):
        if n_starts < 1:
            raise EmverseError(f"correction n_starts = {n_starts} must be >= 1")
        self.n_starts, self.separation = int(n_starts), float(separation)
        self.max_iterations, self.tolerance = int(max_iterations), float(tolerance)
        self.jacobian_step, self.merge_distance = float(jacobian_step), float(merge_distance)
        self.chunk = int(chunk)
        self.scan_points, self.scan_candidates = int(scan_points), int(scan_candidates)
        self.scan_every = int(scan_every) if self.scan_points >= 2 else 0

    @classmethod
    def from_params(cls, params, ctx=None):
        import attrs

        return cls(**attrs.asdict(params, recurse=False))

    # ------------------------------------------------------------------ pieces
    def _starts(self, u: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(nll)
        chosen: list[int] = []
        for i in order.tolist():
            if all(float((u[i] - u[j]).norm()) >= self.separation for j in chosen):
                chosen.append(i)
            if len(chosen) == self.n_starts:
                break
        return torch.tensor(chosen, dtype=torch.long)

    def _scan(self, forward_model, likelihood, observation, space, u: torch.Tensor, nll: torch.Tensor):
        """Each row of u moved, along every parameter the model scans cheaply, to the best of
        ``scan_points`` values spread over the box (kept where that lowers ℓ)."""
        names = [n for n in getattr(forward_model, "cheap_scans", ()) if n in space.names]
        if not names or self.scan_points < 2:
            return u, nll
        u, nll = u.clone(), nll.clone()
        grid_u = torch.linspace(-1.0, 1.0, self.scan_points, dtype=u.dtype)
        for name in names:
            j = list(space.names).index(name)
            low, high = (float(b[j]) for b in space.bounds(u.dtype))
            values = low + (grid_u + 1.0) / 2.0 * (high - low)
            with torch.no_grad():
                for i in range(u.shape[0]):
                    pred = forward_model.scan(space.denormalise(u[i:i + 1]), name, values)[0]
                    scores = likelihood.negative_log_likelihood(pred, observation)
                    best = int(torch.argmin(scores))
                    if bool(scores[best] < nll[i]):
                        u[i, j], nll[i] = grid_u[best], scores[best]
        return u, nll

    def _linearise(self, forward_model, likelihood, observation, space, u: torch.Tensor):
        """Prediction, ℓ, gradient g (K, P) and Fisher curvature H (K, P, P) at each row of u.
        The Jacobian is the forward model's (:meth:`ForwardModel.jacobian`: one-sided
        differences of ``jacobian_step`` half-ranges unless the model has its own), taken to
        normalised units."""
        k, p = u.shape
        low, high = space.bounds(u.dtype)
        y0, jac = forward_model.jacobian(space.denormalise(u), step=self.jacobian_step, chunk=self.chunk)
        shape = y0.shape[1:]
        jac = jac.detach().reshape(k, p, -1) * ((high - low) / 2.0)[None, :, None]  # (K, P, O)
        pred = y0.detach().reshape(k, *shape).requires_grad_(True)
        nll = likelihood.negative_log_likelihood(pred, observation)
        (dnll,) = torch.autograd.grad(nll.sum(), pred)
        fisher = likelihood.fisher_diagonal(pred.detach(), observation).reshape(k, -1)
        grad = torch.einsum("kpo,ko->kp", jac, dnll.reshape(k, -1))
        curvature = torch.einsum("kpo,ko,kqo->kpq", jac, fisher, jac)
        return nll.detach(), grad, curvature

    def _refine(self, forward_model, likelihood, observation, space, u: torch.Tensor):
        """Levenberg–Marquardt on every row of u at once. A row stops when an accepted step
        lowers ℓ by less than ``tolerance`` or no step lowers it (converged); after
        ``MIN_ITERATIONS`` a row more than ``DROP_MARGIN`` nats worse than the best row stops
        too (frozen): its weight would be below e^-DROP_MARGIN, so only its location is kept."""
        k, p = u.shape
        damping = torch.full((k,), 1e-3, dtype=u.dtype)
        converged = torch.zeros(k, dtype=torch.bool)
        frozen = torch.zeros(k, dtype=torch.bool)
        iterations = torch.zeros(k, dtype=torch.long)
        nll, grad, curv = self._linearise(forward_model, likelihood, observation, space, u)
        evaluations, jacobians = 0, k  # forward passes of trial steps; rows linearised
        eye = torch.eye(p, dtype=u.dtype)
        for _ in steps(range(self.max_iterations), desc="correction (Levenberg-Marquardt)"):
            frozen |= (iterations >= MIN_ITERATIONS) & (nll > nll.min() + DROP_MARGIN) & ~converged
            active = ~converged & ~frozen
            if not bool(active.any()):
                break
            rows = torch.nonzero(active).flatten()
            c = curv[rows]
            diag = torch.diagonal(c, dim1=-2, dim2=-1)
            floor = 1e-9 * diag.amax(dim=-1, keepdim=True).clamp_min(1e-300)
            system = c + damping[rows, None, None] * torch.diag_embed(diag + floor) + floor[..., None] * eye
            step = -torch.linalg.solve(system, grad[rows])
            trial = (u[rows] + step).clamp(-1.0, 1.0)
            trial_nll = _nll(forward_model, likelihood, observation, space.denormalise(trial), self.chunk)
            evaluations += len(rows)
            better = trial_nll < nll[rows]
            iterations[rows] += 1
            accepted = rows[better]
            small = (nll[accepted] - trial_nll[better]) < self.tolerance
            damping[accepted] = (damping[accepted] * 0.3).clamp_min(1e-9)
            damping[rows[~better]] *= 10.0
            # no step lowers ℓ even at a damping that makes steps negligible: at the minimum
            converged[rows[~better & (damping[rows] > 1e8)]] = True
            if len(accepted):
                u[accepted] = trial[better]
            if self.scan_every and int(iterations[rows].max()) % self.scan_every == 0:
                # a better alias along a cheap scan (thickness) is a jump, not a crawl, away
                jumped_u, jumped_nll = self._scan(forward_model, likelihood, observation, space, u[rows],
                                                  torch.where(better, trial_nll, nll[rows]))
                jumped = jumped_nll < torch.where(better, trial_nll, nll[rows]) - self.tolerance
                u[rows[jumped]] = jumped_u[jumped]
                damping[rows[jumped]] = 1e-3
                accepted = torch.unique(torch.cat([accepted, rows[jumped]]))
                small = small & ~jumped[better]
            if len(accepted):
                n2, g2, c2 = self._linearise(forward_model, likelihood, observation, space, u[accepted])
                jacobians += len(accepted)
                nll[accepted], grad[accepted], curv[accepted] = n2, g2, c2
            converged[rows[better][small]] = True
        return u, nll, curv, iterations, (evaluations, jacobians), converged

    def _box_mass(self, mean, scale, generator, n: int = 16384) -> float:
        """The mass inside the box of N(mean, scale scaleᵀ), by sampling."""
        z = torch.randn(n, mean.shape[0], generator=generator, dtype=mean.dtype)
        draws = mean + z @ scale.T
        return max(float(((draws >= -1) & (draws <= 1)).all(dim=1).double().mean()), 1.0 / n)

    def _modes(self, u, nll, curv, converged, generator):
        p = u.shape[1]
        order = torch.argsort(nll)
        kept: list[dict] = []
        for i in order.tolist():
            values, vectors = torch.linalg.eigh(curv[i])
            # a direction the data do not constrain keeps (nearly) the uniform prior: its
            # precision is floored at UNCONSTRAINED_PRECISION, a Gaussian of std 2 half-widths
            # that the box truncates to within 12 % of flat
            values = values.clamp_min(UNCONSTRAINED_PRECISION)
            if any(float((u[i] - m["mean"]) @ m["precision"] @ (u[i] - m["mean"])) <= self.merge_distance**2
                   for m in kept):
                continue  # inside a better mode's basin: the same mode
            kept.append({"index": i, "mean": u[i].clone(), "values": values,
                         "precision": (vectors * values) @ vectors.T, "cov": (vectors / values) @ vectors.T})
        modes = []
        for m in kept:
            i, mean, cov = m["index"], m["mean"], m["cov"]
            scale = torch.linalg.cholesky(cov)  # one factor per mode: box mass, draws, density
            log_det_cov = -float(torch.log(m["values"]).sum())
            mass = self._box_mass(mean, scale, generator)
            log_evidence = -float(nll[i]) + 0.5 * (p * math.log(2 * math.pi) + log_det_cov) + math.log(mass)
            modes.append({"index": i, "mean": mean, "cov": cov, "scale": scale, "nll": float(nll[i]),
                          "log_evidence": log_evidence, "mass": mass, "converged": bool(converged[i])})
        evidence = torch.tensor([m["log_evidence"] for m in modes], dtype=torch.float64)
        log_weights = evidence - torch.logsumexp(evidence, dim=0)
        for m, lw in zip(modes, log_weights.tolist(), strict=True):
            m["log_weight"], m["weight"] = lw, math.exp(lw)
        return modes

    @staticmethod
    def _sample_mixture(modes, n, generator, dtype):
        weights = torch.tensor([m["weight"] for m in modes], dtype=torch.float64)
        which = torch.multinomial(weights, n, replacement=True, generator=generator)
        out = torch.empty(n, modes[0]["mean"].shape[0], dtype=dtype)
        for k, m in enumerate(modes):
            rows = torch.nonzero(which == k).flatten()
            chol = m["scale"]
            filled = 0
            for _ in range(200):
                if filled == len(rows):
                    break
                wanted = min(10**6, 64 + math.ceil(1.5 * (len(rows) - filled) / m["mass"]))
                z = torch.randn(wanted, chol.shape[0], generator=generator, dtype=dtype)
                draws = m["mean"] + z @ chol.T
                inside = draws[((draws >= -1) & (draws <= 1)).all(dim=1)]
                take = min(len(inside), len(rows) - filled)
                out[rows[filled:filled + take]] = inside[:take]
                filled += take
            if filled < len(rows):  # a basin almost wholly outside the box: its draws sit on the faces
                z = torch.randn(len(rows) - filled, chol.shape[0], generator=generator, dtype=dtype)
                out[rows[filled:]] = (m["mean"] + z @ chol.T).clamp(-1, 1)
        return out

    @staticmethod
    def _weighted_log_normals(modes, u) -> torch.Tensor:
        """log wₖ + log N(u; μₖ, Σₖ) for every mode k and row of u: (K, M)."""
        return torch.stack([m["log_weight"] + torch.distributions.MultivariateNormal(
            m["mean"], scale_tril=m["scale"]).log_prob(u) for m in modes])

    # ------------------------------------------------------------------ the correction
    def locate(self, draws, forward_model, likelihood, observation, space, generator):
        """Screen, refine and merge: the modes (normalised units) and diagnostics."""
        if space is None:
            raise EmverseError("a posterior correction needs a [forward_model] with a parameter_space")
        started = time.perf_counter()
        u = space.normalise(draws.detach().to(torch.float64)).clamp(-1.0, 1.0)
        screen = _nll(forward_model, likelihood, observation, space.denormalise(u), self.chunk)
        finite = torch.isfinite(screen)
        if not bool(finite.any()):
            raise EmverseError("every approximate posterior draw has a non-finite likelihood; "
                               "check the observation (NaN pixels?) and the likelihood's settings")
        screen = torch.where(finite, screen, torch.full_like(screen, float("inf")))
        if getattr(forward_model, "cheap_scans", ()) and self.scan_points >= 2:
            # every draw (or the scan_candidates most likely) moved to its best value along the
            # cheap scans: a draw whose other parameters are right but whose thickness is on
            # another Pendellösung fringe ranks low before its scan and high after it
            if self.scan_candidates:
                top = torch.argsort(screen)[:max(self.scan_candidates, self.n_starts)]
                u, screen = u[top].clone(), screen[top].clone()
            u, screen = self._scan(forward_model, likelihood, observation, space, u, screen)
        starts = self._starts(u, screen)
        refined, nll, curv, iterations, evaluations, converged = self._refine(
            forward_model, likelihood, observation, space, u[starts].clone())
        # an alias the refinement could not leave: scan again from each refined point
        rescanned, renll = self._scan(forward_model, likelihood, observation, space, refined, nll)
        moved = torch.nonzero(renll < nll - self.tolerance).flatten()
        if len(moved):
            r2, n2, c2, it2, ev2, conv2 = self._refine(forward_model, likelihood, observation, space,
                                                       rescanned[moved].clone())
            refined = torch.cat([refined, r2])
            nll, curv = torch.cat([nll, n2]), torch.cat([curv, c2])
            iterations, converged = torch.cat([iterations, it2]), torch.cat([converged, conv2])
            evaluations = (evaluations[0] + ev2[0], evaluations[1] + ev2[1])
        modes = self._modes(refined, nll, curv, converged, generator)
        diagnostics = {
            "n_starts": float(len(starts)),
            "n_rescanned_starts": float(len(moved)),
            "iterations_mean": float(iterations.double().mean()),
            "iterations_max": float(iterations.max()),
            "converged_fraction": float(converged.double().mean()),
            "forward_evaluations": float(evaluations[0] + len(u)),
            "jacobian_evaluations": float(evaluations[1]),
            "n_modes": float(len(modes)),
            "seconds": time.perf_counter() - started,
        }
        return modes, diagnostics

    @staticmethod
    def _as_modes(modes, space) -> list[PosteriorMode]:
        low, high = space.bounds(torch.float64)
        scale = (high - low) / 2.0
        return [PosteriorMode(space.denormalise(m["mean"][None])[0], m["cov"] * scale[:, None] * scale[None, :],
                              m["nll"], m["weight"], m["converged"]) for m in modes]

    def correct(self, draws, forward_model, likelihood, observation, space, *, n_samples, generator=None):
        modes, diagnostics = self.locate(draws, forward_model, likelihood, observation, space, generator)
        u = self._sample_mixture(modes, n_samples, generator, torch.float64)
        return CorrectedPosterior(space.denormalise(u), self._as_modes(modes, space), diagnostics)


class ImportanceResampling(LaplaceMixture):
    """``core.importance``: the Laplace mixture as a proposal, importance-resampled under ℓ."""

    def __init__(self, proposals: int = 1024, **kwargs):
        super().__init__(**kwargs)
        if proposals < 2:
            raise EmverseError(f"correction proposals = {proposals} must be >= 2")
        self.proposals = int(proposals)

    def correct(self, draws, forward_model, likelihood, observation, space, *, n_samples, generator=None):
        modes, diagnostics = self.locate(draws, forward_model, likelihood, observation, space, generator)
        started = time.perf_counter()
        u = self._sample_mixture(modes, self.proposals, generator, torch.float64)
        nll = _nll(forward_model, likelihood, observation, space.denormalise(u), self.chunk)
        per_mode = self._weighted_log_normals(modes, u)
        log_mass = torch.tensor([math.log(m["mass"]) for m in modes], dtype=per_mode.dtype)
        # q(u): the mixture of box-truncated Gaussians
        log_w = -nll - torch.logsumexp(per_mode - log_mass[:, None], dim=0)
        log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -float("inf")))
        w = torch.exp(log_w - log_w.max())
        ess = float(w.sum() ** 2 / (w**2).sum())
        picked = torch.multinomial(w, n_samples, replacement=True, generator=generator)
        diagnostics["ess"] = ess
        diagnostics["ess_fraction"] = ess / self.proposals
        diagnostics["forward_evaluations"] += self.proposals
        diagnostics["seconds"] += time.perf_counter() - started
        if ess < 0.1 * self.proposals:
            log.warning("importance resampling: ESS %.0f of %d proposals (< 10 %%): the Laplace mixture "
                        "is a poor proposal here; the draws are less reliable", ess, self.proposals)
        # the modes' weights, re-estimated from the importance weights
        which = per_mode.argmax(dim=0)
        for k, m in enumerate(modes):
            m["weight"] = float(w[which == k].sum() / w.sum())
        return CorrectedPosterior(space.denormalise(u[picked]), self._as_modes(modes, space), diagnostics)
