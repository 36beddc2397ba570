"""The plugin index: what a plugin module registers, known without importing it (so that ``invertkit --help``,
``list`` and ``show`` load no torch). :func:`static_index` reads a module's source: its ``register(X)`` calls and
the literal ``name``/``summary``/``paper`` attributes of ``X``. A module that cannot be read statically (it
registers in a loop, say) is imported once, and what it registered is kept in
``$INVERTKIT_CACHE/plugin-index.json`` (:func:`remember_imported`), keyed by the files' sizes and modification
times, for the next start (:func:`module_index`)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from invertkit.core import hookspecs
from invertkit.core.registry import describe

if TYPE_CHECKING:
    from invertkit.core.plugins import Plugins


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
def cache_file(name: str = "plugin-index.json") -> Path:
    """A file of the start-up caches (no torch needed to read them): ``$INVERTKIT_CACHE/<name>``."""
    root = os.environ.get("INVERTKIT_CACHE")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "invertkit"
    return base / name


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


def read_cache(name: str = "plugin-index.json") -> dict[str, Any]:
    """The JSON object in :func:`cache_file` ``name``; empty when it is missing or unreadable."""
    try:
        data = json.loads(cache_file(name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def update_cache(updates: dict[str, Any], name: str = "plugin-index.json") -> None:
    """Merge ``updates`` into :func:`cache_file` ``name``, atomically (a read-only cache is skipped: it only
    costs the next start an import)."""
    path = cache_file(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**read_cache(name), **updates}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
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
    hit = (cache if cache is not None else read_cache()).get(ep.name)
    if isinstance(hit, dict) and hit.get("key") == key:
        try:
            comps = tuple((str(k), str(n), str(s), str(p)) for k, n, s, p in hit["components"])
            return ModuleIndex(comps, frozenset(map(str, hit["hooks"]))), key
        except (KeyError, TypeError, ValueError):
            pass
    return None, key


def remember_imported(plugins: Plugins, to_cache: dict[str, str]) -> None:
    """Keep in the index cache what the plugins in ``to_cache`` (name -> :func:`module_index`'s key), imported
    because they could not be read statically, registered: the next lazy start need not import them."""
    updates = {}
    for name, key in to_cache.items():
        info = plugins.infos[name]
        if info.status != "loaded":
            continue
        comps = [(k, n, *describe(plugins.registry[k].peek(n).obj)) for k, n in info.registered]
        hooks = sorted({impl.function.__name__ for impl in _impls(plugins.pm, name)})
        updates[name] = {"key": key, "components": comps, "hooks": hooks}
    if updates:
        update_cache(updates)


def _impls(pm: pluggy.PluginManager, name: str) -> list[Any]:
    plugin = pm.get_plugin(name)
    if plugin is None:
        return []
    return [impl for caller in pm.get_hookcallers(plugin) or [] for impl in caller.get_hookimpls()
            if impl.plugin_name == name]
