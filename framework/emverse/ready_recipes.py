"""The ready recipes (``recipes/*.toml``): where they are found and how a name is looked up.

Searched in order: ``$EMVERSE_RECIPES`` (``os.pathsep``-separated folders),
``./recipes``, the ``recipes/`` folder of a source checkout holding this package,
and ``<prefix>/share/emverse/recipes`` where a wheel install puts them (the core's
``pyproject.toml`` ships ``recipes/*.toml`` as data files, so ``emverse recipe
list`` works from a non-editable install).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from emverse.errors import EmverseError


def recipe_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("EMVERSE_RECIPES"):
        dirs += [Path(p) for p in os.environ["EMVERSE_RECIPES"].split(os.pathsep) if p]
    dirs.append(Path.cwd() / "recipes")
    here = Path(__file__).resolve()
    dirs += [parent / "recipes" for parent in here.parents[:3]]
    # a wheel install: <prefix>/lib/pythonX.Y/site-packages/emverse/ready_recipes.py
    prefixes = [sys.prefix, sysconfig.get_path("data"), *([here.parents[4]] if len(here.parents) > 4 else [])]
    for prefix in dict.fromkeys(prefixes):
        dirs.append(Path(prefix) / "share" / "emverse" / "recipes")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    """Name -> file of every ready recipe (the first folder that has a name wins)."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def find_recipe(name: str) -> Path:
    """The file of the ready recipe ``name`` (with or without ``.toml``)."""
    for folder in recipe_dirs():
        for candidate in (folder / name, folder / f"{name}.toml"):
            if candidate.is_file():
                return candidate
    known = sorted(list_recipes())
    from emverse.registry import did_you_mean

    raise EmverseError(f"no recipe file or ready recipe named {name!r}{did_you_mean(name, known)}; "
                       f"give a path to a .toml file or one of: {', '.join(known) or 'none found'} "
                       "(see `emverse recipe list`)")


def recipe_path(file_or_name: str | os.PathLike) -> Path:
    """A recipe argument as given on the command line: an existing file, else a ready recipe's name."""
    path = Path(file_or_name)
    if path.exists() or "/" in str(file_or_name) or os.sep in str(file_or_name):
        return path
    return find_recipe(str(file_or_name))
