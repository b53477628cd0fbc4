"""pytest fixtures (loaded automatically through the ``pytest11`` entry point)."""

from __future__ import annotations

import itertools

import pytest

_counter = itertools.count()


@pytest.fixture
def emverse_plugin():
    """Register plugin objects in the process registry for one test.

    ``emverse_plugin(obj, name="myplugin")`` registers ``obj`` (a module or an
    object with ``@hookimpl`` methods) and returns its PluginInfo; everything
    registered is removed when the test ends.
    """
    from emverse.registry import get_registry

    registry = get_registry()
    names = []

    def register(plugin, name: str | None = None, distribution: str = "test-plugin"):
        name = name or f"test-plugin-{next(_counter)}"
        names.append(name)
        return registry.register(plugin, name=name, distribution=distribution, version="0")

    yield register
    for name in names:
        registry.unregister(name)
