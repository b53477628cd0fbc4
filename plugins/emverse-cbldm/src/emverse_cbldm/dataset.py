"""The simulated CbLDM dataset: clusters → (PDF, weight-matrix blocks) in a Zarr store.

Arrays (N = n_structures, b = matrix_size / 2):

* ``pdf`` (N, 3000) float32: G(r) from ``pdf.debye`` with the CbLDM settings
  (qmin 0.7, qmax 25 Å⁻¹, qdamp 0.04 Å⁻¹, delta2 2.0 Å², B 0.3 Å², r = 0 … 29.99 Å
  step 0.01 Å), divided by its maximum;
* ``blocks`` (N, 4, b, b) float32: W_ij = exp(−d_ij²/t), zero-padded, in four blocks;
* ``positions`` (N, matrix_size, 3) float32: atom positions in Å (zero padding),
  centred, in the matrix's atom order;
* ``n_atoms`` (N,) int32, ``type_index`` (N,) int16 (into ``STRUCTURE_TYPES``),
  ``element_index`` (N,) int16 (into the store's ``elements`` attribute),
  ``nn_distance_angstrom`` (N,) float32;
* ``is_val`` (N,) bool: the fixed-seed validation split.

The store is written chunk by chunk by :func:`emverse.parallel.map_to_zarr` (Dask) and
resumes after an interruption.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from emverse.errors import EmverseError
from emverse.interfaces import Configurable

from .clusters import (
    METALLIC_RADIUS_ANGSTROM,
    STRUCTURE_TYPES,
    ClusterSpec,
    build_cluster,
    catalogue,
    to_blocks,
    weight_matrix,
)


def simulate_pdfs(positions_list: list[np.ndarray], element: str | list[str] = "Au") -> np.ndarray:
    """Max-normalised G(r) (n, 3000) of clusters (positions in Å) with the CbLDM settings.

    One-element particles: the form factor cancels, so ``element`` does not matter.
    """
    import torch

    from .pdf import cbldm_gr

    n_max = max(p.shape[0] for p in positions_list)
    pos = torch.zeros(len(positions_list), n_max, 3, dtype=torch.float64)
    mask = torch.zeros(len(positions_list), n_max, dtype=torch.bool)
    for i, p in enumerate(positions_list):
        pos[i, : p.shape[0]] = torch.as_tensor(p)
        mask[i, : p.shape[0]] = True
    with torch.no_grad():
        g = cbldm_gr(pos, mask, element if isinstance(element, str) else element[0])
    g = g / g.amax(dim=1, keepdim=True)
    return g.numpy()


class ChunkMaker:
    """``fn(start, stop, seed)`` for :func:`map_to_zarr` (picklable: plain data only)."""

    def __init__(
        self, specs: list[tuple], matrix_size: int, t_angstrom2: float, elements: list[str]
    ):
        self.specs = specs
        self.matrix_size = matrix_size
        self.t = t_angstrom2
        self.elements = elements

    def __call__(self, start: int, stop: int, seed: int) -> dict[str, np.ndarray]:
        clusters = [
            ClusterSpec(st, tuple(size), el, nn) for st, size, el, nn in self.specs[start:stop]
        ]
        positions = [build_cluster(c) for c in clusters]
        n = len(clusters)
        blocks = np.stack(
            [to_blocks(weight_matrix(p, self.t, self.matrix_size)) for p in positions]
        )
        padded = np.zeros((n, self.matrix_size, 3), dtype=np.float32)
        for i, p in enumerate(positions):
            padded[i, : p.shape[0]] = p
        return {
            "pdf": simulate_pdfs(positions).astype(np.float32),
            "blocks": blocks.astype(np.float32),
            "positions": padded,
            "n_atoms": np.array([p.shape[0] for p in positions], dtype=np.int32),
            "type_index": np.array(
                [STRUCTURE_TYPES.index(c.structure_type) for c in clusters], dtype=np.int16
            ),
            "element_index": np.array(
                [self.elements.index(c.element) for c in clusters], dtype=np.int16
            ),
            "nn_distance_angstrom": np.array(
                [c.nn_distance_angstrom for c in clusters], dtype=np.float32
            ),
        }


def choose_structures(entries, n: int, rng: np.random.Generator, structure_types) -> list:
    """``n`` catalogue entries without replacement, as balanced over structure types as the
    catalogue allows (each type gets ≈ n/types; a type with fewer entries gives its share away)."""
    if n > len(entries):
        raise EmverseError(
            f"n_structures = {n} exceeds the {len(entries)} clusters of the catalogue for these types, "
            "elements and atom counts; lower n_structures or widen the catalogue"
        )
    by_type = {st: [e for e in entries if e[0].structure_type == st] for st in structure_types}
    by_type = {st: [v[i] for i in rng.permutation(len(v))] for st, v in by_type.items() if v}
    quota = {st: 0 for st in by_type}
    left = n
    while left > 0:
        open_types = [st for st in by_type if quota[st] < len(by_type[st])]
        share = max(1, left // len(open_types))
        for st in open_types:
            take = min(share, len(by_type[st]) - quota[st], left)
            quota[st] += take
            left -= take
            if left == 0:
                break
    chosen = [e for st in by_type for e in by_type[st][: quota[st]]]
    return [chosen[i] for i in rng.permutation(len(chosen))]


class CbldmDataset(Configurable):
    """Dataset component ``cbldm.dataset``: makes (or resumes, or opens) the Zarr store."""

    def __init__(self, params, store_path: Path, seed: int):
        self.params = params
        self.store_path = Path(store_path)
        self.seed = seed

    @classmethod
    def from_params(cls, params, ctx=None):
        if ctx is None:
            raise EmverseError("cbldm.dataset needs the run context (paths and seed)")
        store = ctx.out_dir / "dataset.zarr" if not params.store else ctx.resolve_path(params.store)
        return cls(params, store, ctx.seed)

    def ensure(self, log=None) -> Path:
        """Write the store if it is missing or incomplete; return its path."""
        import zarr
        from emverse.parallel import is_complete, map_to_zarr

        p = self.params
        if p.min_atoms > p.max_atoms:
            raise EmverseError(f"min_atoms {p.min_atoms} > max_atoms {p.max_atoms}; swap them")
        if p.max_atoms > p.matrix_size:
            raise EmverseError(
                f"max_atoms {p.max_atoms} does not fit matrix_size {p.matrix_size}; raise matrix_size "
                f"or set max_atoms ≤ {p.matrix_size}"
            )
        if (self.store_path / "is_val").exists() and is_complete(self.store_path):
            return self.store_path
        elements = list(p.elements) or list(METALLIC_RADIUS_ANGSTROM)
        entries = catalogue(p.structure_types, tuple(elements), p.min_atoms, p.max_atoms)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 95005]))
        chosen = choose_structures(entries, p.n_structures, rng, p.structure_types)
        specs = [
            (c.structure_type, list(c.size), c.element, c.nn_distance_angstrom) for c, _ in chosen
        ]
        if log:
            log.info(
                "cbldm.dataset: %d structures from a catalogue of %d -> %s",
                len(specs),
                len(entries),
                self.store_path,
            )
        map_to_zarr(
            ChunkMaker(specs, p.matrix_size, p.t_angstrom2, elements),
            len(specs),
            self.store_path,
            chunk_size=p.chunk_size,
            seed=self.seed,
            scheduler=p.scheduler or None,
            n_workers=p.n_workers,
            attrs={
                "structure_types": list(STRUCTURE_TYPES),
                "elements": elements,
                "t_angstrom2": p.t_angstrom2,
                "matrix_size": p.matrix_size,
                "pdf": "G(r) with qmin 0.7, qmax 25 1/A, qdamp 0.04, delta2 2.0, B 0.3 A^2, r 0-29.99 A step 0.01, / max",
            },
            log=log.info if log is not None else None,
        )
        group = zarr.open_group(str(self.store_path), mode="a")
        n = len(specs)
        n_val = max(1, int(round(p.val_fraction * n))) if p.val_fraction > 0 else 0
        split_rng = np.random.default_rng(np.random.SeedSequence([self.seed, 9505]))
        is_val = np.zeros(n, dtype=bool)
        is_val[split_rng.permutation(n)[:n_val]] = True
        if "is_val" not in group:
            group.create_array("is_val", shape=(n,), chunks=(n,), dtype="bool")
        group["is_val"][:] = is_val
        return self.store_path

    def summary(self) -> dict:
        """The written store in numbers (for the core ``simulate`` task): structures, validation
        share, mean atom count, and a table of the structure types with their atom counts."""
        import zarr

        from .clusters import STRUCTURE_TYPES

        data = self.load("all")
        is_val = np.asarray(zarr.open_group(str(self.store_path), mode="r")["is_val"][:])
        rows = [[st, int(sel.sum()), int(data["n_atoms"][sel].min()), int(data["n_atoms"][sel].max())]
                for ti, st in enumerate(STRUCTURE_TYPES) if (sel := data["type_index"] == ti).any()]
        metrics = {"n_structures": float(len(data["pdf"])), "n_val": float(is_val.sum()),
                   "mean_atoms": float(data["n_atoms"].mean())}
        return {"metrics": metrics,
                "tables": [("structures by type", ["type", "count", "min atoms", "max atoms"], rows)]}

    def load(self, split: str = "train") -> dict:
        """All arrays of one split ("train", "val" or "all") as numpy arrays."""
        import zarr

        self.ensure()
        group = zarr.open_group(str(self.store_path), mode="r")
        is_val = np.asarray(group["is_val"][:])
        if split == "train":
            idx = np.flatnonzero(~is_val)
        elif split == "val":
            idx = np.flatnonzero(is_val)
        elif split == "all":
            idx = np.arange(is_val.size)
        else:
            raise EmverseError(f"split {split!r} is unknown; use 'train', 'val' or 'all'")
        names = [
            "pdf",
            "blocks",
            "positions",
            "n_atoms",
            "type_index",
            "element_index",
            "nn_distance_angstrom",
        ]
        out = {name: np.asarray(group[name][:])[idx] for name in names}
        out["index"] = idx
        out["elements"] = list(group.attrs["elements"])
        return out
