"""A fresh virtual environment with only the core and emverse-pdf (slow: it installs packages).

It must fit a cluster cut from a CIF to a measured .gr with no ModuleNotFoundError, and a recipe
that names a component of a plugin it lacks (cdi.transformer) must say which distribution provides it.
CI runs this after the default suite (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=kwargs.pop("cwd", REPO),
                          timeout=1800, **kwargs)


@pytest.mark.slow
def test_core_and_pdf_alone_fit_a_cif_cluster_and_name_missing_plugins(tmp_path):
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    done = _run([*pip, "torch==2.13.0"])  # the CPU wheel, as README installs it
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run([*pip, ".[run,crystal]", "./plugins/emverse-pdf"])
    assert done.returncode == 0, done.stderr[-2000:]
    emverse = str(venv / "bin" / "emverse")
    listed = _run([emverse, "plugins"])
    assert listed.returncode == 0 and "pdf.debye" in listed.stdout and "cdi." not in listed.stdout

    out = tmp_path / "fit"
    fit = _run([emverse, "run", "recipes/pdf-fit-au144-experimental.toml", "--out", str(out), "--no-progress",
                "--set", "options.structure=structures/Au.cif@6.5", "--set", "refiner.steps=3"])
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "ModuleNotFoundError" not in fit.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    rwp = [v for k, v in metrics.items() if "rwp" in k]
    assert rwp and all(0 < v < 1 for v in rwp), metrics

    missing = _run([emverse, "recipe", "validate", "recipes/cbed-mgb2-infer.toml"])
    assert missing.returncode == 2
    assert "provided by emverse-cdi" in missing.stderr + missing.stdout, missing.stderr
