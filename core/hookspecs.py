"""The whole plugin contract of invertkit, as pluggy hook specifications.

A plugin is a module (or object) exposed under the ``invertkit`` entry-point group, e.g. in its
``pyproject.toml``::

    [project.entry-points.invertkit]
    my-attack = "my_package.my_attack"

and implementing any of these hooks with ``@invertkit.core.hookspecs.hookimpl``. The ``register_*`` hooks
receive a :class:`~invertkit.core.registry.Registrar` bound to one kind: call it with a class (its
``name`` attribute is the registry name). Bundled plugins are registered through the very same entry
points. Hooks must not do heavy work (no training, no downloads): they only register.

A component's metadata is its class's: ``name``, ``summary`` (one line), ``paper`` (a link; "" for a
baseline), ``requires`` (attacks) and the pydantic ``Config`` with the defaults; ``registry.toml`` describes
no component. ``invertkit list`` reads ``name``/``summary``/``paper`` from the module's source without
importing it when the hook is a plain sequence of ``register(X)`` calls and those attributes are literals
(see :func:`invertkit.core.plugins.static_index`); anything else is imported once and cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from invertkit.core.registry import Registrar

PROJECT = "invertkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def invertkit_register_attacks(register: "Registrar") -> None:
    """Register :class:`~invertkit.core.interfaces.Attack` subclasses."""


@hookspec
def invertkit_register_defenses(register: "Registrar") -> None:
    """Register :class:`~invertkit.core.interfaces.Defense` subclasses."""


@hookspec
def invertkit_register_priors(register: "Registrar") -> None:
    """Register prior builders: classes with ``name`` and ``build(spec, ctx) -> Prior``."""


@hookspec
def invertkit_register_metrics(register: "Registrar") -> None:
    """Register :class:`~invertkit.core.interfaces.Metric` subclasses."""


@hookspec
def invertkit_register_target_backends(register: "Registrar") -> None:
    """Register target backends: classes with ``name`` and ``load(spec, ctx) -> TargetModel``."""


@hookspec
def invertkit_register_architectures(register: "Registrar") -> None:
    """Register architectures: callables ``(num_classes, **kwargs) -> nn.Module``, with a ``name``."""


@hookspec
def invertkit_register_datasets(register: "Registrar") -> None:
    """Register dataset adapters: classes with ``name`` and ``load(root, ...)``."""


@hookspec
def invertkit_register_commands(cli: "click.Group") -> None:
    """Add click commands to the ``invertkit`` command line."""


# ------------------------------------------------------------------ bench observers
@hookspec
def invertkit_bench_start(plan: Any) -> None:
    """Called once with the :class:`~invertkit.core.bench.plan.Plan` before any cell runs."""


@hookspec
def invertkit_bench_cell_done(record: dict[str, Any]) -> None:
    """Called after each cell with its result record (as written to ``results.jsonl``)."""


@hookspec
def invertkit_bench_end(records: list[dict[str, Any]], out_dir: str) -> None:
    """Called once after the report is written."""


REGISTER_HOOKS: dict[str, str] = {
    "attack": "invertkit_register_attacks",
    "defense": "invertkit_register_defenses",
    "prior": "invertkit_register_priors",
    "metric": "invertkit_register_metrics",
    "backend": "invertkit_register_target_backends",
    "architecture": "invertkit_register_architectures",
    "dataset": "invertkit_register_datasets",
}
