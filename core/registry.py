"""The typed registry that plugins fill through their hooks.

One :class:`KindRegistry` per kind of component (a read-only ``Mapping`` from name to :class:`Entry`).
Plugins never touch it directly: each hook call receives a :class:`Registrar` bound to one kind and to the
calling plugin's name, so a duplicate is reported with both plugins' names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from invertkit.core.errors import DuplicateNameError, InvertkitError, UnknownNameError

KINDS: tuple[str, ...] = ("attack", "defense", "prior", "metric", "backend", "architecture", "dataset")


class _NotLoaded:
    """The ``obj`` of an entry known from the plugin index (entry points + a static read of the module) whose
    module has not been imported yet; looking the entry up imports it (see :mod:`invertkit.core.plugins`)."""

    def __repr__(self) -> str:
        return "<not loaded>"


NOT_LOADED: Any = _NotLoaded()


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str
    #: for a not-yet-loaded entry: the class's summary and paper as the index read them (no import)
    summary: str = ""
    paper: str = ""

    @property
    def loaded(self) -> bool:
        return self.obj is not NOT_LOADED


def describe(obj: Any) -> tuple[str, str]:
    """``(summary, paper)`` of a registered component: its class's ``summary`` (else the first line of its
    docstring) and ``paper`` attributes, the metadata ``invertkit list`` and ``show`` print."""
    summary = getattr(obj, "summary", "") or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
    return str(summary or ""), str(getattr(obj, "paper", "") or "")


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The nearest candidate to ``name`` (edit similarity), if any is close enough."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return found[0] if found else None


def unknown(kind: str, name: str, candidates: list[str] | tuple[str, ...]) -> UnknownNameError:
    near = suggest(name, candidates)
    hint = f" Did you mean '{near}'?" if near else (f" Known: {', '.join(sorted(candidates))}." if candidates else "")
    return UnknownNameError(f"Unknown {kind} '{name}'.{hint}")


class KindRegistry(Mapping[str, Entry]):
    """All registered components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        #: imports a plugin whose entries are not loaded yet (set by the plugin manager in lazy mode)
        self.loader: Callable[[str], None] | None = None

    def add(self, name: str, obj: Any, plugin: str, *, summary: str = "", paper: str = "") -> Entry:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            prev = self._entries[name]
            if not (prev.plugin == plugin and not prev.loaded and obj is not NOT_LOADED):  # the index's placeholder
                raise DuplicateNameError(
                    f"{self.kind} '{name}' is registered twice: by plugin '{prev.plugin}' and by plugin '{plugin}'"
                )
        entry = Entry(self.kind, name, obj, plugin, summary, paper)
        self._entries[name] = entry
        return entry

    def peek(self, name: str) -> Entry:
        """The entry, without importing its plugin: a not-yet-loaded one carries the index's summary and paper."""
        try:
            return self._entries[name]
        except KeyError:
            raise unknown(self.kind, name, list(self._entries)) from None

    def remove(self, name: str) -> Entry:
        if name not in self._entries:
            raise unknown(self.kind, name, list(self._entries))
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> Entry:
        entry = self.peek(name)
        if entry.loaded:
            return entry
        if self.loader is not None:
            self.loader(entry.plugin)  # imports the module; its hook replaces the placeholder
        entry = self._entries.get(name, entry)
        if not entry.loaded:
            raise InvertkitError(f"{self.kind} '{name}' is not available: plugin '{entry.plugin}' did not register it")
        return entry

    def get_obj(self, name: str) -> Any:
        return self[name].obj

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard; a comma separates alternatives (``gmi,nes``)."""
        pats = [p.strip() for p in pattern.split(",") if p.strip()] or ["*"]
        return [n for n in sorted(self._entries) if any(fnmatch.fnmatchcase(n, p) for p in pats)]

    def resolve(self, pattern: str) -> list[str]:
        """Like :meth:`names`, but a plain name (no wildcard) that is unknown raises with a suggestion."""
        out: list[str] = []
        for p in [p.strip() for p in pattern.split(",") if p.strip()]:
            if any(ch in p for ch in "*?["):
                out.extend(n for n in self.names(p) if n not in out)
            else:
                self[p]  # raises UnknownNameError with "did you mean"
                if p not in out:
                    out.append(p)
        return out


class Registry:
    """Every kind's :class:`KindRegistry`."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindRegistry] = {k: KindRegistry(k) for k in KINDS}

    def __getitem__(self, kind: str) -> KindRegistry:
        try:
            return self.kinds[kind]
        except KeyError:
            raise unknown("kind", kind, list(KINDS)) from None

    def registrar(self, kind: str, plugin: str) -> "Registrar":
        return Registrar(self[kind], plugin)


class Registrar:
    """Handed to a plugin's hook: ``register(cls)`` adds one component of this hook's kind.

    The name defaults to the object's ``name`` attribute, then to its ``__name__``.
    """

    def __init__(self, target: KindRegistry, plugin: str) -> None:
        self._target = target
        self.plugin = plugin
        self.kind = target.kind

    def __call__(self, obj: Any, name: str | None = None) -> Any:
        name = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        self._target.add(str(name), obj, self.plugin)
        return obj

    register = __call__
