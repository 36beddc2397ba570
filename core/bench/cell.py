"""One bench cell, in four stages, each a function over the :class:`CellRun` the previous one filled in:

1. :func:`prepare` — the target loaded and the cell keyed; the cached cell when there is a sound one; else the
   target defended, the attack built with its prior (fitted to the target as defended where it learns from it)
   and its context;
2. :func:`attack` — the attack run on the defended target;
3. :func:`evaluate` — the metrics, the defended natural accuracy, the queries the cell spent;
4. :func:`persist` — the record, and the cell written into the content-addressed cache.

:func:`run_cell` runs them. A cached cell carries a checksum over its record and its images: one that does
not match, or cannot be read, is computed again (a note on stderr says so), never trusted. A cell that
raises (or calls ``sys.exit``) is recorded ``failed`` with its error; ``KeyboardInterrupt`` propagates."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

import invertkit
from invertkit.core import progress
from invertkit.core.bench.plan import Cell
from invertkit.core.bench.targets import (
    attacked_records, defended_key, defended_natural_accuracy, evaluator_target, gradient_label, leaked_templates,
    load_target, metric_context,
)
from invertkit.core.cache import atomic_path, atomic_write_json, cache_dir, record_checksum
from invertkit.core.catalog import Catalog
from invertkit.core.interfaces.attack import AttackContext
from invertkit.core.interfaces.metric import metric_shortfall
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.plugins import Plugins
from invertkit.core.zoo.scenario import Scenario, defense_context, derived_cache, prior_for

METRIC_KEYS = ("acc@1", "judge_acc", "adversarial_rate", "acc@5", "knn_dist", "natural_acc", "queries",
               "prior_queries", "seconds")


@dataclass
class CellOutcome:
    record: dict[str, Any]
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------ the cell cache
def cells_dir() -> Path:
    d = cache_dir() / "cells"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cell_key(cell: Cell, scenario: Scenario, target_spec: Any = None) -> str:
    """The cell's cache key: the cell, the scenario's models, and the target's entry (its access, budget,
    backend: the same name with another budget is another cell)."""
    spec = target_spec.model_dump(mode="json", exclude={"summary"}) if target_spec is not None else None
    return cell.key({"invertkit": invertkit.__version__, "scenario": scenario.keys, "target_entry": spec})


def read_cached_cell(key: str) -> CellOutcome | None:
    """The cached cell ``key``, or ``None`` when there is none, or when it cannot be read or fails its
    checksum (then a note goes to stderr, and the caller computes the cell again)."""
    rec_path, img_path = cells_dir() / f"{key}.json", cells_dir() / f"{key}.safetensors"
    if not rec_path.is_file():
        return None
    try:
        record = json.loads(rec_path.read_text())
        blob = img_path.read_bytes()
        if not isinstance(record, dict) or record.get("checksum") != record_checksum(record, blob):
            raise ValueError("checksum mismatch")
        tensors = load_tensors(blob)
        images, labels = tensors["images"], tensors["labels"]
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it is not trusted
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        progress.warn(f"note: cached cell {key} is damaged ({why}); computing it again")
        return None
    record.pop("checksum")
    record["cached"] = True
    return CellOutcome(record, images, labels)


def write_cached_cell(key: str, record: dict[str, Any], images: torch.Tensor, labels: torch.Tensor) -> None:
    """Store a finished cell: its images, then its record with the checksum over both (written last: its
    presence marks the cell finished)."""
    img_path = cells_dir() / f"{key}.safetensors"
    with atomic_path(img_path) as tmp:
        save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(tmp))
        blob = tmp.read_bytes()
    stored = json.loads(json.dumps(record, default=str))  # what a reader will see, floats and all
    stored["checksum"] = record_checksum(stored, blob)
    atomic_write_json(cells_dir() / f"{key}.json", stored)


# ------------------------------------------------------------------------------------------ the four stages
@dataclass
class CellRun:
    """What one cell's stages hand on to the next. ``stage`` names the step running now: a ``sys.exit`` inside
    a plugin is reported as that step's."""

    cell: Cell
    catalog: Catalog
    plugins: Plugins
    stage: str = "the target"
    scenario: Scenario | None = None
    key: str = ""
    defense: Any = None
    #: the target as loaded (its budget), and as defended, as the attack sees it
    target: TargetModel | None = None
    attacked: TargetModel | None = None
    attack: Any = None
    prior: Any = None
    prior_queries: int = 0
    ids: torch.Tensor | None = None
    peak_gpu_mib: float = float("nan")
    #: metrics the cell's context cannot give (a brought model without an evaluation model or private
    #: images), with the reason
    not_applicable: dict[str, str] = field(default_factory=dict)
    #: a records target (tabular): the attacked records, what the attacker knows of them and what the
    #: evaluator compares (:func:`~invertkit.core.bench.targets.attacked_records`); an embedder target: the
    #: leaked templates (:func:`~invertkit.core.bench.targets.leaked_templates`); ``None`` for other images
    records: Any = None


