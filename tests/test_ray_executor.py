"""The Ray executor computes what the local one does: the same bench, run both ways on the tiny digits registry,
writes the same results.jsonl but for wall-time fields. Ray is a test dependency (the dev extra): this runs
in CI, on a local Ray instance the executor starts (2 CPUs, no dashboard) and shuts down."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from invertkit.cli import cli

if os.environ.get("CI"):  # CI installs the dev extra, ray with it: never skipped there
    import ray
else:
    ray = pytest.importorskip("ray", reason="ray is in the dev extra: pip install -e '.[dev]'")

#: what may differ between two runs of the same cells: wall time, and whether a cell came from the cache
TIMING_FIELDS = ("cached", "metrics.seconds")

BENCH = ["--attacks", "random-prior,gmi", "--defenses", "none,top-k", "-o", "gmi.iterations=20", "-o", "top-k.k=2"]


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(record))
    for field in TIMING_FIELDS:
        *parents, leaf = field.split(".")
        d = out
        for p in parents:
            d = d.get(p, {})
        d.pop(leaf, None)
    return out


def bench(tiny_registry: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["bench", "--registry", str(tiny_registry), *BENCH, "--fresh",
                                      "--out", str(out), *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_ray_bench_matches_local(tiny_registry, tiny_scenario, tmp_path, monkeypatch) -> None:
    """``bench --executor ray`` against ``bench`` (local): the same records, in the same order, timing aside.
    The workers read the models the session trained through the shared cache (INVERTKIT_CACHE), load the
    plugins from the entry points, and honour the cells' options (gmi's iterations, top-k's k)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = bench(tiny_registry, tmp_path / "local")
    remote = bench(tiny_registry, tmp_path / "ray", "--executor", "ray")
    assert not ray.is_initialized()  # the executor started Ray, so it shut it down
    assert [r["status"] for r in local] == ["ok", "ok", "ok", "skipped"]
    ok = [r for r in remote if r["status"] == "ok"]
    assert {r["attack_config"].get("iterations") for r in ok if r["attack"] == "gmi"} == {20}
    assert [r["defense_config"] for r in ok if r["defense"] == "top-k"] == [{"k": 2}]
    assert [without_timing(r) for r in remote] == [without_timing(r) for r in local]


def test_programmatic_plugins_are_refused(tiny_catalog) -> None:
    """A plugin registered as an object exists only in this process: the Ray executor says so before starting
    Ray, instead of running the cells with another plugin set."""
    from invertkit.core.bench.runner import RayExecutor
    from invertkit.core.errors import InvertkitError
    from invertkit.core.plugins import load_plugins, worker_env

    lists = load_plugins(allow="none,random-prior", block="nes")
    assert worker_env(lists) == {"INVERTKIT_PLUGINS": "none,random-prior", "INVERTKIT_DISABLE_PLUGINS": "nes"}

    class Mine:
        pass

    executor = RayExecutor()
    executor.bind(catalog=tiny_catalog, plugins=load_plugins(allow="none", extra=[("mine", Mine())]),
                  use_cache=True, debug=False, natural_scope=None)
    with pytest.raises(InvertkitError, match="registered programmatically .*mine"):
        list(executor.map([], lambda cell: None))
    assert not ray.is_initialized()


def test_address_needs_the_ray_executor(tiny_registry, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["bench", "--registry", str(tiny_registry), "--address", "auto",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--address applies to --executor ray" in result.output
