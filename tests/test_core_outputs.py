"""Outputs: file modes follow the umask, figures never switch matplotlib's backend, progress
off a terminal is plain lines."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from emverse.progress import LogProgress, make_progress
from emverse.run import run_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "recipes" / "example-linear-gaussian.toml"


def test_run_outputs_are_0644_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        out = run_recipe(EXAMPLE, tmp_path / "run", overrides=["options.n_observations=2"])
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 8
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    from emverse_pdf.gr_io import write_gr

    os.umask(0o002)
    try:
        path = write_gr(tmp_path / "x.gr", [0.0, 0.1], [0.0, 1.0])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_no_global_matplotlib_backend_switch_in_the_sources():
    sources = [*(REPO / "framework").rglob("*.py"), *(REPO / "plugins").glob("*/src/**/*.py")]
    offenders = [f"{p}:{n}" for p in sources for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"^\s*matplotlib\.use\(", line)]
    assert not offenders, offenders


def test_a_notebook_backend_survives_a_run(tmp_path):
    code = f"""
import matplotlib
matplotlib.use("svg")  # stands for a notebook's inline backend
import emverse
result = emverse.run(r"{EXAMPLE}", out=r"{tmp_path / 'run'}", **{{"options.n_observations": 2}})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "posterior_mean_rmse" in result.metrics
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_progress_off_a_terminal_is_one_line_per_ten_percent():
    stream, logged = io.StringIO(), []
    bar = make_progress(range(200), desc="sample", stream=stream, log=logged.append)
    assert isinstance(bar, LogProgress)
    for _ in bar:
        bar.set_postfix(loss=0.5)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10 and lines == logged
    assert lines[0].startswith("sample: 20/200 (10 %)") and lines[-1].startswith("sample: 200/200 (100 %)")
    assert "loss=0.5" in lines[-1]
    manual = make_progress(total=4, desc="fit", stream=stream, enabled=False, log=logged.append)
    for _ in range(4):
        manual.update(1)
    manual.close()
    assert logged[-1].startswith("fit: 4/4 (100 %)")


def test_a_sampler_reports_its_steps_through_the_run_and_only_when_slow():
    """Inner loops of components (here a diffusion sampler) report through the run's progress;
    outside a run, or while quicker than ``min_seconds``, they print nothing."""
    pytest.importorskip("emverse_diffusion")
    import torch
    from emverse.progress import reporting
    from emverse_diffusion.components import MLPDiffusionPrior
    from emverse_diffusion.samplers.ddim import DDIMSampler
    from emverse_diffusion.schedules import CosineSchedule

    prior = MLPDiffusionPrior(dim=2, hidden=8, depth=1, time_features=4, schedule=CosineSchedule())
    sampler = DDIMSampler(steps=12)
    calls, stream = [], io.StringIO()

    def progress(iterable=None, desc="", total=None, **kw):
        calls.append((desc, kw.get("min_seconds")))
        return make_progress(iterable, desc=desc, total=total, stream=stream, **kw)

    sampler.sample(prior, (3, 2), generator=torch.Generator().manual_seed(0))
    assert calls == []  # outside a run: untouched
    with reporting(progress):
        sampler.sample(prior, (3, 2), generator=torch.Generator().manual_seed(0))
    assert calls == [("sampling (DDIMSampler)", 5.0)]
    assert stream.getvalue() == ""  # 12 quick steps: quieter than min_seconds
    slow = make_progress(range(3), desc="slow", stream=stream, min_seconds=0.05)
    for _ in slow:
        time.sleep(0.03)
    assert stream.getvalue().splitlines()[-1].startswith("slow: 3/3 (100 %)")
