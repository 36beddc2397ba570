"""What ``invertkit show`` prints about a registered component, without importing torch where it can.

The facts (summary, paper, threat model, requirements, a defense's kind and gradients, the ``Config``'s defaults
and JSON schema) live on the component's class, whose module imports torch. They are computed from the class
once, and kept in ``$INVERTKIT_CACHE/component-facts.json`` with the size and modification time of every source
file of the component's package and of invertkit that was loaded when they were read. A later ``show`` of a
component whose plugin is not imported yet reads them from there, while none of those files has changed (and
the plugin's distribution and pydantic are the same versions); otherwise the module is imported and the facts
are read and kept anew.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from invertkit.core.plugin_index import read_cache, update_cache
from invertkit.core.registry import describe

FACTS_FILE = "component-facts.json"


def threat_model(kind: str, obj: Any) -> str:
    """The class's ``threat_model``; for an attack without one, what its ``requires`` makes it."""
    own = getattr(obj, "threat_model", "")
    if own or kind != "attack" or getattr(obj, "requires", None) is None:
        return str(own or "")
    needs = {getattr(c, "value", c) for c in obj.requires}
    if not needs:
        return "none (uses no target access)"
    if needs & {"grad", "weights"}:
        return "white-box"
    if needs <= {"label"}:
        return "black-box (labels only)"
    return "black-box (scores)" if needs & {"probs", "topk", "logits"} else "black-box (" + ", ".join(sorted(needs)) + ")"


def _values(items: Any) -> list[str]:
    return sorted(str(getattr(c, "value", c)) for c in items)


def class_facts(kind: str, obj: Any) -> dict[str, Any]:
    """The facts ``show`` prints, read from the class (or function) ``obj`` registered as a ``kind``."""
    summary, paper = describe(obj)
    facts: dict[str, Any] = {"summary": summary, "paper": paper, "threat_model": threat_model(kind, obj)}
    if getattr(obj, "requires", None) is not None:
        facts["requires"] = _values(obj.requires)
    if hasattr(obj, "prior_requires"):  # what an attack needs of its prior (a set of an enum)
        facts["prior_requires"] = _values(getattr(obj, "prior_requires", None) or ())
    if getattr(obj, "kind", None) in ("output", "training"):
        facts["defense_kind"] = obj.kind
        facts["gradient"] = str(getattr(obj, "gradient", "exact"))
    config = getattr(obj, "Config", None)
    if config is not None:
        facts["defaults"] = config().model_dump(mode="json")
        facts["schema"] = config.model_json_schema()
    return facts


def _stamp(dist: str) -> str:
    import pydantic

    return f"{dist} pydantic {pydantic.VERSION}"


def _source_files(packages: set[str]) -> dict[str, list[int]]:
    """Size and modification time of the source file of every loaded module of ``packages``."""
    files: dict[str, list[int]] = {}
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if name.split(".", 1)[0] in packages and origin:
            try:
                st = os.stat(origin)
            except OSError:
                continue
            files[origin] = [st.st_size, st.st_mtime_ns]
    return files


def _unchanged(files: Any) -> bool:
    if not isinstance(files, dict) or not files:
        return False
    for path, (size, mtime) in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != size or st.st_mtime_ns != mtime:
            return False
    return True


def component_facts(plugins: Any, kind: str, name: str) -> tuple[str, dict[str, Any]]:
    """``(plugin name, facts)`` of the registered ``kind`` ``name``: from the cache while its sources are
    unchanged and its plugin is not imported; else read from its class (importing its module) and kept."""
    registry = plugins.registry[kind]
    entry = registry.peek(name)  # an unknown name is one clear error, before anything is imported
    if entry.loaded:
        return entry.plugin, class_facts(kind, entry.obj)
    info = plugins.infos.get(entry.plugin)
    dist, source = (info.dist, info.source) if info is not None else ("", "")
    key = f"{kind}:{name}:{entry.plugin}:{source}"
    hit = read_cache(FACTS_FILE).get(key)
    if isinstance(hit, dict) and hit.get("stamp") == _stamp(dist) and _unchanged(hit.get("files")) \
            and isinstance(hit.get("facts"), dict):
        return entry.plugin, hit["facts"]
    entry = registry[name]  # imports this component's module only
    facts = class_facts(kind, entry.obj)
    packages = {"invertkit", source.split(".", 1)[0].split(":", 1)[0]} - {""}
    update_cache({key: {"stamp": _stamp(dist), "files": _source_files(packages), "facts": facts}}, FACTS_FILE)
    return entry.plugin, facts
