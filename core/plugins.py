"""Plugin manager: discovers plugins through the ``invertkit`` entry-point group and fills the registry.

Bundled plugins are entry points of the ``invertkit`` distribution itself; third-party ones are entry
points of theirs. Nothing happens at import time: :func:`get_plugins` builds the manager on first use.

Environment:

* ``INVERTKIT_PLUGINS`` — comma-separated allow list of entry-point names (wildcards allowed); when set,
  only these load.
* ``INVERTKIT_DISABLE_PLUGINS`` — comma-separated block list.

A plugin that fails to import, or whose hook raises (a duplicate name, say), is recorded with its error
and everything it had registered is withdrawn; the rest keep working.

Lazy mode (``load_plugins(lazy=True)``, what ``invertkit --help``, ``list`` and ``show`` use): names come from
the entry points and a static read of each plugin module (:mod:`~invertkit.core.plugin_index`: its ``register(X)`` calls and
the literal ``name``/``summary``/``paper`` attributes of ``X``), so nothing is imported and torch is not
loaded; a module is imported only when one of its components is looked up. A module that cannot be read
statically (it registers in a loop, say) is imported, and what it registered is kept in
``$INVERTKIT_CACHE/plugin-index.json``, keyed by the files' sizes and modification times, for the next start.
"""

from __future__ import annotations

import fnmatch
import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from invertkit.core import hookspecs
from invertkit.core.errors import InvertkitError
from invertkit.core.plugin_index import (  # noqa: F401 - static_index and ModuleIndex are re-exported
    ModuleIndex, module_index, read_cache, remember_imported, static_index,
)
from invertkit.core.registry import KINDS, NOT_LOADED, Registry

ENTRY_POINT_GROUP = "invertkit"
ENV_ALLOW = "INVERTKIT_PLUGINS"
ENV_BLOCK = "INVERTKIT_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    source: str  # "module.path" of the entry point, or "<object>"
    dist: str = ""
    status: str = "loaded"  # loaded | failed | blocked | indexed (lazy mode: listed, not imported yet)
    error: str = ""
    registered: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    hooks: frozenset[str] = frozenset()  # lazy mode: the hooks the index saw in the module


