"""A preset's judges: independent classifiers trained on the private split (``Preset.judges``), the ensemble
of the ``judge`` metric (``plugins/metrics/judge.py``). Each is trained, cached and loaded exactly as the
evaluation model is (:func:`~invertkit.core.zoo.scenario.trained_classifier`), under the role ``judge{i}``
(``i``: its position in ``preset.judges``), so its cache key covers its recipe, the data and its position.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from invertkit.core.catalog import Preset
from invertkit.core.data import Split
from invertkit.core.errors import UsageError
from invertkit.core.interfaces.target import split_classifier
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.scenario import trained_classifier


def trained_judges(plugins: Plugins, preset: Preset, split: Split, data_key: str,
                   scenario_name: str) -> tuple[list[nn.Module], list[dict[str, Any]], list[str]]:
    """The preset's judges trained on the private split (from the cache, or trained and cached now): the
    networks (in eval mode), their facts (``arch``, ``seed`` and the training facts: ``train_acc``,
    ``test_acc`` on the private test split, ``train_seconds``) and their cache keys, in ``preset.judges``
    order. Empty lists when the preset declares no judges."""
    nets: list[nn.Module] = []
    facts: list[dict[str, Any]] = []
    keys: list[str] = []
    for i, recipe in enumerate(preset.judges):
        role = f"judge{i}"
        net, f, key = trained_classifier(plugins, recipe, split, data_key, role, scenario=scenario_name)
        if split_classifier(net) is None:
            raise UsageError(f"preset '{scenario_name}': {role} architecture '{recipe.arch}' has no "
                             "features(x)/head(f) split, which the judge metric needs")
        nets.append(net.eval())
        facts.append({"arch": recipe.arch, "seed": recipe.seed, **f})
        keys.append(key)
    return nets, facts, keys
