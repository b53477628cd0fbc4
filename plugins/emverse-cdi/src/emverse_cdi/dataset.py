"""Reading simulated CBED datasets: the Zarr stores of the core ``simulate`` task
(:mod:`emverse.simulation`: ``parameters`` (N, P) float64 in physical units, ``observations``
(N, H, W) float32 patterns, and the parameter space in the ``emverse_dataset`` attribute).
Stores written by the retired ``cdi.dataset`` task (``patterns``, ``emverse_cdi``) read too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from emverse.errors import EmverseError
from emverse.parameter_space import ParameterSpace
from emverse.simulation import METADATA_KEY

from .parameter_table import check_same_space, space_from_metadata

#: in-memory cache limit: stores smaller than this are read once into RAM
IN_MEMORY_BYTES = 2 * 1024**3


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
                f"dataset {str(self.path)!r} is not a Zarr store; run the simulate task first "
                "or fix the path"
            )
        if not is_complete(self.path):
            raise EmverseError(
                f"dataset {str(self.path)!r} is incomplete (an interrupted simulation); run the "
                "simulate task again with the same store to resume it"
            )
        group = zarr.open_group(str(self.path), mode="r")
        attributes = dict(group.attrs)
        meta = attributes.get(METADATA_KEY) or attributes.get("emverse_cdi")
        if meta is None or not meta.get("parameter_space"):
            raise EmverseError(f"dataset {str(self.path)!r} has no parameter space in its metadata; "
                               "simulate it with the simulate task and a forward model with a parameter space")
        self.space = space_from_metadata(meta["parameter_space"])
        if space is not None:
            check_same_space(space, self.space, f"dataset {str(self.path)!r}")
        n = group["parameters"].shape[0]
        self.n = min(n, max_items) if max_items else n
        self.parameters = torch.from_numpy(np.asarray(group["parameters"][: self.n]))
        self._patterns = group["observations"] if "observations" in group else group["patterns"]
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
