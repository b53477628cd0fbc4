"""The ForwardModel conformance check."""

from __future__ import annotations

import attrs
import torch

from emverse.interfaces import ForwardModel


@attrs.define
class ConformanceReport:
    output_shape: tuple[int, ...]
    batch_max_abs_diff: float
    grad_directional: float
    grad_finite_difference: float
    grad_relative_error: float


def _first_tensor(x):
    return x if isinstance(x, torch.Tensor) else None


def check_forward_model(
    model: ForwardModel,
    *,
    batch: int = 3,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    x: torch.Tensor | None = None,
    eps: float = 1e-6,
    grad_rtol: float = 1e-4,
    batch_rtol: float = 1e-9,
    check_grad: bool = True,
) -> ConformanceReport:
    """Check ``model`` against the ForwardModel contract; raise AssertionError on failure.

    1. ``model(x)`` is finite and batch-first: ``y.shape[0] == x.shape[0]``;
    2. batching is consistent: each element alone gives the batched result;
    3. it is deterministic: two calls give identical output;
    4. the gradient along a random direction agrees with a central finite
       difference (run in float64: ``eps`` and ``grad_rtol`` assume it); with a
       parameter space, each component of the direction is scaled by its
       parameter's half-range so parameters of very different units are probed evenly;
    5. :meth:`simulate` with a seeded generator is reproducible and keeps the shape.
    """
    assert isinstance(model, ForwardModel), f"{type(model).__name__} is not an emverse ForwardModel"
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = model.example_input(batch, generator=gen, dtype=dtype)
    assert isinstance(x, torch.Tensor), "check_forward_model needs a tensor input; pass x="
    batch = x.shape[0]

    y = model(x)
    assert isinstance(y, torch.Tensor), f"forward returned {type(y).__name__}, not a tensor"
    assert y.shape[0] == batch, f"output batch axis {y.shape[0]} != input batch {batch}"
    assert torch.isfinite(y).all(), "forward produced NaN or inf"

    again = model(x)
    assert torch.equal(again, y), "forward is not deterministic (two calls differ)"

    single = torch.cat([model(x[i : i + 1]) for i in range(batch)], dim=0)
    scale = y.abs().max().clamp_min(1e-30)
    batch_diff = float((single - y).abs().max())
    assert batch_diff <= batch_rtol * float(scale) + 1e-12, (
        f"batched and one-by-one outputs differ by {batch_diff:.3g} (scale {float(scale):.3g})"
    )

    directional = fd = rel = float("nan")
    if check_grad:
        direction = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        space = model.parameter_space
        if space is not None and x.shape[-1] == len(space):
            # perturb each parameter in proportion to its own range (Å next to pm² next to deg)
            low, high = space.bounds(dtype=x.dtype)
            direction = direction * (0.5 * (high - low)).to(x.device)
        weights = torch.randn(y.shape, generator=gen, dtype=y.real.dtype)

        def objective(inp):
            out = model(inp)
            return (out.real * weights).sum() if out.is_complex() else (out * weights).sum()

        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(xg), xg)
        assert torch.isfinite(grad).all(), "gradient has NaN or inf"
        directional = float((grad * direction).sum())
        with torch.no_grad():
            fd = float((objective(x + eps * direction) - objective(x - eps * direction)) / (2 * eps))
        rel = abs(directional - fd) / max(abs(fd), abs(directional), 1e-12)
        assert rel <= grad_rtol, (
            f"gradient along a random direction {directional:.8g} disagrees with the finite "
            f"difference {fd:.8g} (relative error {rel:.3g} > {grad_rtol})"
        )

    g1 = torch.Generator().manual_seed(seed + 1)
    g2 = torch.Generator().manual_seed(seed + 1)
    s1, s2 = model.simulate(x, generator=g1), model.simulate(x, generator=g2)
    assert s1.shape == y.shape, f"simulate changed the shape: {tuple(s1.shape)} vs {tuple(y.shape)}"
    assert torch.equal(s1, s2), "simulate is not reproducible under the same generator seed"
    return ConformanceReport(tuple(y.shape), batch_diff, directional, fd, rel)
