"""``mep.rendered``: crystals → rescaled phase volumes in Zarr stores (written by the core ``simulate`` task).

Up to three stores are written under the table's ``output`` (relative to the recipe):
``train.zarr`` (random in-plane rotation, ``train_shape`` crops), ``val.zarr``
and ``test.zarr`` (``test_shape`` volumes, no rotation), each with arrays

* ``volume`` (n, depth, H, W) float32: phase (rad) × ``phase_scale``;
* ``material`` (n,) int32, ``axis`` (n,) int8 (0=a, 1=b, 2=c),
  ``spacegroup`` (n,) int16, ``n_atoms`` (n,) int32;

and attrs ``phase_scale`` (1/rad), ``sampling_angstrom``, ``voltage_kv``.
Item ``i`` is material ``i // len(axes)`` seen along ``axes[i % len(axes)]``;
every random draw of item ``i`` comes from ``numpy.random.default_rng([seed,
split, i])`` (materials from ``[seed, split, material]``), so the numbers do not
depend on the chunking and an interrupted run resumes (``map_to_zarr``).
Train, validation and test materials come from separate seed streams (random
generator) or from disjoint CIF files (a CIF directory is split in order: the
last ``n_test_materials`` files are the test set, the ``n_val_materials``
before them the validation set).
"""

from __future__ import annotations

import functools
from pathlib import Path

import attrs
import numpy as np
from emverse.errors import EmverseError
from emverse.interfaces import Configurable

from emverse_mep.crystals import random_crystal, read_cif_directory
from emverse_mep.render import render_volume

SPLITS = {"train": 0, "test": 1, "val": 2}


def _material(params, split: str, index: int, cifs):
    if cifs is not None:
        names = cifs[split]
        if not names:
            raise EmverseError(f"no CIF crystals for the {split} split; add .cif files or lower n_{split}_materials")
        return names[index % len(names)][1]
    rng = np.random.default_rng([params["seed"], SPLITS[split], index, 7])
    return random_crystal(
        rng,
        params["elements"],
        min_distance_angstrom=params["min_distance_angstrom"],
        max_lattice_angstrom=params["max_lattice_angstrom"],
    )


def render_items(start: int, stop: int, chunk_seed: int, *, params: dict, split: str, cifs=None):
    """The chunk ``[start, stop)`` of one split (``chunk_seed`` is unused:
    draws are keyed on the item index so chunking does not change them)."""
    del chunk_seed
    axes = params["axes"]
    shape = params["train_shape"] if split == "train" else params["test_shape"]
    volumes, materials, axis_ids, groups, counts = [], [], [], [], []
    cache: dict[int, object] = {}
    for i in range(start, stop):
        material = i // len(axes)
        if material not in cache:
            cache[material] = _material(params, split, material, cifs)
        atoms = cache[material]
        rng = np.random.default_rng([params["seed"], SPLITS[split], i, 11])
        phase = render_volume(
            atoms, shape, rng, axis=axes[i % len(axes)],
            sampling_angstrom=params["sampling_angstrom"], voltage_kv=params["voltage_kv"],
            vacancy_fraction=params["vacancy_fraction"], rotate=params["rotate"] and split == "train",
        )
        volumes.append(phase * params["phase_scale"])
        materials.append(material)
        axis_ids.append(axes[i % len(axes)])
        groups.append(int(atoms.info.get("spacegroup", 0)))
        counts.append(len(atoms))
    return {
        "volume": np.stack(volumes).astype(np.float32),
        "material": np.asarray(materials, dtype=np.int32),
        "axis": np.asarray(axis_ids, dtype=np.int8),
        "spacegroup": np.asarray(groups, dtype=np.int16),
        "n_atoms": np.asarray(counts, dtype=np.int32),
    }


def estimate_phase_scale(params: dict, n_pilot: int, cifs=None) -> float:
    """1 / std of the phase (rad) over ``n_pilot`` training volumes: the
    constant that makes the data std ≈ 1 (the paper's rescaling)."""
    pilot = render_items(0, n_pilot, 0, params={**params, "phase_scale": 1.0}, split="train", cifs=cifs)
    std = float(pilot["volume"].std())
    if not std > 0:
        raise EmverseError("the pilot volumes are all zero; check the elements / CIFs and the volume shape")
    return 1.0 / std


def load_volumes(path, first: int = 0, count: int | None = None):
    """(volumes float32 (n, D, H, W), attrs dict) from a ``mep.rendered`` store."""
    import zarr
    from emverse.parallel import is_complete

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several types here
        raise EmverseError(
            f"data store {str(path)!r} cannot be opened ({exc}); run the mep-cpu-dataset recipe (task simulate, [dataset] mep.rendered) first"
        ) from None
    if "volume" not in group:
        raise EmverseError(f"data store {str(path)!r} has no 'volume' array; it was not written by mep.rendered")
    if not is_complete(path):
        raise EmverseError(f"data store {str(path)!r} is incomplete; run its simulate recipe again to resume it")
    n = group["volume"].shape[0]
    stop = n if count is None else first + count
    if first >= n or stop > n:
        raise EmverseError(
            f"asked for volumes [{first}, {stop}) of {str(path)!r}, which holds {n}; lower first/count"
        )
    return np.asarray(group["volume"][first:stop]), dict(group.attrs)


