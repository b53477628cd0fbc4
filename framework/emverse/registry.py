"""Plugin discovery through the ``emverse`` entry-point group (pluggy).

Each entry point names a light ``hooks`` module; loading it never imports
torch. A plugin that fails to import (or yields bad records) is recorded with
its error and the rest still work, unless ``EMVERSE_STRICT_PLUGINS=1``.
``EMVERSE_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or distribution
name. Two plugins offering the same ``(kind, name)`` disable that one component
(both offers), are recorded in :attr:`Registry.clashes` and shown by ``emverse
plugins``; the rest still works (``EMVERSE_STRICT_PLUGINS=1`` makes it fatal).
A component that is not registered is looked up in :data:`KNOWN_PLUGINS` so the
message names the distribution to install, or the plugin that failed to load.
"""

from __future__ import annotations

import difflib
import os
import traceback
from importlib import metadata

import attrs
import pluggy

from emverse import hookspecs
from emverse.components import KINDS, Component
from emverse.errors import EmverseError, PluginError

ENTRY_POINT_GROUP = "emverse"

#: name prefix -> the distribution that offers components of that prefix (the emverse plugins
#: known to the core; a third-party plugin is simply not listed)
KNOWN_PLUGINS = {
    "bloch": "emverse-bloch",
    "multislice": "emverse-multislice",
    "pdf": "emverse-pdf",
    "diffusion": "emverse-diffusion",
    "uq": "emverse-diffusion",
    "image": "emverse-diffusion",
    "stats": "emverse-diffusion",
    "ed3d": "emverse-ed3d",
    "cdi": "emverse-cdi",
    "mep": "emverse-mep",
    "cbldm": "emverse-cbldm",
    "example": "emverse-example",
}


def providing_distribution(name: str) -> str | None:
    """The known distribution that offers component ``name`` (by its prefix), or None."""
    prefix = str(name).split(".", 1)[0]
    return KNOWN_PLUGINS.get(prefix) if "." in str(name) else None


@attrs.define
class Clash:
    """Two distributions offer the same component; neither offer is used."""

    kind: str
    name: str
    distributions: tuple[str, ...]
    plugins: tuple[str, ...]
    records: tuple[Component, ...] = ()

    def message(self) -> str:
        dists = " and ".join(repr(d) for d in self.distributions)
        return (f"{self.kind} {self.name!r} is offered by both {dists}, so neither is used; "
                f"uninstall one or disable it with EMVERSE_DISABLE_PLUGINS={self.plugins[-1]}")