def record_base(cell: Cell) -> dict[str, Any]:
    return {"attack": cell.attack, "defense": cell.defense, "target": cell.target, "mode": cell.mode}


def prepare(run: CellRun, *, use_cache: bool = True) -> CellOutcome | None:
    """Load the target and key the cell; return the cached cell if there is a sound one (with ``use_cache``).
    Otherwise defend the target and build the attack, its prior and its context; returns ``None``."""
    cell, plugins = run.cell, run.plugins
    run.stage = "the target"
    target, run.scenario = load_target(run.catalog, plugins, cell.target)
    run.target = target
    run.key = cell_key(cell, run.scenario, run.catalog.target(cell.target))
    if use_cache:
        cached = read_cached_cell(run.key)
        if cached is not None:
            return cached
    run.stage = "defense"
    run.defense = plugins.get("defense", cell.defense)(cell.defense_options)
    run.attacked = run.defense.apply(target, defense_context(run.scenario, plugins, seed=cell.seed,
                                                             adaptive=cell.adaptive))
    d_key = defended_key(run.defense, cell)
    run.stage = "attack"
    run.attack = plugins.get("attack", cell.attack)(cell.attack_options)
    # what the attacker derives from the target is derived from it as defended, and paid for in queries
    run.stage = "prior"
    run.prior = prior_for(run.scenario, plugins, run.attacked, d_key)[0] if run.attack.needs_prior else None
    run.prior_queries = run.attacked.queries
    run.ids = torch.tensor(cell.identities if cell.identities is not None else range(run.scenario.num_classes))
    run.records = attacked_records(run.scenario, run.ids) or leaked_templates(run.catalog, plugins, cell, run.scenario,
                                                                             run.defense, run.ids)
    run.attack.context = AttackContext(public_images=run.scenario.split.public[0],
                                       public_labels=run.scenario.split.public[1], plugins=plugins,
                                       cache=derived_cache(run.scenario, run.attacked, d_key),
                                       extras=dict(run.records.attacker) if run.records is not None else {})
    return None


def attack(run: CellRun) -> AttackResult:
    """Run the prepared attack on the defended target (the peak GPU memory it took is noted in ``run``)."""
    run.stage = "attack"
    # records: one inference per attacked record, its (known) label; images: samples per identity
    labels = run.records.labels if run.records is not None else run.ids.repeat_interleave(run.cell.samples_per_identity)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = run.attack(run.attacked, labels, prior=run.prior, seed=run.cell.seed)
    run.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    return result


def evaluate(run: CellRun, result: AttackResult, *, natural_cache: dict | None = None, natural_shared: bool = True,
             natural_scope: str | None = None) -> dict[str, Any]:
    """The cell's metrics: each of the cell's metrics on the reconstructions (the evaluator's side, never the
    attack's), the defended natural accuracy (shared, see
    :func:`~invertkit.core.bench.targets.defended_natural_accuracy`), and every query behind the cell."""
    cell = run.cell
    run.stage = "a metric"
    mctx = metric_context(run.scenario, run.ids, evaluator_target(run.catalog, run.plugins, cell.target))
    mctx.extras["peak_gpu_mib"] = run.peak_gpu_mib
    if run.records is not None:
        mctx.extras.update(run.records.evaluator)
    # what the target's backend gives the evaluator of its view (a federated client's batch): never the attack's
    spec = run.catalog.target(cell.target)
    mctx.extras.update(getattr(run.plugins.get("backend", spec.backend)(), "evaluator_extras",
                               lambda *_: {})(spec, run.scenario, run.plugins))
    metrics: dict[str, Any] = {}
    have = mctx.available()
    names = list(cell.metrics)
    if "eval" not in have and "target" in have and "target-acc" not in names:
        names.append("target-acc")  # no evaluation model: the target's own figures, labelled as such
    for m in names:
        cls = run.plugins.get("metric", m)
        why = metric_shortfall(cls, have)
        if why:
            run.not_applicable[m] = why
            continue
        metric = cls(mctx)
        metric.update(result.images, result.labels)
        metrics.update(metric.compute())
    run.stage = "the natural accuracy"
    metrics["natural_acc"] = defended_natural_accuracy(cell, run.catalog, run.plugins, run.scenario, run.defense,
                                                       memo=natural_cache, shared=natural_shared, scope=natural_scope)
    # every query behind the cell: the prior fitted to the target, derived students, the search itself
    metrics["queries"] = run.attacked.queries
    metrics["prior_queries"] = run.prior_queries
    metrics["seconds"] = round(result.seconds, 3)
    return metrics


