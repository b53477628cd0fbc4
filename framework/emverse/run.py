"""The runner: from a validated recipe to a finished run directory.

A run directory holds ``recipe.toml`` (resolved, defaults filled),
``environment.json`` (versions, platform, seed), ``metrics.json``,
``figures/*.png``, ``tables.json``, ``report.html``, ``run.log`` and any
checkpoints. While a run is in progress (or after it failed or was
interrupted) the directory holds an ``INCOMPLETE`` marker and ``status.json``
says so (with PID and heartbeat, see :mod:`emverse.runstate`); ``metrics.json``
appears only when the task finished. ``emverse run --resume DIR`` continues
an unfinished run in place (:func:`resume_run`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import secrets
import shutil
import subprocess
import sys
import time
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import tomli_w
import tomllib

from emverse import paths
from emverse.errors import EmverseError, RunInterrupted
from emverse.io import write_json, write_text
from emverse.params import ComponentSpec
from emverse.progress import reporting
from emverse.recipe import (
    COMPONENT_TABLES,
    LIST_TABLES,
    Recipe,
    load_recipe,
    recipe_input_paths,
    validate_recipe,
)
from emverse.registry import Registry, get_registry
from emverse.runstate import StatusFile, interrupt_on_signals, read_status

INCOMPLETE = "INCOMPLETE"


@attrs.define
class RunResult:
    """What a task returns: named scalar metrics (written to metrics.json) and, optionally,
    their units (``{"rmsd": "Å"}``, written to units.json; names ending in ``_angstrom``,
    ``_mrad``, ``_seconds``... need none)."""

    metrics: dict[str, float] = attrs.field(factory=dict)
    units: dict[str, str] = attrs.field(factory=dict)


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the recipe seed and a stream name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RunContext:
    """Everything a task needs: paths, device, seeded generators, component builders, outputs."""

    def __init__(self, recipe: Recipe, out_dir: Path, registry: Registry | None = None,
                 log: logging.Logger | None = None, progress: bool = True, resume: bool = False):
        import torch

        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.registry = registry or get_registry()
        self.seed = recipe.seed
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[recipe.dtype]
        if recipe.device.startswith("cuda") and not torch.cuda.is_available():
            raise EmverseError(f"device {recipe.device!r} was asked for but no CUDA GPU is available; "
                               "set device = \"cpu\" (or --set device=cpu)")
        self.device = torch.device(recipe.device)
        self.log = log or logging.getLogger(f"emverse.run.{recipe.name}")
        self.show_progress = progress
        #: True when ``emverse run --resume`` continues this run directory: pick up checkpoints
        self.resume = resume
        self.interrupt_callbacks: list = []
        self.tables: dict[str, dict] = {}
        self.texts: dict[str, str] = {}
        self.figures: list[str] = []

    # -- options, paths and randomness -------------------------------------
    @property
    def options(self):
        return self.recipe.task.params

    def resolve_path(self, path: str | Path) -> Path:
        return paths.resolve(path, self.recipe.base_dir)

    def generator(self, name: str = "default", device=None):
        import torch

        gen = torch.Generator(device=device or "cpu")
        gen.manual_seed(stable_seed(self.seed, name))
        return gen

    def numpy_rng(self, name: str = "default"):
        import numpy as np

        return np.random.default_rng(stable_seed(self.seed, name))

    # -- components ---------------------------------------------------------
    def has(self, table: str) -> bool:
        return table in self.recipe.components

    def spec(self, table: str) -> ComponentSpec:
        if table not in self.recipe.components:
            raise EmverseError(f"this task needs a [{table}] table in the recipe; add one")
        return self.recipe.components[table]

    def build(self, table: str):
        if table in LIST_TABLES:
            return [self.build_spec(s, LIST_TABLES[table]) for s in self.recipe.components.get(table, [])]
        kind = COMPONENT_TABLES.get(table)
        if kind is None:
            raise EmverseError(f"{table!r} is not a component table; use one of "
                               f"{', '.join([*COMPONENT_TABLES, *LIST_TABLES])}")
        return self.build_spec(self.spec(table), kind)

    def build_spec(self, spec: ComponentSpec, kind: str):
        record = self.registry.get(kind, spec.type)
        impl = record.load_impl()
        builder = getattr(impl, "from_params", None)
        obj = builder(spec.params, self) if builder is not None else impl(spec.params)
        to = getattr(obj, "to", None)
        if callable(to) and hasattr(obj, "parameters"):
            obj = obj.to(device=self.device)
        return obj

    # -- outputs -------------------------------------------------------------
    def progress(self, iterable=None, desc: str = "", total: int | None = None, **kwargs):
        """A tqdm bar on a terminal; off a terminal one line per 10 % (stderr and run.log)."""
        from emverse.progress import make_progress

        return make_progress(iterable, desc=desc, total=total, enabled=self.show_progress,
                             log=self.log.info, **kwargs)

    def stage(self, name: str, compute, generators=()) -> dict:
        """A finished piece of the run's work, kept in ``stages/<name>.safetensors``: ``compute()``
        returns a dict of tensors, written atomically once it is whole; when ``emverse run --resume``
        reaches the same stage again the file is read back instead. Only for work that is
        deterministic given the recipe (every draw from a named ``ctx.generator``), so a resumed run
        equals an uninterrupted one. ``generators`` that the piece draws from (and later pieces go
        on drawing from) have their state kept with it and restored, so a run split into pieces
        draws exactly what one uninterrupted loop draws."""
        from emverse.checkpoint import load_checkpoint, save_checkpoint

        path = self.out_dir / "stages" / f"{_safe(name)}.safetensors"
        if path.exists():
            self.log.info("resumed: stage %s restored from %s", name, path.relative_to(self.out_dir))
            tensors = dict(load_checkpoint(path).tensors)
            for k, generator in enumerate(generators):
                generator.set_state(tensors.pop(f"_generator.{k}"))
            return tensors
        tensors = {k: v.detach().cpu() for k, v in compute().items()}
        states = {f"_generator.{k}": generator.get_state() for k, generator in enumerate(generators)}
        save_checkpoint(path, {**tensors, **states})
        return tensors

    def resume_for(self, refiner, name: str, every: int = 10, settings: dict | None = None) -> dict:
        """``{"resume": ResumeFile}`` to pass to a refiner that declares ``resumable``: the file
        ``<name>-resume.safetensors`` in the run directory, written every ``every`` iterations
        and checked against ``settings`` on ``--resume`` (default: the ``[refiner]`` type, so a
        file of another refiner is refused); ``{}`` (and a log line saying that ``--resume``
        reruns this refinement) for a refiner that cannot resume."""
        if not getattr(refiner, "resumable", False):
            self.log.info("refiner %s keeps no resume file: `emverse run --resume` reruns %s",
                          type(refiner).__name__, name)
            return {}
        from emverse.checkpoint import ResumeFile

        if settings is None:
            settings = {"refiner": self.spec("refiner").type} if self.has("refiner") else {}
        return {"resume": ResumeFile(self.out_dir / f"{_safe(name)}-resume.safetensors", int(every),
                                     dict(settings), log=self.log.info)}

    def on_interrupt(self, callback) -> None:
        """Call ``callback()`` when SIGTERM/SIGINT stops the run (e.g. to write a checkpoint)."""
        self.interrupt_callbacks.append(callback)

    def score(self, prediction, truth, *, figures: bool = True, metrics: list | None = None) -> dict[str, float]:
        """The recipe's ``[[metrics]]`` of ``prediction`` against ``truth``, as ``{"<type>.<key>":
        value}``; each metric's figure (when it draws one) is saved as ``metric<i>-<type>``.
        ``metrics``: the built metric components, when a task has set them up (default: built
        here). The one metric loop of the tasks."""
        out: dict[str, float] = {}
        specs = self.recipe.components.get("metrics", [])
        built = metrics if metrics is not None else (self.build("metrics") if specs else [])
        for i, (spec, metric) in enumerate(zip(specs, built, strict=True)):
            for key, value in metric(prediction, truth).items():
                out[f"{spec.type}.{key}"] = float(value)
            if figures:
                fig = metric.figure(prediction, truth)
                if fig is not None:
                    self.save_figure(f"metric{i}-{spec.type}", fig)
        return out

    def save_figure(self, name: str, fig) -> Path:
        from emverse.io import atomic_write

        path = self.out_dir / "figures" / f"{_safe(name)}.png"
        atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
        pyplot = sys.modules.get("matplotlib.pyplot")  # a figure a task made with pyplot
        if pyplot is not None:
            pyplot.close(fig)
        if path.name not in self.figures:
            self.figures.append(path.name)
        self.log.info("figure %s", path.name)
        return path

    def add_table(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        self.tables[name] = {"header": list(header), "rows": [list(r) for r in rows]}
        write_json(self.out_dir / "tables.json", self.tables)

    def add_text(self, name: str, text: str) -> None:
        self.texts[name] = text
        write_json(self.out_dir / "texts.json", self.texts)

    def save_checkpoint(self, name: str, tensors: dict, metadata: dict | None = None) -> Path:
        from emverse.checkpoint import save_checkpoint

        path = self.out_dir / f"{_safe(name)}.safetensors"
        save_checkpoint(path, tensors, recipe=self.recipe.to_dict(), metadata=metadata)
        self.log.info("checkpoint %s", path.name)
        return path


def timed(compute, key: str = "value") -> dict:
    """``{key: compute(), "seconds": its wall time (float64 tensor)}``: a :meth:`RunContext.stage`
    result that keeps what the piece cost, so a resumed run reports the original time."""
    import time

    import torch

    started = time.perf_counter()
    value = compute()
    return {key: value, "seconds": torch.tensor(time.perf_counter() - started, dtype=torch.float64)}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def default_run_dir(recipe: Recipe) -> Path:
    """``runs/<name>-<UTC time>-<random>``: two runs started in the same second never collide."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{_safe(recipe.name)}-{stamp}-{secrets.token_hex(3)}"


