"""Run directories over their life: unique names, --force, signals, dead runs, --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from emverse.checkpoint import load_checkpoint
from emverse.cli import main
from emverse.components import Component
from emverse.errors import EmverseError, RunInterrupted
from emverse.hookspecs import hookimpl
from emverse.interfaces import Task
from emverse.recipe import load_recipe
from emverse.run import INCOMPLETE, RunResult, default_run_dir, execute, resume_run, run_recipe
from emverse.runstate import read_status

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "recipes" / "example-linear-gaussian.toml"
TINY_TRAIN = Path(__file__).resolve().parent / "data" / "tiny-diffusion-train.toml"


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update(extra)
    return env


def _emverse(*args, **env):
    return subprocess.Popen([sys.executable, "-m", "emverse.cli", *args], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_default_run_directories_are_unique():
    recipe = load_recipe(EXAMPLE)
    names = {default_run_dir(recipe) for _ in range(50)}
    assert len(names) == 50
    assert all(n.name.startswith("example-linear-gaussian-") for n in names)


def test_force_replaces_only_a_run_directory(tmp_path):
    out = run_recipe(EXAMPLE, tmp_path / "run", overrides=["options.n_observations=2"])
    with pytest.raises(EmverseError, match="--force"):
        run_recipe(EXAMPLE, out)
    (out / "stale.txt").write_text("from the first run")
    run_recipe(EXAMPLE, out, overrides=["options.n_observations=2"], force=True)
    assert not (out / "stale.txt").exists() and (out / "metrics.json").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(EmverseError, match="no status.json"):
        run_recipe(EXAMPLE, other, force=True)
    assert (other / "thesis.tex").exists()


class _BadInputTask(Task):
    def run(self, ctx):
        raise EmverseError("options.data 'x.gr' holds no numbers; give a .gr file")


class _SleepTask(Task):
    """Sleeps in small steps; on interruption writes a checkpoint through its hook."""

    def run(self, ctx):
        (ctx.out_dir / "started").write_text("")
        for _ in range(600):
            time.sleep(0.05)
        return RunResult({"x": 1.0})

    def checkpoint(self, ctx):
        ctx.save_checkpoint("on-interrupt", {"step": torch.tensor(7)})


class _LifecyclePlugin:
    @hookimpl
    def emverse_components(self):
        yield Component("task", "test.bad_input", f"{__name__}:_BadInputTask")
        yield Component("task", "test.sleep", f"{__name__}:_SleepTask")


def _recipe(tmp_path, task):
    path = tmp_path / f"{task}.toml"
    path.write_text(f'schema_version = 1\nname = "t"\nseed = 1\ntask = "{task}"\n')
    return path


def test_bad_input_found_at_run_start_leaves_no_directory(emverse_plugin, tmp_path):
    emverse_plugin(_LifecyclePlugin())
    with pytest.raises(EmverseError, match="holds no numbers"):
        run_recipe(_recipe(tmp_path, "test.bad_input"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sigterm_marks_the_run_interrupted_and_checkpoints(emverse_plugin, tmp_path):
    """In-process: the signal handler turns SIGTERM into RunInterrupted; the task's
    checkpoint hook runs; status.json says interrupted; the report is written."""
    emverse_plugin(_LifecyclePlugin())
    recipe = load_recipe(_recipe(tmp_path, "test.sleep"))
    out = tmp_path / "run"
    import threading

    def kill_soon():
        deadline = time.monotonic() + 60
        while not (out / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_soon, daemon=True).start()
    with pytest.raises(RunInterrupted):
        execute(recipe, out, progress=False)
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert "--resume" in status["error"]
    assert (out / "on-interrupt.safetensors").exists() and (out / INCOMPLETE).exists()
    assert "interrupted" in (out / "report.html").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).tensors


def _kill_when(path: Path, sig=signal.SIGTERM):
    import threading

    def watch():
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, daemon=True).start()


@pytest.fixture
def one_thread():
    """Tiny networks: a second torch thread only waits on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sigterm_then_resume_gives_bit_identical_weights(tmp_path, one_thread):
    """A train run stopped by SIGTERM after its first checkpoint, then resumed in place,
    ends with exactly the weights of an uninterrupted run (in-process: fast)."""
    recipe = load_recipe(TINY_TRAIN)
    stopped = tmp_path / "stopped"
    _kill_when(stopped / "model-resume.safetensors")
    with pytest.raises(RunInterrupted):
        execute(recipe, stopped, progress=False)
    assert read_status(stopped)["status"] == "interrupted"
    assert not (stopped / "model.safetensors").exists()
    resume_run(stopped, progress=False)
    straight = execute(recipe, tmp_path / "straight", progress=False)
    a, b = _weights(straight / "model.safetensors"), _weights(stopped / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_run_whose_process_is_gone_is_reported_dead(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({
        "status": "running", "pid": int(gone.stdout), "host": os.uname().nodename,
        "heartbeat": "2026-01-01T00:00:00+00:00", "heartbeat_seconds": 30}))
    state = read_status(out)
    assert state["status"] == "dead" and f"process {int(gone.stdout)}" in state["reason"]
    assert main(["status", str(out)]) == 1
    (out / "status.json").write_text(json.dumps({  # another host: judged by the heartbeat alone
        "status": "running", "pid": 1, "host": "elsewhere", "heartbeat": "2026-01-01T00:00:00+00:00",
        "heartbeat_seconds": 30}))
    assert "no heartbeat" in read_status(out)["reason"]


@pytest.mark.slow
def test_kill_9_then_resume_gives_bit_identical_weights(tmp_path, one_thread):
    """A train run killed with SIGKILL is reported dead, and `emverse run --resume`
    finishes it with exactly the weights of an uninterrupted run."""
    killed = tmp_path / "killed"
    proc = _emverse("run", str(TINY_TRAIN), "--out", str(killed), "--no-progress",
                    EMVERSE_HEARTBEAT_SECONDS="0.2")
    _wait_for(killed / "model-resume.safetensors", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert json.loads((killed / "status.json").read_text())["status"] == "running"  # nobody updated it
    state = read_status(killed)
    assert state["status"] == "dead" and "is gone" in state["reason"]
    assert main(["status", str(killed)]) == 1

    straight = execute(load_recipe(TINY_TRAIN), tmp_path / "straight", progress=False)
    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    assert read_status(killed)["status"] == "complete" and not (killed / INCOMPLETE).exists()
    assert "resuming run" in (killed / "run.log").read_text()
    a, b = _weights(straight / "model.safetensors"), _weights(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert main(["run", "--resume", str(killed)]) == 2  # already complete


def test_resume_refuses_a_run_that_still_lives(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.toml").write_text(EXAMPLE.read_text())
    (out / "status.json").write_text(json.dumps({
        "status": "running", "pid": os.getpid(), "host": os.uname().nodename,
        "heartbeat": "2999-01-01T00:00:00+00:00"}))
    with pytest.raises(EmverseError, match="still running"):
        resume_run(out)


def test_a_stage_is_computed_once_and_read_back_on_resume(tmp_path):
    from emverse.run import RunContext

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "example-linear-gaussian.toml")
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(5, dtype=torch.float64) / 3, "n": torch.tensor(7)}

    first = RunContext(recipe, tmp_path).stage("draws 1", compute)
    again = RunContext(recipe, tmp_path, resume=True).stage("draws 1", compute)
    assert len(calls) == 1 and (tmp_path / "stages" / "draws_1.safetensors").is_file()
    assert torch.equal(first["x"], again["x"]) and int(again["n"]) == 7


def test_stages_that_share_a_generator_draw_what_one_loop_draws(tmp_path):
    """Three pieces drawing from one generator; the last two removed as if the run had been
    killed after the first: resumed, the first is read back with the generator's state and the
    others draw exactly what the uninterrupted loop drew."""
    from emverse.run import RunContext

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "example-linear-gaussian.toml")

    def pieces(ctx):
        gen = ctx.generator("draws")
        return [ctx.stage(f"piece-{k}", lambda: {"x": torch.randn(4, generator=gen)}, (gen,))["x"] for k in range(3)]

    straight = pieces(RunContext(recipe, tmp_path))
    for k in (1, 2):
        (tmp_path / "stages" / f"piece-{k}.safetensors").unlink()
    resumed = pieces(RunContext(recipe, tmp_path, resume=True))
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert not torch.equal(straight[0], straight[1])
