"""emverse: inverse problems in electron microscopy and diffraction.

This package is deliberately light to import: the registry, recipes and CLI
never import torch. The torch-based interfaces live in :mod:`emverse.interfaces`.
From Python, :func:`run` runs a recipe and returns its results (see
``docs/python-api.md``).
"""

__version__ = "0.1.0"


def run(recipe, overrides=None, *, out=None, force=False, progress=False, **more_overrides):
    """Run a recipe (path, ready-recipe name or dict) and return an :class:`emverse.api.RunOutput`;
    see :func:`emverse.api.run`."""
    from emverse.api import run as _run

    return _run(recipe, overrides, out=out, force=force, progress=progress, **more_overrides)


def resume(run_dir, *, progress=False):
    """Continue an interrupted or dead run in place; see :func:`emverse.api.resume`."""
    from emverse.api import resume as _resume

    return _resume(run_dir, progress=progress)


def open_run(run_dir):
    """The results of an existing run directory as an :class:`emverse.api.RunOutput`."""
    from emverse.api import RunOutput

    return RunOutput.open(run_dir)