def prepare_run_dir(out_dir: Path, *, force: bool = False) -> Path:
    """Create ``out_dir`` for a new run. An existing non-empty folder is refused unless ``force``
    and it is an emverse run directory (then its contents are removed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EmverseError(f"run directory {str(out_dir)!r} is a file; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise EmverseError(f"run directory {str(out_dir)!r} already exists and is not empty; "
                               "choose another --out, add --force to replace it, or "
                               f"`emverse run --resume {out_dir}` to continue it")
        if not (out_dir / "status.json").exists():
            raise EmverseError(f"--force replaces only emverse run directories, and {str(out_dir)!r} "
                               "has no status.json; remove it yourself or choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def git_commit(start: Path) -> str | None:
    """The commit checked out in the git work tree holding ``start`` (``+dirty`` when files
    differ), or None outside a work tree or without git."""
    try:
        top = subprocess.run(["git", "-C", str(start), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if top.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(start), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20)
        return top.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(recipe: Recipe) -> dict[str, str]:
    """SHA-256 of every existing input file the recipe names (folders: every file inside)."""
    sums = {}
    for value, path in recipe_input_paths(recipe):
        if path.is_file():
            sums[value] = file_sha256(path)
        elif path.is_dir():
            for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                sums[f"{value}/{inner.relative_to(path).as_posix()}"] = file_sha256(inner)
    return sums


def environment_info(recipe: Recipe, registry: Registry) -> dict:
    versions = {}
    for dist in ("torch", "numpy", "scipy", "abtem", "ase", "zarr", "dask"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "seed": recipe.seed,
        "device": recipe.device,
        "dtype": recipe.dtype,
        "packages": versions,
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version,
             "ok": p.ok, "error": p.error}
            for p in registry.plugins
        ],
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "recipe_source": str(recipe.source) if recipe.source is not None else None,
        "input_sha256": input_checksums(recipe),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


#: a run failing on bad input within this many seconds of its start leaves no directory
START_SECONDS = 120.0
#: files the runner writes before a task starts; a directory holding only these has no task output
_BOOKKEEPING = {INCOMPLETE, "status.json", "run.log", "recipe.toml", "environment.json", "report.html"}


def execute(recipe: Recipe, out_dir: Path | None = None, registry: Registry | None = None,
            progress: bool = True, *, force: bool = False, resume: bool = False) -> Path:
    """Run a validated recipe and return its (complete) run directory.

    ``force`` replaces an existing run directory; ``resume`` continues the unfinished run in
    ``out_dir`` (``ctx.resume`` is True: tasks that checkpoint pick up where they stopped).
    SIGTERM/SIGINT end the run with ``status.json`` = "interrupted" after calling the task's
    ``checkpoint(ctx)`` (if it has one) and every ``ctx.on_interrupt`` callback. A run that fails
    with an :class:`EmverseError` (bad input) within START_SECONDS, before writing any output, leaves no directory.
    """
    registry = registry or get_registry()
    if resume:
        if out_dir is None or not Path(out_dir).is_dir():
            raise EmverseError(f"cannot resume {str(out_dir)!r}: it is not a directory")
        out_dir = Path(out_dir)
        created = False
    else:
        out_dir = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
        created = not out_dir.exists() or force
        out_dir = prepare_run_dir(out_dir, force=force)
    (out_dir / INCOMPLETE).write_text("this run has not finished; its outputs are not final\n")
    status = StatusFile(out_dir)
    status.start(resumed=resume)
    log = logging.getLogger(f"emverse.run.{out_dir.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(out_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    started = time.perf_counter()
    ctx = task = None
    remove_dir = False
    try:
        with interrupt_on_signals():
            if resume:
                log.info("resuming run in %s", out_dir)
            else:
                write_text(out_dir / "recipe.toml", tomli_w.dumps(_toml_ready(recipe.to_dict())))
                write_json(out_dir / "environment.json", environment_info(recipe, registry))
            log.info("recipe %s (seed %d, task %s)", recipe.name, recipe.seed, recipe.task.type)

            import torch

            torch.manual_seed(recipe.seed)  # module initialisation draws from the global generator
            ctx = RunContext(recipe, out_dir, registry=registry, log=log, progress=progress, resume=resume)
            task = ctx.build_spec(recipe.task, "task")
            with reporting(ctx.progress):  # components' inner loops report through the run
                result = task.run(ctx)
            if not isinstance(result, RunResult):
                raise TypeError(f"task {recipe.task.type!r} returned {type(result).__name__}, not RunResult")
            metrics = {k: _as_float(v) for k, v in result.metrics.items()}
            write_json(out_dir / "metrics.json", metrics)
            if result.units:
                write_json(out_dir / "units.json", result.units)
            elapsed = time.perf_counter() - started
            status.finish("complete", seconds=round(elapsed, 3))
            (out_dir / INCOMPLETE).unlink()
            log.info("finished in %.1f s", elapsed)
    except RunInterrupted as exc:
        log.warning("interrupted by %s", exc.signal_name)
        _checkpoint_on_interrupt(ctx, task, log)
        status.finish("interrupted", signal=exc.signal_name,
                      error=f"interrupted by {exc.signal_name}; continue with `emverse run --resume {out_dir}`")
        raise
    except BaseException as exc:
        status.finish("failed", error=f"{type(exc).__name__}: {exc}")
        log.exception("run failed")
        # bad input found as the task starts: keep nothing, so a retry with the same --out works
        # (a run that worked a while keeps its log even without outputs)
        remove_dir = (created and isinstance(exc, EmverseError)
                      and time.perf_counter() - started < START_SECONDS
                      and {p.name for p in out_dir.iterdir()} <= _BOOKKEEPING)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        if remove_dir:  # bad input found at run start: nothing worth keeping, nothing to block a retry
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            try:
                from emverse.report import write_report

                write_report(out_dir)
            except Exception:  # the report must never hide the run's own error
                logging.getLogger("emverse").exception("could not write report.html")
    return out_dir


def _checkpoint_on_interrupt(ctx: RunContext | None, task, log: logging.Logger) -> None:
    hooks = list(ctx.interrupt_callbacks) if ctx is not None else []
    if task is not None and callable(getattr(task, "checkpoint", None)):
        hooks.insert(0, lambda: task.checkpoint(ctx))
    for hook in hooks:
        try:
            hook()
        except BaseException:  # a failing checkpoint must not hide the interruption
            log.exception("checkpoint on interrupt failed")


def resume_run(run_dir: str | Path, registry: Registry | None = None, progress: bool = True) -> Path:
    """Continue the unfinished run in ``run_dir`` with the recipe stored there."""
    run_dir = Path(run_dir)
    if not (run_dir / "status.json").exists() or not (run_dir / "recipe.toml").exists():
        raise EmverseError(f"{str(run_dir)!r} is not an emverse run directory (no status.json or "
                           "recipe.toml); give the folder `emverse run` printed")
    state = read_status(run_dir)
    if state.get("status") == "complete":
        raise EmverseError(f"run {str(run_dir)!r} is already complete; nothing to resume")
    if state.get("status") == "running":
        raise EmverseError(f"run {str(run_dir)!r} is still running (process {state.get('pid')} on "
                           f"{state.get('host')}); stop it first or wait")
    env = _read_json(run_dir / "environment.json")
    source = env.get("recipe_source")
    raw = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    recipe = validate_recipe(raw, source=Path(source) if source else None, registry=registry)
    return execute(recipe, run_dir, registry=registry, progress=progress, resume=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_recipe(path: str | Path, out_dir: str | Path | None = None, overrides: list[str] | None = None,
               progress: bool = False, *, force: bool = False) -> Path:
    """Validate and run the recipe at ``path``; return the run directory."""
    recipe = load_recipe(path, overrides)
    return execute(recipe, Path(out_dir) if out_dir else None, progress=progress, force=force)


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric value {value!r} is not a number") from None


def _toml_ready(obj):
    """TOML has no null: drop None values."""
    if isinstance(obj, dict):
        return {k: _toml_ready(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_toml_ready(v) for v in obj if v is not None]
    return obj


def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


class _CallableModule(types.ModuleType):
    """``emverse.run`` is both this module and the API function ``emverse.run(recipe, ...)``:
    importing the submodule replaces the package attribute ``emverse.run``, so the module
    itself must answer the call (it forwards to :func:`emverse.api.run`)."""

    def __call__(self, recipe, overrides=None, *, out=None, force=False, progress=False, **more_overrides):
        from emverse.api import run

        return run(recipe, overrides, out=out, force=force, progress=progress, **more_overrides)


sys.modules[__name__].__class__ = _CallableModule