def _patterns(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Plugins:
    """The loaded plugin set: a pluggy manager, the filled :class:`Registry` and one :class:`PluginInfo` each."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self._pending: dict[str, Any] = {}  # lazy mode: plugin name -> entry point not imported yet
        #: how :func:`load_plugins` built this set (entry points on or off, the allow and block patterns it
        #: applied); ``None`` for a set built by hand. Another process (a Ray worker) rebuilds the same set from it.
        self.loaded_with: dict[str, Any] | None = None
        for kind in KINDS:
            self.registry[kind].loader = self.load

    # ------------------------------------------------------------------ loading
    def add(self, name: str, plugin: object, *, source: str = "<object>", dist: str = "") -> PluginInfo:
        info = PluginInfo(name=name, source=source, dist=dist)
        self.infos[name] = info
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take down the others
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        return info

    def fail(self, name: str, source: str, dist: str, exc: BaseException) -> None:
        self.infos[name] = PluginInfo(
            name=name, source=source, dist=dist, status="failed", error=f"{type(exc).__name__}: {exc}"
        )

    def register_all(self, only: str | None = None) -> None:
        """Call every ``register_*`` hook (or only plugin ``only``'s), one plugin at a time, so each registration
        is attributed."""
        for kind in KINDS:
            caller = getattr(self.pm.hook, hookspecs.REGISTER_HOOKS[kind])
            for impl in caller.get_hookimpls():  # registration (load) order: the first plugin keeps a name
                if only is not None and impl.plugin_name != only:
                    continue
                info = self.infos.get(impl.plugin_name)
                if info is None or info.status != "loaded":
                    continue
                registrar = self.registry.registrar(kind, impl.plugin_name)
                before = self._loaded_names(kind)
                try:
                    impl.function(register=registrar)
                except Exception as exc:  # noqa: BLE001
                    info.registered.extend((kind, n) for n in self._loaded_names(kind) - before)
                    self._withdraw(info, exc)
                    continue
                info.registered.extend((kind, n) for n in sorted(self._loaded_names(kind) - before))

    def _loaded_names(self, kind: str) -> set[str]:
        return {n for n, e in self.registry[kind]._entries.items() if e.loaded}

    def _withdraw(self, info: PluginInfo, exc: BaseException) -> None:
        for kind, name in info.registered:
            entry = self.registry[kind]._entries.get(name)
            if entry is not None and entry.plugin == info.name:
                self.registry[kind].remove(name)
        self._drop_placeholders(info.name)
        info.registered.clear()
        info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        if self.pm.get_plugin(info.name) is not None:
            self.pm.unregister(name=info.name)

    # ------------------------------------------------------------------ lazy mode
    def index(self, name: str, ep: Any, dist: str, index: ModuleIndex) -> PluginInfo:
        """List plugin ``name``'s components from its index; its module is imported on first lookup."""
        info = PluginInfo(name=name, source=ep.value, dist=dist, status="indexed", hooks=index.hooks)
        self.infos[name] = info
        self._pending[name] = ep
        try:
            for kind, n, summary, paper in index.components:
                self.registry[kind].add(n, NOT_LOADED, name, summary=summary, paper=paper)
        except Exception as exc:  # noqa: BLE001 - a duplicate name: the first plugin keeps it, as when loading
            self._pending.pop(name, None)
            self._withdraw(info, exc)
        return info

    def _drop_placeholders(self, plugin: str) -> None:
        for kind in KINDS:
            reg = self.registry[kind]
            for n in [n for n, e in reg._entries.items() if e.plugin == plugin and not e.loaded]:
                reg.remove(n)

    def load(self, name: str) -> PluginInfo:
        """Import a plugin that lazy mode only indexed, and register what it registers. Raises
        :class:`~invertkit.core.errors.InvertkitError` when it fails (the error is also in its info)."""
        info = self.infos[name]
        ep = self._pending.pop(name, None)
        if ep is not None:
            try:
                module = ep.load()
                self.pm.register(module, name=name)
            except Exception as exc:  # noqa: BLE001
                self._withdraw(info, exc)
            else:
                info.status = "loaded"
                self.register_all(only=name)
                self._drop_placeholders(name)  # what the index promised and the module did not register
        if info.status == "failed":
            raise InvertkitError(f"plugin '{name}' ({info.source}) failed: {info.error}")
        return info

    def load_implementers(self, hook: str) -> None:
        """Import the indexed plugins that define ``hook`` (e.g. ``invertkit_register_commands``)."""
        for name in [n for n in self._pending if hook in self.infos[n].hooks]:
            try:
                self.load(name)
            except InvertkitError:
                pass  # reported by failures()

    def load_all(self) -> None:
        for name in list(self._pending):
            try:
                self.load(name)
            except InvertkitError:
                pass

    # ------------------------------------------------------------------ queries
    def failures(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.status == "failed"]

    def get(self, kind: str, name: str) -> Any:
        return self.registry[kind].get_obj(name)

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call a bench observer hook on every plugin; an observer's error never stops the bench."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(**kwargs)
            except Exception:  # noqa: BLE001
                traceback.print_exc()


def load_plugins(
    *,
    use_entry_points: bool = True,
    extra: list[tuple[str, object]] | None = None,
    allow: str | None = None,
    block: str | None = None,
    lazy: bool = False,
) -> Plugins:
    """Build a fresh :class:`Plugins`: entry points (filtered by allow/block lists), then ``extra`` objects.
    ``lazy``: index the entry points' modules without importing them where they can be read (see the module
    docstring); each is imported when one of its components is looked up."""
    allow_p = _patterns(os.environ.get(ENV_ALLOW) if allow is None else allow)
    block_p = _patterns(os.environ.get(ENV_BLOCK) if block is None else block)
    plugins = Plugins()
    plugins.loaded_with = {"entry_points": use_entry_points, "allow": allow_p, "block": block_p}
    cache = read_cache() if lazy and use_entry_points else {}
    to_cache: dict[str, str] = {}  # plugin name -> key: imported now, cached for the next lazy start
    if use_entry_points:
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            dist = f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else ""
            if (allow_p and not _matches(ep.name, allow_p)) or _matches(ep.name, block_p):
                plugins.infos[ep.name] = PluginInfo(ep.name, ep.value, dist, status="blocked")
                continue
            if lazy:
                index, key = module_index(ep, dist, cache)
                if index is not None:
                    plugins.index(ep.name, ep, dist, index)
                    continue
                if key:
                    to_cache[ep.name] = key
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported by name, the rest go on
                plugins.fail(ep.name, ep.value, dist, exc)
                continue
            plugins.add(ep.name, module, source=ep.value, dist=dist)
    for name, obj in extra or []:
        plugins.add(name, obj)
    plugins.register_all()
    remember_imported(plugins, to_cache)
    return plugins


def worker_env(plugins: Plugins) -> dict[str, str]:
    """The environment under which :func:`get_plugins`, in another process with the same packages installed,
    loads the same plugin set as ``plugins``: its allow and block lists. Raises
    :class:`~invertkit.core.errors.InvertkitError` for a set that cannot be rebuilt that way (plugins added
    as objects, components registered by hand, entry points off): another process would silently differ."""
    how = plugins.loaded_with
    why = ""
    if how is None:
        why = "the plugin set was built by hand, not by load_plugins()"
    elif not how["entry_points"]:
        why = "the plugin set was loaded without entry points"
    else:
        by_hand = sorted({i.name for i in plugins.infos.values() if i.source == "<object>"})
        for kind in KINDS:
            by_hand += sorted({f"{kind} '{n}'" for n, e in plugins.registry[kind]._entries.items()
                               if e.plugin not in plugins.infos or plugins.infos[e.plugin].source == "<object>"})
        if by_hand:
            why = f"plugins were registered programmatically ({', '.join(dict.fromkeys(by_hand))})"
    if why:
        raise InvertkitError(f"{why}; another process cannot load them. Install them as entry points "
                             f"(group '{ENTRY_POINT_GROUP}') or use the local executor")
    return {ENV_ALLOW: ",".join(how["allow"]), ENV_BLOCK: ",".join(how["block"])}  # type: ignore[index]


_CURRENT: Plugins | None = None
_INDEXED: Plugins | None = None


def get_plugins(*, lazy: bool = False) -> Plugins:
    """The process-wide plugin set, loaded on first use. ``lazy``: the plugin index (names and summaries
    without imports, each module imported on first lookup), unless the full set is loaded already."""
    global _CURRENT, _INDEXED
    if _CURRENT is not None:
        return _CURRENT
    if lazy:
        if _INDEXED is None:
            _INDEXED = load_plugins(lazy=True)
        return _INDEXED
    _CURRENT = load_plugins()
    return _CURRENT


def set_plugins(plugins: Plugins | None) -> None:
    """Replace (or with ``None``, forget) the process-wide plugin set; for tests and embedding."""
    global _CURRENT, _INDEXED
    _CURRENT = plugins
    _INDEXED = None