@attrs.define
class PluginInfo:
    name: str
    distribution: str
    version: str
    components: list[str] = attrs.field(factory=list)
    error: str | None = None
    traceback: str | None = None
    disabled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disabled


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _disabled_set() -> set[str]:
    raw = os.environ.get("EMVERSE_DISABLE_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class Registry:
    """All components offered by the installed (and test-registered) plugins."""

    def __init__(self, strict: bool | None = None):
        self.strict = _env_flag("EMVERSE_STRICT_PLUGINS") if strict is None else strict
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._components: dict[tuple[str, str], Component] = {}
        self.clashes: dict[tuple[str, str], Clash] = {}

    # -- discovery -------------------------------------------------------
    def load_entry_points(self) -> Registry:
        disabled = _disabled_set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            info = PluginInfo(name=ep.name, distribution=dist, version=version)
            if ep.name in disabled or dist in disabled:
                info.disabled = True
                self.plugins.append(info)
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin is reported, never fatal
                self._record_failure(info, exc)
                continue
            self.register(module, name=ep.name, distribution=dist, version=version, info=info)
        return self

    def register(self, plugin, *, name: str, distribution: str = "", version: str = "",
                 info: PluginInfo | None = None) -> PluginInfo:
        """Register a plugin object (a module or any object with hook implementations)."""
        info = info or PluginInfo(name=name, distribution=distribution or name, version=version)
        try:
            self.manager.register(plugin, name=name)
            records = self._records_of(plugin)
            staged = []
            for record in records:
                if not isinstance(record, Component):
                    raise TypeError(
                        f"hook emverse_components yielded {record!r}; yield emverse.components.Component records"
                    )
                staged.append(attrs.evolve(record, distribution=info.distribution))
        except Exception as exc:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            self._record_failure(info, exc)
            return info
        for record in staged:
            key = (record.kind, record.name)
            info.components.append(f"{record.kind}:{record.name}")
            if key in self.clashes:  # a third offer of an already clashing name
                clash = self.clashes[key]
                clash.distributions += (info.distribution,)
                clash.plugins += (info.name,)
                clash.records += (record,)
                continue
            if key in self._components:
                other = self._components.pop(key)
                other_plugin = next((p.name for p in self.plugins if p.distribution == other.distribution
                                     and f"{record.kind}:{record.name}" in p.components), other.distribution)
                clash = Clash(record.kind, record.name, (other.distribution, info.distribution),
                              (other_plugin, info.name), (other, record))
                self.clashes[key] = clash
                if self.strict:
                    raise PluginError(clash.message() + " (EMVERSE_STRICT_PLUGINS=1 makes this fatal)")
                continue
            self._components[key] = record
        self.plugins.append(info)
        return info

    def unregister(self, name: str) -> None:
        plugin = self.manager.get_plugin(name)
        if plugin is not None:
            self.manager.unregister(plugin)
        info = next((p for p in self.plugins if p.name == name), None)
        if info is not None:
            self.plugins.remove(info)
            for key in [k for k, c in self._components.items() if f"{c.kind}:{c.name}" in info.components
                        and c.distribution == info.distribution]:
                del self._components[key]
            for key, clash in list(self.clashes.items()):
                if name not in clash.plugins:
                    continue
                keep = [i for i, p in enumerate(clash.plugins) if p != name]
                if len(keep) == 1:  # the clash is over: the remaining offer is used again
                    del self.clashes[key]
                    self._components[key] = clash.records[keep[0]]
                else:
                    clash.distributions = tuple(clash.distributions[i] for i in keep)
                    clash.plugins = tuple(clash.plugins[i] for i in keep)
                    clash.records = tuple(clash.records[i] for i in keep)

    def _records_of(self, plugin) -> list:
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        caller = self.manager.subset_hook_caller("emverse_components", remove_plugins=others)
        records = []
        for result in caller():
            if result is None:
                continue
            records.extend(result if not isinstance(result, Component) else [result])
        return records

    def _record_failure(self, info: PluginInfo, exc: BaseException) -> None:
        info.error = f"{type(exc).__name__}: {exc}"
        info.traceback = "".join(traceback.format_exception(exc))
        self.plugins.append(info)
        if self.strict:
            raise PluginError(
                f"plugin {info.name!r} ({info.distribution}) failed to load: {info.error} "
                "(EMVERSE_STRICT_PLUGINS=1 makes this fatal)"
            ) from exc

    # -- look-up ---------------------------------------------------------
    def names(self, kind: str | None = None) -> list[str]:
        return sorted(name for (k, name) in self._components if kind is None or k == kind)

    def components(self, kind: str | None = None) -> list[Component]:
        return [c for (k, _), c in sorted(self._components.items()) if kind is None or k == kind]

    def get(self, kind: str, name: str) -> Component:
        if kind not in KINDS:
            raise EmverseError(f"component kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
        try:
            return self._components[(kind, name)]
        except KeyError:
            pass
        if (kind, name) in self.clashes:
            raise PluginError(self.clashes[(kind, name)].message())
        raise EmverseError(self.missing_message(kind, name))

    def missing_message(self, kind: str, name) -> str:
        """Why ``name`` is not registered: the distribution to install, a plugin that failed to
        load or was disabled, else a "did you mean" among the registered names."""
        dist = providing_distribution(name)
        if dist is not None:
            plugin = next((p for p in self.plugins if p.distribution == dist), None)
            if plugin is None:
                return (f"{kind} {name!r} is provided by {dist}, which is not installed; "
                        f"install it (pip install {dist})")
            if plugin.disabled:
                return (f"{kind} {name!r} is provided by {dist}, which is disabled "
                        "(EMVERSE_DISABLE_PLUGINS); enable it")
            if plugin.error:
                return (f"{kind} {name!r} is provided by {dist}, which failed to load: {plugin.error}; "
                        f"fix or reinstall {dist} (`emverse plugins` shows the error)")
        message = unknown_name_message(kind, name, self.names(kind))
        if self.failures:
            failed = ", ".join(f"{p.distribution} ({p.error})" for p in self.failures)
            message += f"; plugins that failed to load: {failed}"
        return message

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error is not None]


def unknown_name_message(kind: str, name, known: list[str]) -> str:
    hint = did_you_mean(str(name), known)
    listing = ", ".join(known) if known else "none installed"
    return f"unknown {kind} type {name!r}{hint}; registered: {listing}"


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry().load_entry_points()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the loaded registry (the next :func:`get_registry` rediscovers plugins)."""
    global _REGISTRY
    _REGISTRY = None
