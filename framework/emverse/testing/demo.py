"""Small importable functions the core's own tests send to Dask workers."""

from __future__ import annotations

import os

import numpy as np


def demo_chunk(start: int, stop: int, seed: int) -> dict[str, np.ndarray]:
    """A deterministic chunk: items' indices and a seeded random draw per item.

    When ``EMVERSE_DEMO_LOG`` names a file, the chunk's start is appended to it
    (tests count recomputations); when ``EMVERSE_DEMO_FAIL_AT`` equals ``start``
    the chunk raises (tests interrupt a campaign).
    """
    log = os.environ.get("EMVERSE_DEMO_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{start}\n")
    if os.environ.get("EMVERSE_DEMO_FAIL_AT") == str(start):
        raise RuntimeError(f"demo failure at chunk starting {start}")
    rng = np.random.default_rng(seed)
    index = np.arange(start, stop)
    return {"index": index, "value": rng.normal(size=(stop - start, 4)).astype(np.float32)}
