"""Simulated datasets: draws of a forward model's unknowns → observations → a Zarr store.

A store is a Zarr group written by :func:`emverse.parallel.map_to_zarr` (chunked,
resumable, Dask-mapped) holding

* ``parameters``   (N, …) float64 — the unknowns, drawn by the forward model's
  ``example_input`` (uniform in its parameter space, physical units, table order);
* ``observations`` (N, …) float32 — the forward model's output (its units), noise-free or
  drawn from its noise model (``noise``);

and, in its ``emverse_dataset`` attribute, the parameter space (names, units, bounds), the
forward model's recipe table and whether noise was drawn, so a model trained on it can refuse
a test set made for another space. Each chunk draws from its own seeded stream, so the store
does not depend on the chunking of the work or on where it ran.

Usage::

    write_dataset(model, 10_000, "train.zarr", chunk_size=250, seed=7)
    store_metadata("train.zarr")["parameter_space"]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emverse.errors import EmverseError
from emverse.parameter_space import space_to_metadata

__all__ = ["SimulateChunk", "write_dataset", "store_metadata", "METADATA_KEY"]

#: the store attribute that holds the parameter space, forward-model table and noise flag
METADATA_KEY = "emverse_dataset"


class SimulateChunk:
    """``fn(start, stop, seed)`` for ``map_to_zarr``: draw ``stop − start`` unknowns with the
    forward model's ``example_input`` (seeded by the chunk seed) and simulate them, ``batch_size``
    at a time. Runs inside the embedded (threaded) Dask cluster or on remote workers; the
    forward model travels with it."""

    def __init__(self, forward_model, dtype=torch.float64, batch_size: int = 16, noise: bool = False):
        self.forward_model = forward_model
        self.dtype = dtype
        self.batch_size = batch_size
        self.noise = noise

    def __call__(self, start: int, stop: int, seed: int) -> dict[str, np.ndarray]:
        generator = torch.Generator().manual_seed(int(seed))
        params = self.forward_model.example_input(stop - start, generator=generator, dtype=torch.float64)
        out = []
        with torch.no_grad():
            for s in range(0, params.shape[0], self.batch_size):
                x = params[s:s + self.batch_size].to(self.dtype)
                y = self.forward_model.simulate(x, generator=generator) if self.noise else self.forward_model(x)
                if not torch.isfinite(y).all():
                    raise EmverseError(
                        f"forward model returned non-finite values for the unknowns {x[0].flatten()[:6].tolist()}…; "
                        "check the parameter ranges and the forward model's settings"
                    )
                out.append(y.detach().to(torch.float32).cpu().numpy())
        return {"parameters": params.numpy(), "observations": np.concatenate(out)}


def write_dataset(forward_model, n: int, store: str | Path, *, chunk_size: int, seed: int, noise: bool = False,
                  scheduler: str = "", n_workers: int | None = None, dtype=torch.float64,
                  forward_model_table: dict | None = None, progress: bool = False,
                  log: Callable[[str], object] | None = None) -> Path:
    """Simulate (or resume) ``n`` items into the Zarr ``store`` (module docstring)."""
    from emverse.parallel import map_to_zarr

    space = getattr(forward_model, "parameter_space", None)
    attrs = {METADATA_KEY: {
        "parameter_space": space_to_metadata(space) if space is not None else None,
        "forward_model": forward_model_table or {},
        "noise": bool(noise),
    }}
    return map_to_zarr(SimulateChunk(forward_model, dtype, noise=noise), n, store, chunk_size=chunk_size, seed=seed,
                       scheduler=scheduler or None, n_workers=n_workers, attrs=attrs, progress=progress, log=log)


def store_metadata(store: str | Path) -> dict:
    """The ``emverse_dataset`` attribute of a store, or a clear error for a store without one."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    meta = dict(group.attrs).get(METADATA_KEY)
    if meta is None:
        raise EmverseError(f"{str(store)!r} has no {METADATA_KEY} metadata; simulate it with the simulate task")
    return meta
