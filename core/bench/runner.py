"""Running a plan: each cell is computed once and written atomically into the content-addressed cache;
a re-run (or a resumed, interrupted one) reads finished cells instead of computing them again. A cached
cell carries a checksum over its record and its images: one that does not match, or cannot be read, is
computed again (a note on stderr says so), never trusted. A cell that raises (or calls ``sys.exit``) is
recorded ``failed`` with its error, and the others still run; ``KeyboardInterrupt`` still stops the bench."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

import invertkit
from invertkit.core.bench.plan import Cell, Plan
from invertkit.core.cache import atomic_path, atomic_write_json, cache_dir, entry_lock, record_checksum
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


def run_cell(cell: Cell, catalog: Catalog, plugins: Plugins, *, use_cache: bool = True,
             natural_cache: dict | None = None, natural_scope: str | None = None, debug: bool = False) -> CellOutcome:
    """Compute one cell (or read it from the cache). A failure inside the cell becomes a ``failed`` record
    (its error in ``reason``), a ``sys.exit()`` too; with ``debug`` the exception propagates instead,
    traceback and all. ``KeyboardInterrupt`` always propagates. The defended natural accuracy is shared
    (:func:`defended_natural_accuracy`) through ``natural_cache`` and, with ``use_cache`` or a
    ``natural_scope``, through the cache."""
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
        metrics["natural_acc"] = defended_natural_accuracy(
            cell, catalog, plugins, scenario, defense, memo=natural_cache,
            shared=use_cache or natural_scope is not None, scope=natural_scope)
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
    """Runs each cell as one Ray task (one CPU; one GPU too where this process sees CUDA), computing what the
    local executor computes: the same catalog (sent to the tasks), the same plugins (each task loads them
    from the entry points under the caller's allow/block lists; a set with plugins registered
    programmatically is refused, since a task could not load it), the cell's options (carried by the cell),
    and the same cache (``INVERTKIT_CACHE`` as this process resolves it), through which models trained once
    and each defended natural accuracy are shared. Outcomes come back in plan order.

    ``address`` (or ``RAY_ADDRESS``) connects to a running cluster, whose nodes then need invertkit and the
    plugins installed and the cache on a shared filesystem; without one a local Ray instance with
    ``num_cpus`` CPUs is started and shut down at the end. When Ray is already initialized it is used as is.
    """

    name = "ray"

    def __init__(self, registry_path: str | None = None, *, address: str | None = None, num_cpus: int = 2) -> None:
        try:
            import ray
        except ImportError:
            raise InvertkitError("the ray executor needs Ray: pip install 'invertkit[ray]'") from None
        self.ray = ray
        self.registry_path = registry_path
        self.address = address
        self.num_cpus = num_cpus
        self.use_cache = True
        self.debug = False
        self.natural_scope: str | None = None
        self.catalog: Catalog | None = None
        self.plugins: Plugins | None = None

    def bind(self, *, catalog: Catalog, plugins: Plugins, use_cache: bool, debug: bool,
             natural_scope: str | None) -> None:
        """What :func:`run_bench` runs with (the local executor gets it inside ``fn``)."""
        self.catalog, self.plugins, self.use_cache, self.debug = catalog, plugins, use_cache, debug
        self.natural_scope = natural_scope

    def worker_env(self) -> dict[str, str]:
        """The environment of every task: the plugin lists, the cache, one thread per task."""
        from invertkit.core.plugins import get_plugins, worker_env

        env = worker_env(self.plugins if self.plugins is not None else get_plugins())
        return {**env, "INVERTKIT_CACHE": str(cache_dir().resolve()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(self) -> bool:
        """Initialize Ray unless it is; returns whether this call did (and so must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        return True

    def map(self, cells: list[Cell], fn: Callable[[Cell], CellOutcome]):  # noqa: ANN201
        ray = self.ray
        env = self.worker_env()  # refuses a plugin set the tasks could not load, before starting anything
        catalog = self.catalog
        if catalog is None:
            from invertkit.core.catalog import load_catalog

            catalog = load_catalog(self.registry_path)
        started = self.start()
        refs: list[Any] = []
        try:
            remote = ray.remote(_ray_cell).options(num_cpus=1, num_gpus=1 if torch.cuda.is_available() else 0,
                                                   runtime_env={"env_vars": env})
            cat_ref = ray.put(catalog)
            refs = [remote.remote(c, cat_ref, env, self.use_cache, self.natural_scope, self.debug) for c in cells]
            for i, ref in enumerate(refs):
                record, images, labels = ray.get(ref)
                refs[i] = None
                yield CellOutcome(record, images, labels)
        finally:
            if started:
                ray.shutdown()
            else:  # a cluster someone else started: stop what this bench left running there
                for ref in refs:
                    if ref is not None:
                        try:
                            ray.cancel(ref, force=True)
                        except Exception:  # noqa: BLE001 - finished meanwhile, or gone
                            pass


_WORKER_PLUGINS: dict[tuple[str, str], Plugins] = {}


def _ray_cell(cell: Cell, catalog: Catalog, env: dict[str, str], use_cache: bool, natural_scope: str | None,
              debug: bool):  # noqa: ANN202
    """One cell in a Ray worker: the caller's environment (also set at the worker's start), one torch thread,
    the plugin set the caller's lists select (loaded once per worker and lists), then :func:`run_cell`."""
    from invertkit.core.plugins import ENV_ALLOW, ENV_BLOCK, load_plugins

    os.environ.update(env)
    torch.set_num_threads(1)
    lists = (env.get(ENV_ALLOW, ""), env.get(ENV_BLOCK, ""))
    plugins = _WORKER_PLUGINS.get(lists)
    if plugins is None:
        plugins = _WORKER_PLUGINS[lists] = load_plugins(allow=lists[0], block=lists[1])
    out = run_cell(cell, catalog, plugins, use_cache=use_cache, natural_scope=natural_scope, debug=debug)
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
    # a fresh bench shares each natural accuracy among its own cells (and workers), never an earlier run's
    scope = None if use_cache or isinstance(executor, LocalExecutor) else uuid.uuid4().hex
    if hasattr(executor, "bind"):
        executor.bind(catalog=catalog, plugins=plugins, use_cache=use_cache, debug=debug, natural_scope=scope)
    plugins.notify("invertkit_bench_start", plan=plan)
    natural: dict = {}
    runnable = plan.runnable
    done: dict[int, CellOutcome] = {}
    fn = lambda c: run_cell(c, catalog, plugins, use_cache=use_cache, natural_cache=natural,  # noqa: E731
                            natural_scope=scope, debug=debug)
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
