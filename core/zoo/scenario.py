"""Scenarios: a preset's data split, its target, evaluation model, judges and prior — trained on first use and
kept in the content-addressed cache, so a re-run loads instead of training (:mod:`~invertkit.core.zoo.preset_models`;
the cache itself: :mod:`~invertkit.core.zoo.model_cache`). Each model is made under a lock on its cache entry
(:func:`~invertkit.core.cache.entry_lock`): runs sharing one cache train it once, the others wait and load it.

A cache key covers the recipe, the data (a fingerprint of the split's tensors) and ``RECIPE_VERSION`` (a
prior's also its networks' layout, :func:`architecture_signature`); change any of them and the model is
trained anew under a new key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from invertkit.core import progress
from invertkit.core.cache import cache_dir, content_key
from invertkit.core.catalog import Catalog, Preset, PriorRecipe
from invertkit.core.errors import UsageError
from invertkit.core.data import Split, identity_split
from invertkit.core.interfaces.prior import Prior
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.model_cache import (  # noqa: F401 - re-exported: imported from here by plugins and tests
    RECIPE_VERSION, architecture_signature, cached_meta, cached_model, derived_cache, fingerprint, models_dir,
)
from invertkit.core.zoo.preset_models import (  # noqa: F401 - re-exported
    build_arch, natural_accuracy, released_classifier, trained_classifier, trained_prior,
)
from invertkit.core.zoo.train import accuracy


def log(msg: str) -> None:
    """A line of information on stderr (silent under ``--quiet``); see :mod:`invertkit.core.progress`."""
    progress.note(msg)


@dataclass
class Scenario:
    """What a target comes with: the data split, the trained (or released) networks, the prior.

    A preset's scenario has them all. A standalone target's (a model the user brings,
    :func:`~invertkit.core.zoo.standalone.build_standalone`) has ``preset = None``, no ``target_net`` (its
    backend loads the user's file), an ``eval_net`` only when the user gives one, private images only when the
    user has them, and ``prior_recipe`` from its own entry."""

    name: str
    preset: Preset | None
    split: Split
    target_net: nn.Module | None
    eval_net: nn.Module | None
    #: the preset's prior; ``None`` for a prior that learns from the target (KEDMI, PLG-MI): that one is fitted
    #: per cell to the target *as defended*, through the attacker's view (:func:`prior_for`)
    prior: Prior | None
    facts: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    #: the independent judge's classifiers (trained on the private split; never the target)
    judges: list[nn.Module] = field(default_factory=list)

    #: the prior's recipe (the preset's, or a standalone target's own; ``None``: the target has no prior)
    prior_recipe: PriorRecipe | None = None

    def __post_init__(self) -> None:
        if self.prior_recipe is None and self.preset is not None:
            self.prior_recipe = self.preset.prior

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.split.image_shape


def prior_needs_target(plugins: Plugins, recipe: PriorRecipe | Preset | None) -> bool:
    recipe = recipe.prior if isinstance(recipe, Preset) else recipe
    return recipe is not None and bool(getattr(plugins.get("prior", recipe.plugin), "needs_target", False))


def prior_for(scenario: Scenario, plugins: Plugins, target: Any, defense_key: str) -> tuple[Prior, dict[str, Any]]:
    """The prior an attacker uses against ``target`` (the target as defended): the scenario's own, or, for a
    prior that learns from the target, one fitted to ``target`` through its attacker's view, cached per
    (target, defense) (``defense_key``), its queries charged to ``target`` (see :func:`trained_prior`)."""
    if scenario.prior is not None:
        return scenario.prior, scenario.facts.get("prior", {})
    if scenario.prior_recipe is None:
        raise UsageError(f"target '{scenario.name}' has no prior: give its entry a prior = {{ plugin = \"wgan-gp\" }}, "
                         "trained on its public images")
    key = f"{scenario.keys.get('target', '')}/{defense_key}"
    prior, facts, _ = trained_prior(plugins, scenario.prior_recipe, scenario.split, scenario.name, target=target, target_key=key)
    return prior, facts


_MEMO: dict[str, Scenario] = {}


def load_split(plugins: Plugins, preset: Preset) -> Split:
    """The preset's identity split; with ``preset.public`` the public images come from that dataset instead
    (decoded at the private images' size and channels)."""
    from dataclasses import replace

    adapter = plugins.get("dataset", preset.dataset)()
    x, y = adapter.load(preset.root, **preset.dataset_options) if preset.dataset_options else adapter.load(preset.root)
    split = identity_split(
        x, y, preset.private_classes, preset.public_classes, test_fraction=preset.test_fraction, seed=preset.seed
    )
    if preset.public is not None:
        from invertkit.core.zoo.standalone import load_images

        split = replace(split, public=load_images(plugins, preset.public, split.image_shape, "the preset's public data"))
    # records (tabular data): their columns and sensitive attribute; images have none
    schema = adapter.schema(**preset.dataset_options) if callable(getattr(adapter, "schema", None)) else None
    return replace(split, schema=schema) if schema is not None else split


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
    if preset.prior is None:  # a preset without a prior (tabular records): attacks that need one are skipped
        prior, p_facts, p_key = None, {}, ""
    elif prior_needs_target(plugins, preset):
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


def defense_context(scenario: Scenario, plugins: Plugins, seed: int = 0, adaptive: bool = False):  # noqa: ANN201
    """The :class:`~invertkit.core.interfaces.defense.DefenseContext` of a scenario: its data, the target's
    recipe, fresh target networks and a content-addressed cache for defended models."""
    from invertkit.core.interfaces.defense import DefenseContext

    if scenario.preset is None:  # a brought model: output defenses apply, training-time ones cannot retrain it
        def refuse(*_: Any, **__: Any) -> nn.Module:
            raise UsageError(f"target '{scenario.name}' is a model the user brings: invertkit cannot retrain it, so a "
                             "training-time defense does not apply (defend it yourself and bring the defended model)")

        return DefenseContext(seed=seed, adaptive=adaptive, data=scenario.split, recipe=None, new_model=refuse,
                              cached=refuse, extras={"scenario": scenario, "target_net": None})
    recipe = scenario.preset.target

    def new_model() -> nn.Module:
        return build_arch(plugins, recipe, scenario.num_classes, scenario.image_shape)

    def cached(key: dict[str, Any], train, build=None) -> nn.Module:  # noqa: ANN001
        full = {**key, "recipe": recipe.model_dump(exclude={"weights"}), "data": scenario.keys.get("data"), "target": scenario.keys.get("target")}
        return cached_model(full, train, build or new_model, label=f"defended-{key.get('defense', 'model')}")

    return DefenseContext(seed=seed, adaptive=adaptive, data=scenario.split, recipe=recipe, new_model=new_model, cached=cached,
                          extras={"scenario": scenario, "target_net": scenario.target_net})


__all__ = ["Scenario", "build_scenario", "natural_accuracy", "accuracy"]
