"""Simulated CBED datasets: uniform parameter draws -> ``bloch.cbed`` patterns -> Zarr.

A store is a Zarr group written by :func:`emverse.parallel.map_to_zarr`
(chunked, resumable, Dask-mapped) holding

* ``patterns``   (N, H, W) float32 — the forward model's output (its units);
* ``parameters`` (N, P)    float64 — physical units, table order;

and, in its attributes, the parameter space (names, units, bounds) and the
forward model's recipe table, so a model trained on it can refuse a test set
made for another space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.parameter_space import ParameterSpace

from .parameter_table import check_same_space, space_from_metadata, space_to_metadata

#: in-memory cache limit: stores smaller than this are read once into RAM
IN_MEMORY_BYTES = 2 * 1024**3


class SimulateChunk:
    """``fn(start, stop, seed)`` for ``map_to_zarr``: draw ``stop − start`` parameter
    vectors uniformly in ``space`` (seeded by the chunk seed) and render them.

    Runs inside the embedded (threaded) Dask cluster or on remote workers; the
    forward model travels with it.
    """

    def __init__(self, forward_model, space: ParameterSpace, dtype=torch.float64,
                 batch_size: int = 16):
        self.forward_model = forward_model
        self.space = space
        self.dtype = dtype
        self.batch_size = batch_size

    def __call__(self, start: int, stop: int, seed: int) -> dict[str, np.ndarray]:
        generator = torch.Generator().manual_seed(int(seed))
        params = self.space.sample_uniform(stop - start, generator=generator, dtype=torch.float64)
        patterns = []
        with torch.no_grad():
            for s in range(0, params.shape[0], self.batch_size):
                x = params[s:s + self.batch_size].to(self.dtype)
                y = self.forward_model(x)
                if not torch.isfinite(y).all():
                    raise EmverseError(
                        f"forward model returned non-finite pixels for parameters {x[0].tolist()}; "
                        "check the parameter ranges and the forward model's settings"
                    )
                patterns.append(y.detach().to(torch.float32).cpu().numpy())
        return {"parameters": params.numpy(), "patterns": np.concatenate(patterns)}


def simulate_dataset(forward_model, space: ParameterSpace, n_patterns: int, store: Path, *,
                     chunk_size: int, seed: int, scheduler: str = "", n_workers: int | None = None,
                     dtype=torch.float64, forward_model_table: dict | None = None,
                     progress: bool = False, log=None) -> Path:
    """Simulate (or resume) a dataset of ``n_patterns`` into the Zarr ``store``."""
    from emverse.parallel import map_to_zarr

    attrs = {
        "emverse_cdi": {
            "parameter_space": space_to_metadata(space),
            "forward_model": forward_model_table or {},
        }
    }
    return map_to_zarr(
        SimulateChunk(forward_model, space, dtype),
        n_patterns,
        store,
        chunk_size=chunk_size,
        seed=seed,
        scheduler=scheduler or None,
        n_workers=n_workers,
        attrs=attrs,
        progress=progress,
        log=log,
    )


class PatternDataset:
    """Read access to a finished store: ``len``, ``parameters`` (N, P) and
    ``patterns_at(indices)`` (float32 tensor (len(indices), H, W))."""

    def __init__(self, path: str | Path, space: ParameterSpace | None = None,
                 max_items: int | None = None):
        import zarr
        from emverse.parallel import is_complete

        self.path = Path(path)
        if not (self.path / "zarr.json").exists() and not (self.path / ".zgroup").exists():
            raise EmverseError(
                f"dataset {str(self.path)!r} is not a Zarr store; run the cdi.dataset task first "
                "or fix the path"
            )
        if not is_complete(self.path):
            raise EmverseError(
                f"dataset {str(self.path)!r} is incomplete (an interrupted simulation); run the "
                "cdi.dataset task again with the same store to resume it"
            )
        group = zarr.open_group(str(self.path), mode="r")
        meta = dict(group.attrs).get("emverse_cdi")
        if meta is None:
            raise EmverseError(f"dataset {str(self.path)!r} has no emverse_cdi metadata; "
                               "simulate it with the cdi.dataset task")
        self.space = space_from_metadata(meta["parameter_space"])
        if space is not None:
            check_same_space(space, self.space, f"dataset {str(self.path)!r}")
        n = group["parameters"].shape[0]
        self.n = min(n, max_items) if max_items else n
        self.parameters = torch.from_numpy(np.asarray(group["parameters"][: self.n]))
        self._patterns = group["patterns"]
        self.pattern_shape = tuple(self._patterns.shape[1:])
        nbytes = self.n * int(np.prod(self.pattern_shape)) * 4
        self._memory = (torch.from_numpy(np.asarray(self._patterns[: self.n], dtype=np.float32))
                        if nbytes <= IN_MEMORY_BYTES else None)

    def __len__(self) -> int:
        return self.n

    def patterns_at(self, indices) -> torch.Tensor:
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self._memory is not None:
            return self._memory[indices]
        order = torch.argsort(indices)
        sorted_idx = indices[order].numpy()
        block = np.asarray(self._patterns.get_orthogonal_selection((sorted_idx, slice(None), slice(None))),
                           dtype=np.float32)
        out = torch.empty((len(indices), *self.pattern_shape), dtype=torch.float32)
        out[order] = torch.from_numpy(block)
        return out

    def all_patterns(self) -> torch.Tensor:
        return self.patterns_at(torch.arange(self.n))

    def mean_intensity(self, max_items: int = 2048) -> float:
        idx = torch.arange(min(self.n, max_items))
        return float(self.patterns_at(idx).double().mean())
