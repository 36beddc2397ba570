"""Scenarios: a preset's data split, its target, evaluation model and prior — trained on first use and
kept in the content-addressed cache (``core.cache``), so a re-run loads instead of training. Each model is
made under a lock on its cache entry (:func:`~invertkit.core.cache.entry_lock`): runs sharing one cache
train it once, the others wait and load it.

A cache key covers the recipe, the data (a fingerprint of the split's tensors) and ``RECIPE_VERSION`` (a
prior's also its networks' layout, :func:`architecture_signature`); change any of them and the model is
trained anew under a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from invertkit.core.cache import (
    atomic_write_json, cache_dir, content_key, entry_lock, file_digest, load_checkpoint, load_into, read_meta,
    save_module,
)
from invertkit.core.catalog import Catalog, ModelRecipe, Preset
from invertkit.core.errors import CheckpointError, UsageError
from invertkit.core.interfaces.access import seal
from invertkit.core.data import Split, identity_split
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.train import accuracy, train_classifier

RECIPE_VERSION = 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fingerprint(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass
class Scenario:
    name: str
    preset: Preset
    split: Split
    target_net: nn.Module
    eval_net: nn.Module
    #: the preset's prior; ``None`` for a prior that learns from the target (KEDMI, PLG-MI): that one is fitted
    #: per cell to the target *as defended*, through the attacker's view (:func:`prior_for`)
    prior: Prior | None
    facts: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    #: the independent judge's classifiers (trained on the private split; never the target)
    judges: list[nn.Module] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.split.image_shape


def _models_dir() -> Path:
    d = cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_arch(plugins: Plugins, recipe: ModelRecipe, num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    factory = plugins.get("architecture", recipe.arch)
    return factory(num_classes, in_shape, **recipe.arch_options)


def trained_classifier(
    plugins: Plugins, recipe: ModelRecipe, split: Split, data_key: str, role: str, *, scenario: str
) -> tuple[nn.Module, dict[str, Any], str]:
    """The classifier ``recipe`` trains on the private split: from the cache, or trained and cached now."""
    key = content_key({"v": RECIPE_VERSION, "role": role, "recipe": recipe.model_dump(exclude={"weights"}), "data": data_key})
    path = _models_dir() / f"{role}-{recipe.arch}-{key}.safetensors"
    facts_path = path.with_suffix(".json")
    torch.manual_seed(recipe.seed)
    net = build_arch(plugins, recipe, split.num_classes, split.image_shape)
    if recipe.weights:
        return released_classifier(net, recipe, split, role, scenario=scenario)
    with entry_lock(path, f"{role} '{recipe.arch}'"):
        return _trained_classifier(net, recipe, split, role, scenario, key, path, facts_path)


def _trained_classifier(net: nn.Module, recipe: ModelRecipe, split: Split, role: str, scenario: str, key: str,
                        path: Path, facts_path: Path) -> tuple[nn.Module, dict[str, Any], str]:
    if path.is_file() and facts_path.is_file():
        load_into(net, path)
        net.eval()
        return net, json.loads(facts_path.read_text()), key
    log(f"[{scenario}] training {role} '{recipe.arch}' on {len(split.private_train[0])} private images "
        f"({recipe.epochs} epochs); cached for re-use")
    report = train_classifier(
        net,
        split.private_train,
        split.private_test,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        max_shift=recipe.max_shift,
        seed=recipe.seed,
        progress=lambda e, n, loss: log(f"[{scenario}] {role} epoch {e}/{n} loss {loss:.4f}") if e % 5 == 0 or e == n else None,
        checkpoint=path.with_suffix(".resume.pt"),
    )
    facts = {"train_acc": report.train_acc, "test_acc": report.test_acc, "train_seconds": round(report.seconds, 2)}
    meta = {
        "arch": recipe.arch,
        "arch_options": recipe.arch_options,
        "num_classes": split.num_classes,
        "input_shape": list(split.image_shape),
        "role": role,
        "recipe": recipe.model_dump(),
        **facts,
    }
    save_module(path, net, meta)
    atomic_write_json(facts_path, facts)
    log(f"[{scenario}] {role}: test accuracy {report.test_acc:.3f} ({report.seconds:.1f} s)")
    return net, facts, key


def released_classifier(net: nn.Module, recipe: ModelRecipe, split: Split, role: str, *,
                        scenario: str) -> tuple[nn.Module, dict[str, Any], str]:
    """A preset model from a released checkpoint (``recipe.weights``) instead of training: loaded, and its
    accuracy on the private test split measured (once per file, cached by the file's content)."""
    weights = Path(os.path.expandvars(recipe.weights or "")).expanduser()
    if not weights.is_file():
        unset = "; set the environment variable it names to the folder holding the file" if "$" in str(weights) else ""
        raise CheckpointError(f"preset '{scenario}': {role} weights file '{weights.name}' not found at {weights}{unset} "
                              f"(or drop `weights` from the preset's {role} recipe to train it instead)")
    load_checkpoint(net, weights)
    net.eval()
    key = content_key({"v": RECIPE_VERSION, "role": role, "arch": recipe.arch, "weights": file_digest(weights),
                       "test": fingerprint(*split.private_test)})
    facts_path = _models_dir() / f"{role}-{recipe.arch}-{key}.json"
    if facts_path.is_file():
        return net, json.loads(facts_path.read_text()), key
    x, y = split.private_test
    with torch.no_grad():
        acc = natural_accuracy(lambda b: net(b).argmax(1), x, y)
    facts = {"weights": str(weights), "test_acc": acc, "train_seconds": 0.0}
    atomic_write_json(facts_path, facts)
    log(f"[{scenario}] {role}: loaded {weights.name}, test accuracy {acc:.3f}")
    return net, facts, key


def architecture_signature(nets: dict[str, nn.Module]) -> str:
    """A digest of every network's parameter and buffer names and shapes: a change to a prior's architecture
    (not only to its config) gives a new cache key, so a stale cached prior is retrained, not mis-loaded."""
    layout = {n: [(k, list(v.shape)) for k, v in net.state_dict().items()] for n, net in sorted(nets.items())}
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def trained_prior(plugins: Plugins, preset: Preset, split: Split, scenario: str,
                  target: Any = None, target_key: str = "") -> tuple[Prior, dict[str, Any], str]:
    """The preset's prior, trained on the public images once per content key and cached.

    A prior that learns from the target (``needs_target``) is given ``target``, the attacker's view of the
    target as defended, and ``target_key`` names that (target, defense) pair. The queries its training spent
    are recorded with it, and charged again to ``target`` whenever the cached prior is re-used, so the cell
    that uses it pays for it either way."""
    builder_cls = plugins.get("prior", preset.prior.plugin)
    builder: PriorBuilder = builder_cls(preset.prior.options)
    public = split.public[0]
    needs_target = bool(getattr(builder, "needs_target", False))
    if needs_target and target is None:
        raise UsageError(f"prior '{preset.prior.plugin}' learns from the target: it is fitted per (target, defense) "
                         "through the attacker's view (invertkit.core.zoo.scenario.prior_for)")
    torch.manual_seed(preset.prior.seed)
    nets = builder.networks(split.image_shape)
    key = content_key(
        {"v": RECIPE_VERSION, "plugin": preset.prior.plugin, "cfg": builder.config.model_dump(),
         "seed": preset.prior.seed, "data": fingerprint(public), "target": target_key if needs_target else "",
         "arch": architecture_signature(nets)}
    )
    stem = _models_dir() / f"prior-{preset.prior.plugin}-{key}"
    paths = {n: Path(f"{stem}-{n}.safetensors") for n in nets}
    facts_path = Path(f"{stem}.json")
    with entry_lock(stem, f"prior '{preset.prior.plugin}'"):
        return _trained_prior(builder, nets, preset, split, scenario, target, needs_target, key, paths, facts_path)


def _trained_prior(builder: PriorBuilder, nets: dict[str, nn.Module], preset: Preset, split: Split, scenario: str,
                   target: Any, needs_target: bool, key: str, paths: dict[str, Path],
                   facts_path: Path) -> tuple[Prior, dict[str, Any], str]:
    public = split.public[0]
    if facts_path.is_file() and all(p.is_file() for p in paths.values()):
        facts = json.loads(facts_path.read_text())
        for n, net in nets.items():
            load_into(net, paths[n])
            net.eval()
        if needs_target:
            target.charge_derived(int(facts.get("queries", 0)))
        return builder.wrap(nets), facts, key
    view = seal(target) if needs_target else None
    q0 = view.queries if view is not None else 0
    log(f"[{scenario}] training prior '{preset.prior.plugin}' on {len(public)} public images"
        + (f", from the target '{view.name}' as the attacker sees it" if view is not None else "") + "; cached for re-use")
    facts = builder.train(nets, public, seed=preset.prior.seed, target=view)
    if view is not None:
        facts["queries"] = view.queries - q0
    for n, net in nets.items():
        save_module(paths[n], net, {"prior": preset.prior.plugin, "network": n, "config": builder.config.model_dump(),
                                   "image_shape": list(split.image_shape)})
    atomic_write_json(facts_path, facts)
    log(f"[{scenario}] prior trained ({facts.get('seconds', 0):.1f} s)")
    return builder.wrap(nets), facts, key


def prior_needs_target(plugins: Plugins, preset: Preset) -> bool:
    return bool(getattr(plugins.get("prior", preset.prior.plugin), "needs_target", False))


def prior_for(scenario: Scenario, plugins: Plugins, target: Any, defense_key: str) -> tuple[Prior, dict[str, Any]]:
    """The prior an attacker uses against ``target`` (the target as defended): the scenario's own, or, for a
    prior that learns from the target, one fitted to ``target`` through its attacker's view, cached per
    (target, defense) (``defense_key``), its queries charged to ``target`` (see :func:`trained_prior`)."""
    if scenario.prior is not None:
        return scenario.prior, scenario.facts.get("prior", {})
    key = f"{scenario.keys.get('target', '')}/{defense_key}"
    prior, facts, _ = trained_prior(plugins, scenario.preset, scenario.split, scenario.name, target=target, target_key=key)
    return prior, facts


def derived_cache(scenario: Scenario, target: Any, defense_key: str) -> Callable[..., nn.Module]:
    """``cache(key, train, build, label=...)`` for what an attack derives from ``target`` (MA's students,
    surrogates): trained once per (target, defense, key) and re-used; the queries the first training charged
    to ``target`` are recorded and charged again on every re-use (the cell pays for what it uses)."""

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


_MEMO: dict[str, Scenario] = {}


def load_split(plugins: Plugins, preset: Preset) -> Split:
    adapter = plugins.get("dataset", preset.dataset)()
    x, y = adapter.load(preset.root, **preset.dataset_options) if preset.dataset_options else adapter.load(preset.root)
    return identity_split(
        x, y, preset.private_classes, preset.public_classes, test_fraction=preset.test_fraction, seed=preset.seed
    )


def build_scenario(name: str, catalog: Catalog, plugins: Plugins) -> Scenario:
    """The preset ``name``'s scenario, trained on first use and cached (in memory and on disk)."""
    preset = catalog.preset(name)
    memo_key = content_key({"name": name, "preset": preset.model_dump(), "cache": str(cache_dir())})
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    t0 = time.perf_counter()
    split = load_split(plugins, preset)
    data_key = fingerprint(*split.private_train, *split.private_test)
    target, t_facts, t_key = trained_classifier(plugins, preset.target, split, data_key, "target", scenario=name)
    evaluator, e_facts, e_key = trained_classifier(plugins, preset.eval, split, data_key, "eval", scenario=name)
    from invertkit.core.zoo.judges import trained_judges

    judges, j_facts, j_keys = trained_judges(plugins, preset, split, data_key, name)
    if prior_needs_target(plugins, preset):
        prior, p_facts, p_key = None, {"fitted": "per (target, defense), through the attacker's view"}, "per-cell"
    else:
        prior, p_facts, p_key = trained_prior(plugins, preset, split, name)
    sc = Scenario(
        name=name,
        preset=preset,
        split=split,
        target_net=target,
        eval_net=evaluator,
        prior=prior,
        facts={"target": t_facts, "eval": e_facts, "prior": p_facts, "judges": j_facts,
               "load_seconds": time.perf_counter() - t0},
        keys={"target": t_key, "eval": e_key, "prior": p_key, "data": data_key,
              **({"judges": ",".join(j_keys)} if j_keys else {})},
        judges=judges,
    )
    _MEMO[memo_key] = sc
    return sc


def _cached_path(key_obj: dict[str, Any], label: str) -> Path:
    return _models_dir() / f"{label}-{content_key({'v': RECIPE_VERSION, **key_obj})}.safetensors"


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
        log(f"training {label} ({path.stem.rsplit('-', 1)[-1]}); cached for re-use")
        t0 = time.perf_counter()
        net = train()
        save_module(path, net, {"label": label, "key": key_obj, "train_seconds": round(time.perf_counter() - t0, 2),
                                **(extra_meta or {})})
        return net.eval()


def cached_meta(key_obj: dict[str, Any], label: str) -> dict[str, Any]:
    """The metadata :func:`cached_model` stored with a cached network."""
    return read_meta(_cached_path(key_obj, label))


def defense_context(scenario: Scenario, plugins: Plugins, seed: int = 0, adaptive: bool = False):  # noqa: ANN201
    """The :class:`~invertkit.core.interfaces.defense.DefenseContext` of a scenario: its data, the target's
    recipe, fresh target networks and a content-addressed cache for defended models."""
    from invertkit.core.interfaces.defense import DefenseContext

    recipe = scenario.preset.target

    def new_model() -> nn.Module:
        return build_arch(plugins, recipe, scenario.num_classes, scenario.image_shape)

    def cached(key: dict[str, Any], train, build=None) -> nn.Module:  # noqa: ANN001
        full = {**key, "recipe": recipe.model_dump(exclude={"weights"}), "data": scenario.keys.get("data"), "target": scenario.keys.get("target")}
        return cached_model(full, train, build or new_model, label=f"defended-{key.get('defense', 'model')}")

    return DefenseContext(seed=seed, adaptive=adaptive, data=scenario.split, recipe=recipe, new_model=new_model, cached=cached,
                          extras={"scenario": scenario, "target_net": scenario.target_net})


def natural_accuracy(target_label_fn, x: Tensor, y: Tensor, batch_size: int = 512) -> float:  # noqa: ANN001
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((target_label_fn(x[i : i + batch_size]).cpu() == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


__all__ = ["Scenario", "build_scenario", "natural_accuracy", "accuracy"]
