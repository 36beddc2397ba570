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
the entry points and a static read of each plugin module (:func:`static_index`: its ``register(X)`` calls and
the literal ``name``/``summary``/``paper`` attributes of ``X``), so nothing is imported and torch is not
loaded; a module is imported only when one of its components is looked up. A module that cannot be read
statically (it registers in a loop, say) is imported, and what it registered is kept in
``$INVERTKIT_CACHE/plugin-index.json``, keyed by the files' sizes and modification times, for the next start.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import tempfile
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pluggy

from invertkit.core import hookspecs
from invertkit.core.errors import InvertkitError
from invertkit.core.registry import KINDS, NOT_LOADED, Registry, describe

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


@dataclass(frozen=True)
class ModuleIndex:
    """What a plugin module registers, known without importing it."""

    components: tuple[tuple[str, str, str, str], ...]  # (kind, name, summary, paper)
    hooks: frozenset[str]  # names of the ``invertkit_*`` hook functions it defines


_KIND_OF_HOOK = {hook: kind for kind, hook in hookspecs.REGISTER_HOOKS.items()}


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def static_index(source: str) -> ModuleIndex | None:
    """Read a plugin module's source (never importing it): its ``invertkit_register_*`` hooks, each a plain
    sequence of ``register(X)`` / ``register(X, "name")`` calls, and each ``X``'s literal ``name``, ``summary``
    and ``paper`` (class attributes, inherited within the module, or ``X.attr = ...`` after a function);
    the summary falls back to the docstring's first line, as :func:`~invertkit.core.registry.describe` does.
    ``None`` when the module does something this cannot follow (a loop, a computed name): import it then."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    consts: dict[str, str] = {}
    defs: dict[str, ast.ClassDef | ast.FunctionDef] = {}
    attrs: dict[str, dict[str, ast.expr]] = {}
    hooks: dict[str, ast.FunctionDef] = {}

    def literal(node: ast.expr | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return consts.get(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = literal(node.left), literal(node.right)
            return None if left is None or right is None else left + right
        return None

    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and literal(node.value) is not None:
                    consts[t.id] = literal(node.value)  # type: ignore[assignment]
                elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and node.value is not None:
                    attrs.setdefault(t.value.id, {})[t.attr] = node.value
        elif isinstance(node, ast.ClassDef):
            defs[node.name] = node
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                    attrs.setdefault(node.name, {})[stmt.targets[0].id] = stmt.value
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    attrs.setdefault(node.name, {})[stmt.target.id] = stmt.value
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("invertkit_"):
                hooks[node.name] = node  # type: ignore[assignment]
            else:
                defs[node.name] = node  # type: ignore[assignment]

    def attr(obj: str, key: str, seen: frozenset[str] = frozenset()) -> tuple[bool, str | None]:
        """(found, value) of ``obj.key`` along the module's own classes; found with a non-literal: (True, None)."""
        if key in attrs.get(obj, {}):
            return True, literal(attrs[obj][key])
        node = defs.get(obj)
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in defs and base.id not in seen:
                    found, value = attr(base.id, key, seen | {obj})
                    if found:
                        return found, value
        return False, None

    if not hooks:  # nothing a plugin would define: import it, and let the import say what it is (or what fails)
        return None
    components: list[tuple[str, str, str, str]] = []
    for hook, fn in hooks.items():
        kind = _KIND_OF_HOOK.get(hook)
        if kind is None:
            continue
        if not fn.args.args:
            return None
        reg = fn.args.args[0].arg
        for i, stmt in enumerate(fn.body):
            if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # docstring
            if isinstance(stmt, ast.Pass):
                continue
            call = stmt.value if isinstance(stmt, ast.Expr) else None
            if not (isinstance(call, ast.Call) and (
                    (isinstance(call.func, ast.Name) and call.func.id == reg)
                    or (isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
                        and call.func.value.id == reg and call.func.attr == "register"))):
                return None
            if not call.args or not isinstance(call.args[0], ast.Name) or call.args[0].id not in defs:
                return None
            obj = call.args[0].id
            name_node = call.args[1] if len(call.args) > 1 else next(
                (k.value for k in call.keywords if k.arg == "name"), None)
            if name_node is not None:
                name = literal(name_node)
            else:
                found, name = attr(obj, "name")
                if not found and isinstance(defs[obj], ast.FunctionDef):
                    name = None  # a function's __name__ would be the name: rare, import to be sure
            found_s, summary = attr(obj, "summary")
            found_p, paper = attr(obj, "paper")
            if not name or (found_s and summary is None) or (found_p and paper is None):
                return None
            if not summary:
                summary = _first_line(ast.get_docstring(defs[obj]))
            components.append((kind, name, summary or "", paper or ""))
    return ModuleIndex(tuple(components), frozenset(hooks))


# ------------------------------------------------------------------ the index cache (modules read by importing)
def _cache_file() -> Path:
    root = os.environ.get("INVERTKIT_CACHE")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "invertkit"
    return base / "plugin-index.json"


def _module_origin(ep: Any) -> Path | None:
    if ":" in ep.value:  # an object inside a module: read by importing
        return None
    try:
        spec = find_spec(ep.value)
    except Exception:  # noqa: BLE001 - a parent package that fails to import: the import reports it
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _files_key(ep: Any, dist: str, origin: Path) -> str:
    """Sizes and modification times of the module's folder's ``.py`` files (helpers it imports included)."""
    h = hashlib.sha256(f"{ep.name}={ep.value} {dist}".encode())
    for f in sorted(origin.parent.glob("*.py")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(updates: dict[str, Any]) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(), **updates}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plugin-index.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the next start an import
        pass


def module_index(ep: Any, dist: str, cache: dict[str, Any] | None = None) -> tuple[ModuleIndex | None, str]:
    """The index of an entry point's module without importing it: read statically, else from the cache.
    Returns ``(index or None, cache key or "")``; the key is where an import's result may be cached."""
    origin = _module_origin(ep)
    if origin is None:
        return None, ""
    try:
        index = static_index(origin.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None, ""
    if index is not None:
        return index, ""
    try:
        key = _files_key(ep, dist, origin)
    except OSError:
        return None, ""
    hit = (cache if cache is not None else _read_cache()).get(ep.name)
    if isinstance(hit, dict) and hit.get("key") == key:
        try:
            comps = tuple((str(k), str(n), str(s), str(p)) for k, n, s, p in hit["components"])
            return ModuleIndex(comps, frozenset(map(str, hit["hooks"]))), key
        except (KeyError, TypeError, ValueError):
            pass
    return None, key


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
    cache = _read_cache() if lazy and use_entry_points else {}
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
    updates = {}
    for name, key in to_cache.items():
        info = plugins.infos[name]
        if info.status != "loaded":
            continue
        comps = [(k, n, *describe(plugins.registry[k].peek(n).obj)) for k, n in info.registered]
        hooks = sorted({impl.function.__name__ for impl in _impls(plugins.pm, name)})
        updates[name] = {"key": key, "components": comps, "hooks": hooks}
    if updates:
        _write_cache(updates)
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


def _impls(pm: pluggy.PluginManager, name: str) -> list[Any]:
    plugin = pm.get_plugin(name)
    if plugin is None:
        return []
    return [impl for caller in pm.get_hookcallers(plugin) or [] for impl in caller.get_hookimpls()
            if impl.plugin_name == name]


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
