"""A preset's models: its classifiers (target, evaluation model, judges) trained on the private split or
loaded from released weights, and its prior trained on the public images — each made once per content key
under a lock on its cache entry (runs sharing one cache train it once, the others wait and load it) and
loaded after. Training shows its progress (:mod:`invertkit.core.progress`): a bar with ETA on a terminal,
plain start/progress/done lines elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from invertkit.core import progress
from invertkit.core.cache import atomic_write_json, content_key, entry_lock, file_digest, load_checkpoint, load_into, \
    save_module
from invertkit.core.catalog import ModelRecipe, Preset, PriorRecipe
from invertkit.core.data import Split
from invertkit.core.errors import CheckpointError, UsageError
from invertkit.core.interfaces.access import seal
from invertkit.core.interfaces.prior import Prior, PriorBuilder
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.arch import build_architecture
from invertkit.core.zoo.model_cache import RECIPE_VERSION, architecture_signature, fingerprint, models_dir
from invertkit.core.zoo.train import train_classifier


def build_arch(plugins: Plugins, recipe: ModelRecipe, num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    return build_architecture(plugins, recipe.arch, num_classes, in_shape, recipe.arch_options)


def natural_accuracy(target_label_fn, x: Tensor, y: Tensor, batch_size: int = 512) -> float:  # noqa: ANN001
    """The fraction of ``x`` labelled ``y``; NaN without images (a brought model with no private data)."""
    if len(x) == 0:
        return float("nan")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((target_label_fn(x[i : i + batch_size]).cpu() == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


def trained_classifier(
    plugins: Plugins, recipe: ModelRecipe, split: Split, data_key: str, role: str, *, scenario: str
) -> tuple[nn.Module, dict[str, Any], str]:
    """The classifier ``recipe`` trains on the private split: from the cache, or trained and cached now."""
    key = content_key({"v": RECIPE_VERSION, "role": role, "recipe": recipe.model_dump(exclude={"weights"}), "data": data_key})
    path = models_dir() / f"{role}-{recipe.arch}-{key}.safetensors"
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
    label = (f"[{scenario}] training {role} '{recipe.arch}' on {len(split.private_train[0])} private images "
             "(cached for re-use)")
    with progress.task(label, total=recipe.epochs, unit="epoch") as t:
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
            progress=progress.callback(t),
            checkpoint=path.with_suffix(".resume.pt"),
        )
        t.info = f"test accuracy {report.test_acc:.3f}"
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
    facts_path = models_dir() / f"{role}-{recipe.arch}-{key}.json"
    if facts_path.is_file():
        return net, json.loads(facts_path.read_text()), key
    x, y = split.private_test
    with torch.no_grad():
        acc = natural_accuracy(lambda b: net(b).argmax(1), x, y)
    facts = {"weights": str(weights), "test_acc": acc, "train_seconds": 0.0}
    atomic_write_json(facts_path, facts)
    progress.note(f"[{scenario}] {role}: loaded {weights.name}, test accuracy {acc:.3f}")
    return net, facts, key


def trained_prior(plugins: Plugins, recipe: PriorRecipe | Preset, split: Split, scenario: str,
                  target: Any = None, target_key: str = "") -> tuple[Prior, dict[str, Any], str]:
    """The prior ``recipe`` (a :class:`~invertkit.core.catalog.PriorRecipe`, or a preset, whose prior it is),
    trained on the public images once per content key and cached.

    A prior that learns from the target (``needs_target``) is given ``target``, the attacker's view of the
    target as defended, and ``target_key`` names that (target, defense) pair. The queries its training spent
    are recorded with it, and charged again to ``target`` whenever the cached prior is re-used, so the cell
    that uses it pays for it either way."""
    recipe = recipe.prior if isinstance(recipe, Preset) else recipe
    builder_cls = plugins.get("prior", recipe.plugin)
    builder: PriorBuilder = builder_cls(recipe.options)
    public = split.public[0]
    needs_target = bool(getattr(builder, "needs_target", False))
    if needs_target and target is None:
        raise UsageError(f"prior '{recipe.plugin}' learns from the target: it is fitted per (target, defense) "
                         "through the attacker's view (invertkit.core.zoo.scenario.prior_for)")
    torch.manual_seed(recipe.seed)
    nets = builder.networks(split.image_shape)
    key = content_key(
        {"v": RECIPE_VERSION, "plugin": recipe.plugin, "cfg": builder.config.model_dump(),
         "seed": recipe.seed, "data": fingerprint(public), "target": target_key if needs_target else "",
         "arch": architecture_signature(nets)}
    )
    stem = models_dir() / f"prior-{recipe.plugin}-{key}"
    paths = {n: Path(f"{stem}-{n}.safetensors") for n in nets}
    facts_path = Path(f"{stem}.json")
    with entry_lock(stem, f"prior '{recipe.plugin}'"):
        return _trained_prior(builder, nets, recipe, split, scenario, target, needs_target, key, paths, facts_path)


def _prior_work(config: Any) -> tuple[int | None, str]:
    """How much training a prior's config asks for, as its ``progress`` callback counts it: generator
    ``steps`` or ``epochs`` over the public set (the callback's total stands where neither is configured)."""
    for unit in ("steps", "epochs"):
        value = getattr(config, unit, None)
        if isinstance(value, int) and value > 0:
            return value, unit[:-1]
    return None, "step"


def _trained_prior(builder: PriorBuilder, nets: dict[str, nn.Module], recipe: PriorRecipe, split: Split, scenario: str,
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
    label = (f"[{scenario}] training prior '{recipe.plugin}' on {len(public)} public images"
             + (f", from the target '{view.name}' as the attacker sees it" if view is not None else "")
             + " (cached for re-use)")
    total, unit = _prior_work(builder.config)
    with progress.task(label, total=total, unit=unit) as t:
        facts = builder.train(nets, public, seed=recipe.seed, target=view, progress=progress.callback(t))
        t.advance(max(0, (t.total or 0) - t.done))  # a callback that reports every n steps may stop short
    if view is not None:
        facts["queries"] = view.queries - q0
    for n, net in nets.items():
        save_module(paths[n], net, {"prior": recipe.plugin, "network": n, "config": builder.config.model_dump(),
                                   "image_shape": list(split.image_shape)})
    atomic_write_json(facts_path, facts)
    return builder.wrap(nets), facts, key
