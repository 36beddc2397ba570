"""Networks in the content-addressed cache (``$INVERTKIT_CACHE/models``): the keys' parts (a data
:func:`fingerprint`, a network layout's :func:`architecture_signature`, ``RECIPE_VERSION``), and
:func:`cached_model`, which trains a network once per content key under a lock and loads it after. What an
attack derives from a defended target (MA's students, surrogates) goes through :func:`derived_cache`, which
also charges the queries its training cost to every cell that re-uses it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from invertkit.core import progress
from invertkit.core.cache import cache_dir, content_key, entry_lock, load_into, read_meta, save_module

RECIPE_VERSION = 1


def models_dir() -> Path:
    d = cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def architecture_signature(nets: dict[str, nn.Module]) -> str:
    """A digest of every network's parameter and buffer names and shapes: a change to a prior's architecture
    (not only to its config) gives a new cache key, so a stale cached prior is retrained, not mis-loaded."""
    layout = {n: [(k, list(v.shape)) for k, v in net.state_dict().items()] for n, net in sorted(nets.items())}
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def _cached_path(key_obj: dict[str, Any], label: str) -> Path:
    return models_dir() / f"{label}-{content_key({'v': RECIPE_VERSION, **key_obj})}.safetensors"


def cached_model(key_obj: dict[str, Any], train, build, *, label: str = "model",  # noqa: ANN001
                 extra_meta: dict[str, Any] | None = None) -> nn.Module:
    """The network ``train()`` returns, trained once per content key; later calls load it into ``build()``.
    ``extra_meta`` (filled in by ``train`` if it likes) is stored in the file's header beside the key."""
    path = _cached_path(key_obj, label)
    with entry_lock(path, label):
        if path.is_file():
            net = build()
            load_into(net, path)
            return net.eval()
        t0 = time.perf_counter()
        with progress.task(f"training {label} ({path.stem.rsplit('-', 1)[-1]})", unit="model") as t:
            net = train()
            t.advance(1)
        save_module(path, net, {"label": label, "key": key_obj, "train_seconds": round(time.perf_counter() - t0, 2),
                                **(extra_meta or {})})
        return net.eval()


def cached_meta(key_obj: dict[str, Any], label: str) -> dict[str, Any]:
    """The metadata :func:`cached_model` stored with a cached network."""
    return read_meta(_cached_path(key_obj, label))


def derived_cache(scenario: Any, target: Any, defense_key: str) -> Callable[..., nn.Module]:
    """``cache(key, train, build, label=...)`` for what an attack derives from ``target`` (MA's students,
    surrogates) in ``scenario``: trained once per (target, defense, key) and re-used; the queries the first
    training charged to ``target`` are recorded and charged again on every re-use (the cell pays for what it
    uses)."""

    def cache(key: dict[str, Any], train: Callable[[], nn.Module], build: Callable[[], nn.Module], *,
              label: str = "derived") -> nn.Module:
        full = {**key, "target": scenario.keys.get("target"), "defense": defense_key}
        spent: dict[str, int] = {}

        def counted_train() -> nn.Module:
            q0 = target.queries
            net = train()
            spent["queries"] = target.queries - q0
            return net

        net = cached_model(full, counted_train, build, label=label, extra_meta=spent)
        if not spent:  # a cache hit: pay what it cost when it was made
            target.charge_derived(int(cached_meta(full, label).get("queries", 0)))
        return net

    return cache