class RenderedVolumes(Configurable):
    """``[dataset] type = "mep.rendered"``: crystals rendered into training crops and validation
    and test volumes, three Zarr stores under ``output`` (``train.zarr``, ``val.zarr``,
    ``test.zarr``), written (or resumed, chunk by chunk) by the core ``simulate`` task."""

    def __init__(self, params, output: Path, cif_directory: Path | None, seed: int):
        self.params, self.output, self.cif_directory, self.seed = params, Path(output), cif_directory, int(seed)

    @classmethod
    def from_params(cls, params, ctx=None):
        if ctx is None:
            raise EmverseError("mep.rendered needs the run context (paths and seed)")
        cifs = ctx.resolve_path(params.cif_directory) if params.cif_directory else None
        return cls(params, ctx.resolve_path(params.output), cifs, ctx.seed)

    def _splits(self):
        opts = self.params
        return (("train", opts.n_train_materials), ("val", opts.n_val_materials), ("test", opts.n_test_materials))

    def ensure(self, log=None) -> Path:
        """Render every split not yet complete; return the folder of the three stores."""
        from emverse.parallel import map_to_zarr

        opts = self.params
        info = log.info if log is not None else (lambda *a: None)
        params = {**attrs.asdict(opts), "seed": self.seed}
        self.output.mkdir(parents=True, exist_ok=True)
        cifs = None
        if self.cif_directory is not None:
            crystals = read_cif_directory(self.cif_directory, opts.max_lattice_angstrom)
            n_test = min(opts.n_test_materials, len(crystals) - 1) if len(crystals) > 1 else 0
            n_val = min(opts.n_val_materials, len(crystals) - 1 - n_test) if len(crystals) > 1 + n_test else 0
            n_train = len(crystals) - n_test - n_val
            cifs = {"train": crystals[:n_train], "val": crystals[n_train : n_train + n_val],
                    "test": crystals[n_train + n_val :]}
            info("%d CIF crystals: %d train, %d validation, %d test", len(crystals), n_train, n_val, n_test)
        scale = float(opts.phase_scale) if opts.phase_scale > 0 else estimate_phase_scale(params, opts.scale_pilot, cifs)
        params["phase_scale"] = scale
        info("phase scale %.4g per rad (data std ≈ 1)", scale)
        shared_attrs = {"phase_scale": scale, "sampling_angstrom": list(opts.sampling_angstrom),
                        "voltage_kv": opts.voltage_kv, "axes": list(opts.axes)}
        for split, n_materials in self._splits():
            if n_materials == 0:
                continue
            fn = functools.partial(render_items, params=params, split=split, cifs=cifs)
            map_to_zarr(
                fn, n_materials * len(opts.axes), self.output / f"{split}.zarr", chunk_size=opts.chunk_size,
                seed=self.seed, scheduler=opts.scheduler or None, n_workers=opts.n_workers,
                attrs={**shared_attrs, "split": split,
                       "shape": list(opts.train_shape if split == "train" else opts.test_shape)},
                log=info,
            )
        return self.output

    def summary(self) -> dict:
        """The phase scale and, per split, its volumes' count, std and mean; a figure of training crops."""
        metrics: dict[str, float] = {}
        for split, n_materials in self._splits():
            if n_materials == 0:
                continue
            volumes, attributes = load_volumes(self.output / f"{split}.zarr")
            metrics["phase_scale"] = float(attributes["phase_scale"])
            metrics[f"{split}_items"] = float(len(volumes))
            metrics[f"{split}_std"] = float(volumes.std())
            metrics[f"{split}_mean"] = float(volumes.mean())
        fig = _figure(self.output)
        return {"metrics": metrics, "figures": {"dataset_examples": fig} if fig is not None else {}}


def _figure(out):
    from emverse import figures as agg  # explicit Agg canvas, no backend switch

    try:
        volumes, _ = load_volumes(out / "train.zarr", 0, None)
    except EmverseError:
        return None
    n = min(4, len(volumes))
    depth = volumes.shape[1]
    fig, axes = agg.subplots(n, depth + 1, figsize=(1.6 * (depth + 1), 1.6 * n), squeeze=False)
    for r in range(n):
        for d in range(depth):
            axes[r, d].imshow(volumes[r, d], cmap="magma")
            axes[r, d].set_axis_off()
        axes[r, depth].imshow(volumes[r].sum(0), cmap="magma")
        axes[r, depth].set_axis_off()
    axes[0, depth].set_title("depth sum", fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["RenderedVolumes", "render_items", "load_volumes", "estimate_phase_scale"]
