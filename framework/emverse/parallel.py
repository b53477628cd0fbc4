"""Simulation campaigns: map a function over chunks of items on Dask, into a Zarr store.

``map_to_zarr(fn, n_items, store, chunk_size=..., seed=...)`` splits
``range(n_items)`` into chunks, calls ``fn(start, stop, chunk_seed)`` for each
on a Dask cluster and writes the returned arrays (leading axis
``stop - start``) into the store as each chunk finishes. A boolean array
``_done`` records finished chunks, so running the same call again after an
interruption computes only what is missing.

The cluster is an embedded ``LocalCluster`` by default; pass
``scheduler="tcp://host:port"`` (or set ``EMVERSE_DASK_SCHEDULER``, which
``emverse run --scheduler`` does) to use a running one. With worker processes
``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emverse.errors import EmverseError

DONE = "_done"


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index``: independent streams from one recipe seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def chunk_bounds(n_items: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n_items)) for start in range(0, n_items, chunk_size)]


def map_to_zarr(
    fn: Callable[[int, int, int], dict[str, np.ndarray]],
    n_items: int,
    store_path: str | Path,
    *,
    chunk_size: int,
    seed: int,
    scheduler: str | None = None,
    n_workers: int | None = None,
    attrs: dict | None = None,
    progress: bool = False,
    log: Callable[[str], object] | None = None,
) -> Path:
    import zarr

    if n_items <= 0:
        raise EmverseError(f"n_items must be > 0, got {n_items}")
    if chunk_size <= 0:
        raise EmverseError(f"chunk_size must be > 0, got {chunk_size}")
    store_path = Path(store_path)
    scheduler = scheduler or os.environ.get("EMVERSE_DASK_SCHEDULER") or None
    bounds = chunk_bounds(n_items, chunk_size)
    group = zarr.open_group(str(store_path), mode="a")
    layout = {"n_items": n_items, "chunk_size": chunk_size, "seed": seed}
    previous = group.attrs.get("emverse_map")
    if previous is not None and previous != layout:
        raise EmverseError(
            f"store {str(store_path)!r} was made with {previous}, not {layout}; "
            "use a new store path or the same n_items/chunk_size/seed to resume"
        )
    group.attrs["emverse_map"] = layout
    if attrs:
        group.attrs.update(attrs)
    if DONE not in group:
        group.create_array(DONE, shape=(len(bounds),), chunks=(len(bounds),), dtype="bool",
                           fill_value=False)
    done = group[DONE]
    finished = np.asarray(done[:])
    todo = [k for k in range(len(bounds)) if not finished[k]]
    if not todo:
        return store_path
    if log is not None and len(todo) < len(bounds):
        log(f"resumed: {store_path.name} holds {len(bounds) - len(todo)} of {len(bounds)} chunks; "
            f"computing the other {len(todo)}")

    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=n_workers or 1, threads_per_worker=1, processes=False,
                               dashboard_address=":0")
        client = Client(cluster)
    try:
        futures = {
            client.submit(fn, bounds[k][0], bounds[k][1], chunk_seed(seed, k), key=f"emverse-chunk-{k}-{seed}",
                          pure=False): k
            for k in todo
        }
        iterator = as_completed(futures)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(futures), desc="chunks")
        first_error: BaseException | None = None
        for future in iterator:
            k = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # keep the chunks that did finish; raise at the end
                first_error = first_error or exc
                continue
            _write_chunk(group, result, bounds[k], n_items, chunk_size)
            done[k] = True
        if first_error is not None:
            raise first_error
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return store_path


def _write_chunk(group, result: dict, bound: tuple[int, int], n_items: int, chunk_size: int) -> None:
    start, stop = bound
    for name, value in result.items():
        value = np.asarray(value)
        if value.shape[:1] != (stop - start,):
            raise EmverseError(
                f"chunk function returned {name!r} with leading axis {value.shape[:1]}; "
                f"expected {stop - start} items (stop - start)"
            )
        if name not in group:
            group.create_array(name, shape=(n_items, *value.shape[1:]),
                               chunks=(chunk_size, *value.shape[1:]), dtype=value.dtype)
        group[name][start:stop] = value


def is_complete(store_path: str | Path) -> bool:
    import zarr

    group = zarr.open_group(str(store_path), mode="r")
    return bool(np.all(group[DONE][:]))
