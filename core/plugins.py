"""Plugin manager: discovers plugins through the ``invertkit`` entry-point group and fills the registry.

Bundled plugins are entry points of the ``invertkit`` distribution itself; third-party ones are entry
points of theirs. Nothing happens at import time: :func:`get_plugins` builds the manager on first use.

Environment:

* ``INVERTKIT_PLUGINS`` — comma-separated allow list of entry-point names (wildcards allowed); when set,
  only these load.
* ``INVERTKIT_DISABLE_PLUGINS`` — comma-separated block list.

A plugin that fails to import, or whose hook raises (a duplicate name, say), is recorded with its error
and everything it had registered is withdrawn; the rest keep working.
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
from invertkit.core.registry import KINDS, Registry

ENTRY_POINT_GROUP = "invertkit"
ENV_ALLOW = "INVERTKIT_PLUGINS"
ENV_BLOCK = "INVERTKIT_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    source: str  # "module.path" of the entry point, or "<object>"
    dist: str = ""
    status: str = "loaded"  # loaded | failed | blocked
    error: str = ""
    registered: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


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

    def register_all(self) -> None:
        """Call every ``register_*`` hook, one plugin at a time, so each registration is attributed."""
        for kind in KINDS:
            caller = getattr(self.pm.hook, hookspecs.REGISTER_HOOKS[kind])
            for impl in caller.get_hookimpls():  # registration (load) order: the first plugin keeps a name
                info = self.infos.get(impl.plugin_name)
                if info is None or info.status != "loaded":
                    continue
                registrar = self.registry.registrar(kind, impl.plugin_name)
                before = set(self.registry[kind])
                try:
                    impl.function(register=registrar)
                except Exception as exc:  # noqa: BLE001
                    info.registered.extend((kind, n) for n in set(self.registry[kind]) - before)
                    self._withdraw(info, exc)
                    continue
                info.registered.extend((kind, n) for n in sorted(set(self.registry[kind]) - before))

    def _withdraw(self, info: PluginInfo, exc: BaseException) -> None:
        for kind, name in info.registered:
            entry = self.registry[kind]._entries.get(name)
            if entry is not None and entry.plugin == info.name:
                self.registry[kind].remove(name)
        info.registered.clear()
        info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        self.pm.unregister(name=info.name)

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
) -> Plugins:
    """Build a fresh :class:`Plugins`: entry points (filtered by allow/block lists), then ``extra`` objects."""
    allow_p = _patterns(os.environ.get(ENV_ALLOW) if allow is None else allow)
    block_p = _patterns(os.environ.get(ENV_BLOCK) if block is None else block)
    plugins = Plugins()
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
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported by name, the rest go on
                plugins.fail(ep.name, ep.value, dist, exc)
                continue
            plugins.add(ep.name, module, source=ep.value, dist=dist)
    for name, obj in extra or []:
        plugins.add(name, obj)
    plugins.register_all()
    return plugins


_CURRENT: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = load_plugins()
    return _CURRENT


def set_plugins(plugins: Plugins | None) -> None:
    """Replace (or with ``None``, forget) the process-wide plugin set; for tests and embedding."""
    global _CURRENT
    _CURRENT = plugins