def budget_facts(run: CellRun, result: AttackResult | None = None) -> dict[str, Any]:
    """The query budget of a cell's target, what it used, and whether the attack ran it out (then it ended with
    what it had: a budget is a stopping rule, and the record says so). An attack that planned within its budget
    (:func:`~invertkit.core.interfaces.access.affordable`) and cut a phase short says so in
    ``extras["exhausted"]``: that counts too, though the wrapper refused nothing."""
    budget = run.target.budget if run.target is not None else None
    if budget is None:
        return {}
    exhausted = any(getattr(t, "exhausted", False) for t in (run.target, run.attacked) if t is not None)
    exhausted = exhausted or bool(result is not None and result.extras.get("exhausted", False))
    return {"budget": {"limit": budget, "used": run.attacked.queries, "exhausted": exhausted}}


def attack_facts(result: AttackResult) -> dict[str, Any]:
    """What the attack reported of itself (``result.extras``) that a record can hold: its scalar entries (numbers,
    strings, booleans; a non-finite float becomes ``None``), e.g. a success rate at a threshold or the iterations
    an early-stopping search used. Recorded under ``attack_facts``: the attacker's own account, beside (never
    among) the evaluator's ``metrics``."""
    out: dict[str, Any] = {}
    for name, value in result.extras.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        if value is None or isinstance(value, (bool, int, float, str)):
            out[str(name)] = value
    return out


def persist(run: CellRun, result: AttackResult, metrics: dict[str, Any]) -> CellOutcome:
    """The cell's record, written into the cache with its images (a re-run reads it from there)."""
    cell = run.cell
    run.stage = "defense"
    record = {
        **record_base(cell),
        "status": "ok",
        "reason": "",
        "metrics": metrics,
        "key": run.key,
        "gradient": gradient_label(run.defense, cell.adaptive),
        "attack_config": result.config,
        "defense_config": run.defense.config.model_dump(mode="json"),
        "defense_report": run.defense.report(),
        "samples": len(result),
        **({"attack_facts": facts} if (facts := attack_facts(result)) else {}),
        "identities": int(len(torch.unique(result.labels))) if len(result) else 0,
        **({"metrics_not_applicable": dict(run.not_applicable)} if run.not_applicable else {}),
        **budget_facts(run, result),
        "seed": cell.seed,
        "invertkit": invertkit.__version__,
    }
    run.stage = "the cache"
    write_cached_cell(run.key, record, result.images, result.labels)
    record["cached"] = False
    return CellOutcome(record, result.images, result.labels)


def run_cell(cell: Cell, catalog: Catalog, plugins: Plugins, *, use_cache: bool = True,
             natural_cache: dict | None = None, natural_scope: str | None = None, debug: bool = False) -> CellOutcome:
    """Compute one cell (or read it from the cache): :func:`prepare`, :func:`attack`, :func:`evaluate`,
    :func:`persist`. A failure inside the cell becomes a ``failed`` record (its error in ``reason``), a
    ``sys.exit()`` too; with ``debug`` the exception propagates instead, traceback and all.
    ``KeyboardInterrupt`` always propagates. The defended natural accuracy is shared through
    ``natural_cache`` and, with ``use_cache`` or a ``natural_scope``, through the cache."""
    base = record_base(cell)
    if cell.status == "skipped":
        return CellOutcome({**base, "status": "skipped", "reason": cell.reason, "metrics": {}})
    run = CellRun(cell, catalog, plugins)
    try:
        cached = prepare(run, use_cache=use_cache)
        if cached is not None:
            return cached
        result = attack(run)
        metrics = evaluate(run, result, natural_cache=natural_cache, natural_scope=natural_scope,
                           natural_shared=use_cache or natural_scope is not None)
        return persist(run, result, metrics)
    except Exception as exc:  # noqa: BLE001 - one failed cell never stops the bench
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return CellOutcome({**base, "status": "failed", "reason": f"{type(exc).__name__}: {msg}", "metrics": {}})
    except SystemExit as exc:  # a plugin's sys.exit() ends its cell, not the bench
        if debug:
            raise
        return CellOutcome({**base, "status": "failed", "reason": f"{run.stage} called sys.exit({exc.code!r})",
                            "metrics": {}})
