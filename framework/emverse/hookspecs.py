"""The pluggy hooks a plugin may implement (this module imports nothing heavy).

A plugin's ``hooks.py``::

    from emverse.hookspecs import hookimpl
    from emverse.components import Component

    @hookimpl
    def emverse_components():
        yield Component(kind="forward_model", name="mine.model",
                        impl="mine.model:MyModel", params="mine.params:MyParams",
                        summary="What it simulates, in one line")
"""

from __future__ import annotations

import pluggy

PROJECT = "emverse"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def emverse_components():
    """Return or yield :class:`emverse.components.Component` records."""


@hookspec
def emverse_cli(subparsers):
    """Add subcommands to the ``emverse`` CLI (an ``argparse`` subparsers object).

    A subcommand sets ``func`` with ``parser.set_defaults(func=callable)``; the
    callable takes the parsed namespace and returns an exit code.
    """
