"""Running a plan: each cell through :func:`~invertkit.core.bench.cell.run_cell` (prepare, attack, evaluate,
persist) on an executor (:mod:`~invertkit.core.bench.executors`); each is computed once and written atomically
into the content-addressed cache, so a re-run (or a resumed, interrupted one) reads finished cells instead of
computing them again. A cell that fails is recorded ``failed`` and the others still run;
``KeyboardInterrupt`` still stops the bench.

The names tests, benchmarks and the report import from here (``run_cell``, ``CellOutcome``, ``load_target``,
``metric_context``, the executors, ...) are re-exported from the modules that define them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from invertkit.core.bench.cell import (
    METRIC_KEYS, CellOutcome, CellRun, attack, cell_key, cells_dir, evaluate, persist, prepare, read_cached_cell,
    run_cell, write_cached_cell,
)
from invertkit.core.bench.executors import LocalExecutor, RayExecutor
from invertkit.core.bench.plan import Plan
from invertkit.core.bench.targets import (
    defended_key, defended_natural_accuracy, gradient_label, load_target, metric_context, natural_dir,
)
from invertkit.core.catalog import Catalog
from invertkit.core.plugins import Plugins

__all__ = [
    "METRIC_KEYS", "CellOutcome", "CellRun", "LocalExecutor", "RayExecutor", "attack", "cell_key", "cells_dir",
    "defended_key", "defended_natural_accuracy", "evaluate", "gradient_label", "load_target", "metric_context",
    "natural_dir", "persist", "prepare", "read_cached_cell", "run_bench", "run_cell", "write_cached_cell",
]


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
