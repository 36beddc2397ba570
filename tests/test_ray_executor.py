"""The Ray executor gives the same cells as the local one (skipped where Ray is not installed)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


def test_ray_executor_matches_local(tiny_catalog, tiny_registry, plugins, tiny_scenario) -> None:
    from invertkit.core.bench.plan import make_plan
    from invertkit.core.bench.runner import RayExecutor, run_bench

    plan = make_plan(tiny_catalog, plugins, attacks="random-prior,gmi", defenses="none,label-only",
                     options={"attack:gmi": {"iterations": 20}})
    local = run_bench(plan, tiny_catalog, plugins, use_cache=False)
    try:
        remote = run_bench(plan, tiny_catalog, plugins, use_cache=False, executor=RayExecutor(str(tiny_registry)))
    finally:
        ray.shutdown()
    assert [o.record["status"] for o in remote] == [o.record["status"] for o in local]
    for a, b in zip(local, remote):
        if a.record["status"] == "ok":
            assert a.record["metrics"]["acc@1"] == b.record["metrics"]["acc@1"]
            assert a.record["metrics"]["queries"] == b.record["metrics"]["queries"]
            assert b.images is not None and (a.images - b.images).abs().max() < 1e-5
