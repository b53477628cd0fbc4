"""Where shared reference data lives (``shared:`` paths in recipes)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """The ``shared/data`` folder: ``$EMVERSE_SHARED_DATA``, else the first ``shared/data``
    found beside the current directory or one of its parents (CI clones the repo with
    ``shared/`` beside it)."""
    env = os.environ.get("EMVERSE_SHARED_DATA")
    if env:
        return Path(env)
    for base in [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parent,
                 *Path(__file__).resolve().parents]:
        for candidate in (base / "shared" / "data", base.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate
    return Path.cwd().parent / "shared" / "data"


def resolve(path: str | Path, base_dir: Path) -> Path:
    """Resolve a recipe path: ``shared:sub/path`` -> the shared data folder, relative ->
    ``base_dir`` (the recipe's folder), absolute -> itself."""
    text = str(path)
    if text.startswith("shared:"):
        return shared_data_dir() / text[len("shared:"):]
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base_dir / p)
