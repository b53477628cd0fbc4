"""Testing kit for plugin authors.

* :func:`check_forward_model` — the conformance check every ForwardModel runs
  (shapes and batching, gradient vs finite differences in float64, no NaN,
  determinism).
* the pytest fixture ``emverse_plugin`` (auto-loaded through the ``pytest11``
  entry point) registers a plugin object for one test and removes it after.
* :func:`shared_data_dir` — the shared reference data folder.
"""

from __future__ import annotations

from emverse.paths import shared_data_dir
from emverse.testing.conformance import ConformanceReport, check_forward_model
from emverse.testing.demo import demo_chunk

__all__ = ["ConformanceReport", "check_forward_model", "demo_chunk", "shared_data_dir"]
