"""Shared fixtures: an isolated cache for the whole session and the tiny test registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
TINY_REGISTRY = TESTS / "data" / "registry-tiny.toml"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test session trains into (and reads from) its own cache, never the user's; and every command it
    runs, in this process or a subprocess, uses one torch thread (INVERTKIT_THREADS), as the test modules do."""
    saved = {k: os.environ.get(k) for k in ("INVERTKIT_CACHE", "INVERTKIT_THREADS")}
    os.environ["INVERTKIT_CACHE"] = str(tmp_path_factory.mktemp("invertkit-cache"))
    os.environ["INVERTKIT_THREADS"] = "1"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tiny_registry_with(folder: Path, extra_toml: str, weights: dict | None = None) -> Path:
    """A copy of the tiny registry plus ``extra_toml`` (dedented) in ``folder``; ``weights`` (a state dict) is
    saved first as ``folder/weights.safetensors``, which ``{weights}`` in ``extra_toml`` names."""
    import textwrap

    if weights is not None:
        from safetensors.torch import save_file

        save_file(weights, str(folder / "weights.safetensors"))
    extra = textwrap.dedent(extra_toml).replace("{weights}", (folder / "weights.safetensors").as_posix())
    registry = folder / "registry.toml"
    registry.write_text(TINY_REGISTRY.read_text() + extra)
    return registry


@pytest.fixture(scope="session")
def tiny_registry() -> Path:
    return TINY_REGISTRY


@pytest.fixture(scope="session")
def tiny_catalog(tiny_registry: Path):
    from invertkit.core.catalog import load_catalog

    return load_catalog(tiny_registry)


@pytest.fixture(scope="session")
def plugins():
    from invertkit.core.plugins import get_plugins

    return get_plugins()


@pytest.fixture(scope="session")
def tiny_scenario(tiny_catalog, plugins):
    """The tiny digits scenario, trained once per session (about 15 s on two cores)."""
    from invertkit.core.zoo.scenario import build_scenario

    return build_scenario("digits-tiny", tiny_catalog, plugins)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test module runs torch on one thread: the CI machine has two cores, and torch's intra-op threads
    oversubscribe badly under load; the session's tiny scenario is then always trained the same way."""
    from invertkit.core.testing.contracts import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def scenario(request: pytest.FixtureRequest):  # noqa: ANN201
    """The session's ``tiny_scenario`` (the short name the attack, backend and metric tests use); requested
    from here, under one torch thread, so that if the requesting module is the first to need it, it trains on
    one thread (a session fixture is otherwise set up before the module's one-thread fixture): on a shared
    2-core machine a multi-threaded training contends with everything else and runs many times slower."""
    from invertkit.core.testing.contracts import torch_threads

    with torch_threads(1):
        return request.getfixturevalue("tiny_scenario")


def attack_acc(scenario, result) -> float:  # noqa: ANN001
    """acc@1 of an attack's reconstructions under the scenario's evaluation model (the bench's metric)."""
    from invertkit.core.bench.runner import metric_context
    from invertkit.plugins.metrics.attack_acc import AttackAccuracy

    metric = AttackAccuracy(metric_context(scenario))
    metric.update(result.images, result.labels)
    return metric.compute()["acc@1"]
