"""Executors: how a bench's cells are computed. :class:`LocalExecutor` runs them one after another in this
process; :class:`RayExecutor` runs each as one Ray task and computes what the local executor computes (the
same catalog, plugins, options and cache). Both yield outcomes in plan order."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from invertkit.core.bench.cell import CellOutcome, run_cell
from invertkit.core.bench.plan import Cell
from invertkit.core.cache import cache_dir
from invertkit.core.catalog import Catalog
from invertkit.core.errors import InvertkitError
from invertkit.core.plugins import Plugins


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
