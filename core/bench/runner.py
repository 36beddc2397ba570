"""Running a plan: each cell is computed once and written atomically into the content-addressed cache;
a re-run (or a resumed, interrupted one) reads finished cells instead of computing them again. A cached
cell carries a checksum over its record and its images: one that does not match, or cannot be read, is
computed again (a note on stderr says so), never trusted. A cell that raises (or calls ``sys.exit``) is
recorded ``failed`` with its error, and the others still run; ``KeyboardInterrupt`` still stops the bench."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

import invertkit
from invertkit.core.bench.plan import Cell, Plan
from invertkit.core.cache import atomic_path, atomic_write_json, cache_dir, record_checksum
from invertkit.core.catalog import Catalog
from invertkit.core.errors import InvertkitError
from invertkit.core.interfaces.attack import AttackContext
from invertkit.core.interfaces.metric import MetricContext
from invertkit.core.interfaces.target import TargetModel
from invertkit.core.plugins import Plugins
from invertkit.core.cache import content_key
from invertkit.core.zoo.scenario import (
    Scenario, build_scenario, defense_context, derived_cache, natural_accuracy, prior_for,
)

METRIC_KEYS = ("acc@1", "judge_acc", "adversarial_rate", "acc@5", "knn_dist", "natural_acc", "queries",
               "prior_queries", "seconds")


def cells_dir() -> Path:
    d = cache_dir() / "cells"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_target(catalog: Catalog, plugins: Plugins, name: str) -> tuple[TargetModel, Scenario]:
    spec = catalog.target(name)
    scenario = build_scenario(spec.preset, catalog, plugins)
    backend = plugins.get("backend", spec.backend)()
    target = backend.load(spec, scenario, plugins)
    target.name = name
    if spec.access == "top-k":
        target.max_topk = spec.top_k
    return target, scenario


def metric_context(scenario: Scenario, attacked: torch.Tensor | None = None) -> MetricContext:
    """The evaluator's side of a cell (never handed to an attack): the evaluation model, the independent
    judges, the private training images, and the identities attacked (the set metrics' reference)."""
    from invertkit.core.errors import UsageError
    from invertkit.core.interfaces.target import split_classifier

    net = scenario.eval_net.eval()
    parts = split_classifier(net)
    if parts is None:
        raise UsageError(f"the evaluation model {type(net).__name__} has no features/head split; metrics need its features")
    return MetricContext(
        eval_logits=net,
        eval_features=parts[0],
        private_images=scenario.split.private_train[0],
        private_labels=scenario.split.private_train[1],
        num_classes=scenario.num_classes,
        judges=[j.eval() for j in scenario.judges],
        attacked=None if attacked is None else torch.unique(torch.as_tensor(attacked)),
    )


@dataclass
class CellOutcome:
    record: dict[str, Any]
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def cell_key(cell: Cell, scenario: Scenario) -> str:
    return cell.key({"invertkit": invertkit.__version__, "scenario": scenario.keys})


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
        print(f"note: cached cell {key} is damaged ({why}); computing it again", file=sys.stderr, flush=True)
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


def run_cell(cell: Cell, catalog: Catalog, plugins: Plugins, *, use_cache: bool = True,
             natural_cache: dict | None = None, debug: bool = False) -> CellOutcome:
    """Compute one cell (or read it from the cache). A failure inside the cell becomes a ``failed`` record
    (its error in ``reason``), a ``sys.exit()`` too; with ``debug`` the exception propagates instead,
    traceback and all. ``KeyboardInterrupt`` always propagates."""
    base = {"attack": cell.attack, "defense": cell.defense, "target": cell.target, "mode": cell.mode}
    if cell.status == "skipped":
        return CellOutcome({**base, "status": "skipped", "reason": cell.reason, "metrics": {}})
    stage = "the target"
    try:
        target, scenario = load_target(catalog, plugins, cell.target)
        key = cell_key(cell, scenario)
        if use_cache:
            cached = read_cached_cell(key)
            if cached is not None:
                return cached
        stage = "defense"
        defense = plugins.get("defense", cell.defense)(cell.defense_options)
        attacked = defense.apply(target, defense_context(scenario, plugins, seed=cell.seed, adaptive=cell.adaptive))
        d_key = defended_key(defense, cell)
        stage = "attack"
        attack = plugins.get("attack", cell.attack)(cell.attack_options)
        # what the attacker derives from the target is derived from it as defended, and paid for in queries
        stage = "prior"
        prior, prior_facts = prior_for(scenario, plugins, attacked, d_key) if attack.needs_prior else (None, {})
        prior_queries = attacked.queries
        attack.context = AttackContext(public_images=scenario.split.public[0], public_labels=scenario.split.public[1],
                                       plugins=plugins, cache=derived_cache(scenario, attacked, d_key))
        ids = torch.tensor(cell.identities if cell.identities is not None else range(scenario.num_classes))
        labels = ids.repeat_interleave(cell.samples_per_identity)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        stage = "attack"
        result = attack(attacked, labels, prior=prior, seed=cell.seed)
        stage = "a metric"
        mctx = metric_context(scenario, ids)
        mctx.extras["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
        metrics: dict[str, Any] = {}
        for m in cell.metrics:
            metric = plugins.get("metric", m)(mctx)
            metric.update(result.images, result.labels)
            metrics.update(metric.compute())
        stage = "the natural accuracy"
        nat_key = (cell.target, cell.defense, json.dumps(cell.defense_options, sort_keys=True))
        if natural_cache is not None and nat_key in natural_cache:
            metrics["natural_acc"] = natural_cache[nat_key]
        else:
            fresh, _ = load_target(catalog, plugins, cell.target)
            fresh.budget = None
            defended = defense.apply(fresh, defense_context(scenario, plugins, seed=cell.seed))
            metrics["natural_acc"] = natural_accuracy(defended.label, *scenario.split.private_test)
            if natural_cache is not None:
                natural_cache[nat_key] = metrics["natural_acc"]
        # every query behind the cell: the prior fitted to the target, derived students, the search itself
        metrics["queries"] = attacked.queries
        metrics["prior_queries"] = prior_queries
        metrics["seconds"] = round(result.seconds, 3)
        record = {
            **base,
            "status": "ok",
            "reason": "",
            "metrics": metrics,
            "key": key,
            "gradient": gradient_label(defense, cell.adaptive),
            "attack_config": result.config,
            "defense_config": defense.config.model_dump(mode="json"),
            "defense_report": defense.report(),
            "samples": len(result),
            "seed": cell.seed,
            "invertkit": invertkit.__version__,
        }
        stage = "the cache"
        write_cached_cell(key, record, result.images, result.labels)
        record["cached"] = False
        return CellOutcome(record, result.images, result.labels)
    except Exception as exc:  # noqa: BLE001 - one failed cell never stops the bench
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return CellOutcome({**base, "status": "failed", "reason": f"{type(exc).__name__}: {msg}", "metrics": {}})
    except SystemExit as exc:  # a plugin's sys.exit() ends its cell, not the bench
        if debug:
            raise
        return CellOutcome({**base, "status": "failed", "reason": f"{stage} called sys.exit({exc.code!r})", "metrics": {}})


class LocalExecutor:
    """Runs cells one after another in this process (batching happens inside each cell)."""

    name = "local"

    def map(self, cells: list[Cell], fn: Callable[[Cell], CellOutcome]):  # noqa: ANN201
        for cell in cells:
            yield fn(cell)


class RayExecutor:
    """Runs cells as Ray tasks (one GPU each when GPUs are present); ``RAY_ADDRESS`` selects a cluster.

    Each task loads the plugins and the scenario itself; trained models come from the shared cache, so
    point ``INVERTKIT_CACHE`` at a shared filesystem on a multi-node cluster.
    """

    name = "ray"

    def __init__(self, registry_path: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise InvertkitError("the ray executor needs Ray: pip install 'invertkit[ray]'") from None
        self.ray = ray
        self.registry_path = registry_path
        self.use_cache = True

    def map(self, cells: list[Cell], fn: Callable[[Cell], CellOutcome]):  # noqa: ANN201
        ray = self.ray
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        gpus = 1 if torch.cuda.is_available() else 0
        remote = ray.remote(num_gpus=gpus)(_ray_cell)
        refs = [remote.remote(c, self.registry_path, self.use_cache) for c in cells]
        for ref in refs:
            record, images, labels = ray.get(ref)
            yield CellOutcome(record, images, labels)


def _ray_cell(cell: Cell, registry_path: str | None, use_cache: bool):  # noqa: ANN202
    from invertkit.core.catalog import load_catalog
    from invertkit.core.plugins import get_plugins

    out = run_cell(cell, load_catalog(registry_path), get_plugins(), use_cache=use_cache)
    return out.record, out.images, out.labels


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


def run_bench(plan: Plan, catalog: Catalog, plugins: Plugins, *, use_cache: bool = True, executor=None,
              progress: Callable[[int, int, dict[str, Any]], None] | None = None,
              debug: bool = False) -> list[CellOutcome]:  # noqa: ANN001
    """Run every cell of ``plan``; returns outcomes in plan order (skipped cells included)."""
    executor = executor or LocalExecutor()
    if hasattr(executor, "use_cache"):
        executor.use_cache = use_cache
    plugins.notify("invertkit_bench_start", plan=plan)
    natural: dict = {}
    runnable = plan.runnable
    done: dict[int, CellOutcome] = {}
    fn = lambda c: run_cell(c, catalog, plugins, use_cache=use_cache, natural_cache=natural, debug=debug)  # noqa: E731
    for i, outcome in enumerate(executor.map(runnable, fn)):
        done[id(runnable[i])] = outcome
        plugins.notify("invertkit_bench_cell_done", record=outcome.record)
        if progress is not None:
            progress(i + 1, len(runnable), outcome.record)
    outcomes = []
    for cell in plan.cells:
        if cell.status == "skipped":
            outcomes.append(run_cell(cell, catalog, plugins))
        else:
            outcomes.append(done[id(cell)])
    return outcomes


def elapsed(t0: float) -> float:
    return time.perf_counter() - t0
