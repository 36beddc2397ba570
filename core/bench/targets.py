"""A cell's target: loaded from the registry, named as defended, its defended natural accuracy (computed once
per target, defense, options and seed, and shared through the cache), and the evaluator's side of the cell
(:func:`metric_context`), which is never handed to an attack."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import invertkit
from invertkit.core.bench.plan import Cell
from invertkit.core.cache import atomic_write_json, cache_dir, content_key, entry_lock
from invertkit.core.catalog import Catalog
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.metric import MetricContext
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.scenario import Scenario, build_scenario, defense_context, natural_accuracy


def target_scenario(catalog: Catalog, plugins: Plugins, name: str) -> Scenario:
    """The scenario target ``name`` comes with: its preset's, or (a standalone target) its own entry's."""
    spec = catalog.target(name)
    if spec.standalone:
        from invertkit.core.zoo.standalone import build_standalone

        return build_standalone(name, spec, plugins)
    return build_scenario(spec.preset, catalog, plugins)


def load_target(catalog: Catalog, plugins: Plugins, name: str) -> tuple[TargetModel, Scenario]:
    spec = catalog.target(name)
    scenario = target_scenario(catalog, plugins, name)
    backend = plugins.get("backend", spec.backend)()
    if spec.view is not None:  # another model of the preset's scenario: what attacks derive from it is its own
        from dataclasses import replace

        # what the view's model is made of, as its backend keys it (a federation's run): a change to it is a
        # new key for every cached cell and derived model of the view
        made_of = backend.view_key(spec, scenario) if hasattr(backend, "view_key") else None
        own = content_key({"of": scenario.keys.get("target"), "view": spec.view, "options": spec.backend_options,
                           "made_of": made_of})
        scenario = replace(scenario, keys={**scenario.keys, "target": own})
    target = backend.load(spec, scenario, plugins)
    target.name = name
    if spec.access == "top-k":
        target.max_topk = spec.top_k
    return target, scenario


def evaluator_target(catalog: Catalog, plugins: Plugins, name: str) -> TargetModel:
    """The evaluator's copy of target ``name``: undefended, every capability its backend has, no budget. Its
    answers are the report's target-side figures, never the attacker's queries."""
    spec = catalog.target(name)
    full = spec.model_copy(update={"access": "embedding" if spec.kind == "embedder" else "white-box", "budget": None})
    scenario = target_scenario(catalog, plugins, name)
    return plugins.get("backend", full.backend)().load(full, scenario, plugins)


def metric_context(scenario: Scenario, attacked: torch.Tensor | None = None,
                   target: TargetModel | None = None) -> MetricContext:
    """The evaluator's side of a cell (never handed to an attack): the evaluation model, the independent
    judges, the private training images, the identities attacked (the set metrics' reference), and with
    ``target`` (:func:`evaluator_target`) the undefended target's logits. A standalone target may have no
    evaluation model or private images; the metrics that need them are then not applicable."""
    from invertkit.core.errors import UsageError
    from invertkit.core.interfaces.capability import Capability
    from invertkit.core.interfaces.target import split_classifier

    net = scenario.eval_net.eval() if scenario.eval_net is not None else None
    parts = split_classifier(net) if net is not None else (None, None)
    if parts is None:
        raise UsageError(f"the evaluation model {type(net).__name__} has no features/head split; metrics need its features")
    logits = target.logits if target is not None and target.has(Capability.LOGITS) else None
    return MetricContext(
        target_logits=logits,
        eval_logits=net,
        eval_features=parts[0],
        private_images=scenario.split.private_train[0],
        private_labels=scenario.split.private_train[1],
        num_classes=scenario.num_classes,
        judges=[j.eval() for j in scenario.judges],
        attacked=None if attacked is None else torch.unique(torch.as_tensor(attacked)),
    )


@dataclass
class AttackedRecords:
    """A cell's attacked items, one result row each, with what the attacker knows of them and what the evaluator
    compares: a records (tabular) cell's records (:func:`attacked_records`) or an embedder cell's leaked
    templates (:func:`leaked_templates`). For records: the private training records whose label is an attacked
    class, in order. ``attacker`` is what an attribute-inference attacker knows of them, handed to the attack as
    ``AttackContext.extras``: ``schema`` (the columns; public), ``records`` (each record with its sensitive
    attribute's columns zeroed) and ``record_labels`` (their labels). ``evaluator`` is the metrics' side
    (``MetricContext.extras``): ``schema``, ``record_index`` (the records' rows in the private training split,
    the truth) and ``public_records`` (the public split, for the prior-only baseline)."""

    labels: torch.Tensor
    attacker: dict[str, Any]
    evaluator: dict[str, Any]


def attacked_records(scenario: Scenario, ids: torch.Tensor) -> AttackedRecords | None:
    """The attacked records of a cell on a records scenario (one whose split has a schema); ``None`` for images.
    The attacker's threat model (Fredrikson et al. 2014, Mehnaz et al. 2022): it knows every attribute of each
    record but the sensitive one, and the record's label; never the sensitive columns."""
    schema = getattr(scenario.split, "schema", None)
    if schema is None:
        return None
    x, y = scenario.split.private_train
    index = torch.nonzero(torch.isin(y, torch.as_tensor(ids, dtype=y.dtype))).flatten()
    known = schema.mask(x[index])
    return AttackedRecords(
        labels=y[index].clone(),
        attacker={"schema": schema, "records": known, "record_labels": y[index].clone()},
        evaluator={"schema": schema, "record_index": index, "public_records": scenario.split.public[0]},
    )


def leaked_templates(catalog: Catalog, plugins: Plugins, cell: Cell, scenario: Scenario, defense: Any,
                     ids: torch.Tensor) -> AttackedRecords | None:
    """The leaked templates of a cell on an embedder target (``kind = "embedder"``); ``None`` for any other
    target, or one without private images. The template-inversion threat model (Mai et al., TPAMI 2019): the
    attacker holds the *stored templates* of the attacked private images, never the images.

    The attacked images are ``samples_per_identity`` private training images of each attacked identity (a
    seeded draw; fewer where an identity has fewer), one reconstruction each, in order. ``attacker``
    (``AttackContext.extras``): ``templates``, what the system stores for them, i.e. what the target *as
    defended* releases (BioHash bits, noisy templates, a retrained network's templates), computed on a fresh copy
    without a budget: a leak is not a query, so none is charged; nothing when the defense does not release
    templates (``releases_templates = False``: secure storage; the plan skips the attacks that need them).
    ``evaluator`` (``MetricContext.extras``): ``templates`` (the undefended templates), ``template_features``
    (the undefended target's extractor), ``template_index`` (the images' rows in the private training split)
    and ``paired_reference`` (the images themselves)."""
    spec = catalog.target(cell.target)
    x, y = scenario.split.private_train
    if spec.kind != "embedder" or len(x) == 0:
        return None
    g = torch.Generator().manual_seed(int(cell.seed))
    rows = []
    for i in torch.as_tensor(ids).tolist():
        mine = torch.nonzero(y == int(i)).flatten()
        rows.append(mine[torch.randperm(len(mine), generator=g)[: cell.samples_per_identity]].sort().values)
    index = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    if len(index) == 0:
        return None
    images = x[index]
    clean_target = evaluator_target(catalog, plugins, cell.target)
    with torch.no_grad():
        clean = clean_target.features(images).detach()
    attacker: dict[str, Any] = {}
    if getattr(defense, "releases_templates", True):
        fresh, _ = load_target(catalog, plugins, cell.target)
        fresh.budget = None
        stored = defense.apply(fresh, defense_context(scenario, plugins, seed=cell.seed))
        with torch.no_grad():
            attacker["templates"] = stored.features(images).detach().clone()
    evaluator = {"templates": clean, "template_features": clean_target.features, "template_index": index,
                 "paired_reference": images}
    return AttackedRecords(labels=y[index].clone(), attacker=attacker, evaluator=evaluator)


def defended_key(defense: Any, cell: Cell) -> str:
    """Names the target as defended in ``cell``: the defense, its options, the attacker's mode, and the seed
    where it makes another network (a training-time defense trains one per seed). What an attack derives from
    the defended target (a fitted prior, students) is cached under this key."""
    seed = cell.seed if getattr(defense, "kind", "output") == "training" else None
    return content_key({"defense": cell.defense, "options": cell.defense_options, "seed": seed,
                        "adaptive": cell.adaptive})


def gradient_label(defense: Any, adaptive: bool) -> str:
    """How gradients reach the attacker in a cell: none through a deployed API filter; BPDA or exact through
    it for an adaptive attacker; the defense's own word otherwise."""
    if getattr(defense, "filters_api", False):
        if not adaptive:
            return "none (deployed API)"
        return "BPDA (identity backward)" if getattr(defense, "straight_through", False) else "exact (adaptive)"
    return getattr(defense, "gradient", "exact")


def natural_dir() -> Path:
    d = cache_dir() / "natural"
    d.mkdir(parents=True, exist_ok=True)
    return d


def defended_natural_accuracy(cell: Cell, catalog: Catalog, plugins: Plugins, scenario: Scenario, defense: Any, *,
                              memo: dict | None = None, shared: bool = True, scope: str | None = None) -> float:
    """The natural accuracy of ``cell``'s target as defended (a fresh copy, no budget, deployed), on the private
    test set: computed once per (target, defense, options, seed). ``memo`` keeps it in this process;
    ``shared``: also in the cache (``natural/``, under a lock), so every executor's workers use the one value;
    ``scope`` (a fresh bench's run id) keeps a fresh bench from reading what an earlier run stored."""
    nat_key = (cell.target, cell.defense, json.dumps(cell.defense_options, sort_keys=True), cell.seed)
    if memo is not None and nat_key in memo:
        return memo[nat_key]

    def compute() -> float:
        fresh, _ = load_target(catalog, plugins, cell.target)
        fresh.budget = None
        defended = defense.apply(fresh, defense_context(scenario, plugins, seed=cell.seed))
        if not defended.has(Capability.LABEL):  # a template API answers no label: no closed-set accuracy
            return float("nan")
        return natural_accuracy(defended.label, *scenario.split.private_test)

    if not shared:
        value = compute()
    else:
        key = content_key({"invertkit": invertkit.__version__, "scenario": scenario.keys,
                           "target": catalog.target(cell.target).model_dump(mode="json"), "defense": cell.defense,
                           "options": cell.defense_options, "seed": cell.seed, "scope": scope})
        path = natural_dir() / f"{key}.json"
        with entry_lock(path, f"the natural accuracy of {cell.target} under {cell.defense}"):
            value = None
            try:
                value = float(json.loads(path.read_text())["natural_acc"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            if value is None or value != value:  # missing, unreadable or NaN: computed (again)
                value = compute()
                atomic_write_json(path, {"natural_acc": value, "target": cell.target, "defense": cell.defense})
    if memo is not None:
        memo[nat_key] = value
    return value
