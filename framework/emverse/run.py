"""The runner: from a validated recipe to a finished run directory.

A run directory holds ``recipe.toml`` (resolved, defaults filled),
``environment.json`` (versions, platform, seed), ``metrics.json``,
``figures/*.png``, ``tables.json``, ``report.html``, ``run.log`` and any
checkpoints. While a run is in progress (or after it failed) the directory
holds an ``INCOMPLETE`` marker and ``status.json`` says so; ``metrics.json``
appears only when the task finished.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from emverse import paths
from emverse.errors import EmverseError
from emverse.io import write_json, write_text
from emverse.params import ComponentSpec
from emverse.recipe import COMPONENT_TABLES, LIST_TABLES, Recipe, load_recipe
from emverse.registry import Registry, get_registry

INCOMPLETE = "INCOMPLETE"


@attrs.define
class RunResult:
    """What a task returns: named scalar metrics (written to metrics.json)."""

    metrics: dict[str, float] = attrs.field(factory=dict)


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the recipe seed and a stream name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RunContext:
    """Everything a task needs: paths, device, seeded generators, component builders, outputs."""

    def __init__(self, recipe: Recipe, out_dir: Path, registry: Registry | None = None,
                 log: logging.Logger | None = None, progress: bool = True):
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
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=not self.show_progress,
                    file=sys.stderr, dynamic_ncols=True, **kwargs)

    def save_figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        from emverse.io import atomic_write

        path = self.out_dir / "figures" / f"{_safe(name)}.png"
        atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def default_run_dir(recipe: Recipe) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{_safe(recipe.name)}-{stamp}"


def prepare_run_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EmverseError(f"run directory {str(out_dir)!r} already exists and is not empty; "
                           "choose another --out or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


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
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def execute(recipe: Recipe, out_dir: Path | None = None, registry: Registry | None = None,
            progress: bool = True) -> Path:
    """Run a validated recipe and return its (complete) run directory."""
    registry = registry or get_registry()
    out_dir = prepare_run_dir(out_dir or default_run_dir(recipe))
    (out_dir / INCOMPLETE).write_text("this run has not finished; its outputs are not final\n")
    write_json(out_dir / "status.json", {"status": "running"})
    log = logging.getLogger(f"emverse.run.{out_dir.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(out_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    started = time.perf_counter()
    try:
        write_text(out_dir / "recipe.toml", tomli_w.dumps(_toml_ready(recipe.to_dict())))
        write_json(out_dir / "environment.json", environment_info(recipe, registry))
        log.info("recipe %s (seed %d, task %s)", recipe.name, recipe.seed, recipe.task.type)

        import torch

        torch.manual_seed(recipe.seed)  # module initialisation draws from the global generator
        ctx = RunContext(recipe, out_dir, registry=registry, log=log, progress=progress)
        task = ctx.build_spec(recipe.task, "task")
        result = task.run(ctx)
        if not isinstance(result, RunResult):
            raise TypeError(f"task {recipe.task.type!r} returned {type(result).__name__}, not RunResult")
        metrics = {k: _as_float(v) for k, v in result.metrics.items()}
        write_json(out_dir / "metrics.json", metrics)
        elapsed = time.perf_counter() - started
        write_json(out_dir / "status.json", {"status": "complete", "seconds": round(elapsed, 3)})
        (out_dir / INCOMPLETE).unlink()
        log.info("finished in %.1f s", elapsed)
    except BaseException as exc:
        write_json(out_dir / "status.json", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        log.exception("run failed")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        try:
            from emverse.report import write_report

            write_report(out_dir)
        except Exception:  # the report must never hide the run's own error
            logging.getLogger("emverse").exception("could not write report.html")
    return out_dir


def run_recipe(path: str | Path, out_dir: str | Path | None = None, overrides: list[str] | None = None,
               progress: bool = False) -> Path:
    """Validate and run the recipe at ``path``; return the run directory."""
    recipe = load_recipe(path, overrides)
    return execute(recipe, Path(out_dir) if out_dir else None, progress=progress)


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
