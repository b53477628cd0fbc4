"""The Python API: run a recipe from a script or a notebook and get its results as objects.

>>> import emverse
>>> result = emverse.run("example-linear-gaussian", **{"options.n_observations": 2})
>>> result.metrics["posterior_mean_rmse"]          # doctest: +SKIP
>>> result.tensors("posterior")["samples"].shape    # doctest: +SKIP

``recipe`` is a path to a TOML file, the name of a ready recipe (``emverse recipe
list``) or a dict with the recipe's tables; overrides are dotted keys as for
``--set`` with Python values. Nothing here switches matplotlib's backend (figures
use an explicit Agg canvas), so a notebook's inline plots keep working.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

from emverse.errors import EmverseError
from emverse.recipe import Recipe, apply_values, read_toml, validate_recipe


def load(recipe: str | os.PathLike | dict | Recipe, overrides: dict[str, Any] | None = None) -> Recipe:
    """Validate a recipe (path, ready-recipe name, dict or :class:`Recipe`) with ``overrides``."""
    if isinstance(recipe, Recipe):
        if overrides:
            return validate_recipe(apply_values(recipe.to_dict(), overrides), source=recipe.source)
        return recipe
    if isinstance(recipe, dict):
        return validate_recipe(apply_values(recipe, overrides or {}))
    if isinstance(recipe, str | os.PathLike):
        from emverse.ready_recipes import recipe_path

        path = recipe_path(recipe)
        raw = apply_values(read_toml(path), overrides or {})
        return validate_recipe(raw, source=Path(path).resolve())
    raise EmverseError(f"recipe must be a path, a ready recipe's name or a dict, got {type(recipe).__name__}")


@attrs.frozen
class RunOutput:
    """What a finished (or stopped) run left in its directory, ready to use in Python.

    ``metrics`` name -> float; ``tables`` name -> ``{"header": [...], "rows": [[...]]}``;
    ``figures`` the PNG files; ``status`` the state in ``status.json``.
    """

    run_dir: Path
    metrics: dict[str, float]
    tables: dict[str, dict]
    figures: list[Path]
    status: dict

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> RunOutput:
        """The results in an existing run directory."""
        from emverse.runstate import read_status

        run_dir = Path(run_dir)
        if not (run_dir / "status.json").exists():
            raise EmverseError(f"{str(run_dir)!r} is not an emverse run directory (no status.json)")
        figures_dir = run_dir / "figures"
        return cls(
            run_dir=run_dir,
            metrics=_json(run_dir / "metrics.json"),
            tables=_json(run_dir / "tables.json"),
            figures=sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else [],
            status=read_status(run_dir),
        )

    @property
    def recipe(self) -> dict:
        """The resolved recipe the run used."""
        import tomllib

        return tomllib.loads((self.run_dir / "recipe.toml").read_text(encoding="utf-8"))

    def checkpoints(self) -> list[str]:
        """Names of the safetensors files in the run directory (without the suffix)."""
        return sorted(p.stem for p in self.run_dir.glob("*.safetensors"))

    def tensors(self, name: str | None = None, device: str = "cpu") -> dict:
        """Tensors of ``<name>.safetensors`` (name -> tensor); with no name and one file, that
        file; with no name and several, ``{file: {name: tensor}}``."""
        from emverse.checkpoint import load_checkpoint

        names = self.checkpoints()
        if name is not None:
            if name not in names:
                raise EmverseError(f"run {str(self.run_dir)!r} has no {name}.safetensors; it has: "
                                   f"{', '.join(names) or 'none'}")
            return load_checkpoint(self.run_dir / f"{name}.safetensors", device=device).tensors
        if len(names) == 1:
            return self.tensors(names[0], device)
        return {n: self.tensors(n, device) for n in names}

    def table(self, name: str):
        """One table as a pandas DataFrame when pandas is installed, else the header/rows dict."""
        if name not in self.tables:
            raise EmverseError(f"run has no table {name!r}; it has: {', '.join(self.tables) or 'none'}")
        try:
            import pandas as pd
        except ImportError:
            return self.tables[name]
        return pd.DataFrame(self.tables[name]["rows"], columns=self.tables[name]["header"])

    def _repr_html_(self) -> str:  # Jupyter shows the metrics table
        import html

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" for k, v in sorted(self.metrics.items()))
        return (f"<p>emverse run <code>{html.escape(str(self.run_dir))}</code>: "
                f"{html.escape(str(self.status.get('status')))}</p>"
                f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run(recipe: str | os.PathLike | dict | Recipe, overrides: dict[str, Any] | None = None, *,
        out: str | os.PathLike | None = None, force: bool = False, progress: bool = False,
        **more_overrides) -> RunOutput:
    """Validate and run ``recipe`` (path, ready-recipe name, dict or Recipe) and return its
    :class:`RunOutput`. Overrides are dotted keys: ``overrides={"options.n_samples": 50}`` or
    ``**{"options.n_samples": 50}``. ``out`` is the run directory (default
    ``runs/<name>-<time>-<random>``), ``force`` replaces an existing one.

    Where a recipe takes a data file, an in-memory measurement may be given instead (a
    hyperspy signal, a py4DSTEM DataCube): it is written once with its calibration as
    ``inputs/<content hash>.zarr`` beside the run directory (``runs/inputs`` by default) and the
    recipe names that path, so the run stays reproducible and resumable."""
    from emverse.run import execute

    values = {**(overrides or {}), **more_overrides}
    signals = []
    if any(hasattr(value, "data") for value in values.values()):  # readers (numpy) only when needed
        from emverse.readers import is_signal, materialise_signal

        signals = [key for key, value in values.items() if is_signal(value)]
    if signals:  # a hyperspy signal / py4DSTEM DataCube where a path goes: written once, then named
        inputs = (Path(out).parent if out is not None else Path("runs")) / "inputs"
        values = {k: str(materialise_signal(v, inputs).resolve()) if k in signals else v for k, v in values.items()}
    validated = load(recipe, values)
    run_dir = execute(validated, Path(out) if out is not None else None, progress=progress, force=force)
    return RunOutput.open(run_dir)


def resume(run_dir: str | os.PathLike, *, progress: bool = False) -> RunOutput:
    """Continue an interrupted or dead run in place (``emverse run --resume``)."""
    from emverse.run import resume_run

    return RunOutput.open(resume_run(run_dir, progress=progress))
