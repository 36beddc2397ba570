"""Before -> after figures for the honest-bench fixes, on the bundled digits preset (CPU, minutes).

Each figure runs bench cells through ``invertkit.core.bench.runner.run_cell`` (the code path of ``cli.py bench``)
or, where the old protocol is no longer reachable from the bench, reproduces it explicitly:

* ``output``: white-box attacks under output defenses. Before, they ran on the straight-through gradient of the
  filtered scores; that is exactly today's opt-in *adaptive* (BPDA) cell. After (deployed): skipped, and the
  black-box NES is what stands.
* ``prior``: KEDMI against training-time defenses. Before, its GAN was fitted once to the *undefended* target
  and reused in every defended cell; after, it is fitted to the defended target through its view.
* ``fid``: FID in the evaluation model's features when only identities 0 and 1 are attacked, against every
  private identity (before) and against the attacked identities (after).
* ``iterations``: GMI at 1,500 (the old default) and 2,400 (the official scripts') iterations.
* ``knn``: the KNN distance of the same reconstructions, unsquared (before) and squared (after, official).

    python benchmarks/protocol_fixes.py --out /tmp/fixes            # every part
    python benchmarks/protocol_fixes.py --parts output,fid --samples 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

PARTS = ("output", "prior", "fid", "iterations", "knn")


def _cell(**kw: Any):  # noqa: ANN202
    from invertkit.core.bench.plan import Cell

    return Cell(**kw)


def _row(rec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    m = rec.get("metrics", {})
    keys = ("acc@1", "judge_acc", "adversarial_rate", "knn_dist", "fid_eval", "natural_acc", "queries", "prior_queries")
    return {**extra, "status": rec["status"], "reason": rec.get("reason", ""), **{k: m.get(k) for k in keys if k in m}}


def part_output(catalog, plugins, samples: int) -> list[dict[str, Any]]:  # noqa: ANN001
    from invertkit.core.bench.plan import skip_reason, target_capabilities
    from invertkit.core.bench.runner import run_cell

    spec = catalog.matrix("default")
    rows = []
    caps = target_capabilities(catalog, plugins, "digits-cnn")
    for d in ("rounding", "top-k"):
        for a in ("gmi", "mi-face"):
            opts = spec.attack_options.get(a, {})
            reason = skip_reason(catalog, plugins, plugins.get("attack", a), plugins.get("defense", d)(), "digits-cnn", caps)
            rows.append({"attack": a, "defense": d, "mode": "deployed", "status": "skipped", "reason": reason})
            rec = run_cell(_cell(attack=a, defense=d, target="digits-cnn", attack_options=opts, adaptive=True,
                                 metrics=tuple(spec.metrics), samples_per_identity=samples), catalog, plugins).record
            rows.append(_row(rec, attack=a, defense=d, mode="adaptive (BPDA; the old default)"))
        rec = run_cell(_cell(attack="nes", defense=d, target="digits-cnn", attack_options=spec.attack_options.get("nes", {}),
                             metrics=tuple(spec.metrics), samples_per_identity=samples), catalog, plugins).record
        rows.append(_row(rec, attack="nes", defense=d, mode="deployed"))
    return rows


def part_prior(catalog, plugins, samples: int, iterations: int) -> list[dict[str, Any]]:  # noqa: ANN001
    """KEDMI on the digits CNN with its GAN fitted to the undefended target (before) or the defended one (after)."""
    import torch

    from invertkit.core.bench.runner import defended_key, load_target, metric_context
    from invertkit.core.interfaces.attack import AttackContext
    from invertkit.core.zoo.scenario import defense_context, prior_for

    rows = []
    for d in ("none", "nls", "bido"):
        for fitted_to in ("undefended", "defended"):
            if d == "none" and fitted_to == "defended":
                continue
            target, sc = load_target(catalog, plugins, "digits-cnn-kedmi")
            defense = plugins.get("defense", d)()
            attacked = defense.apply(target, defense_context(sc, plugins, seed=0))
            if fitted_to == "undefended":
                fresh, _ = load_target(catalog, plugins, "digits-cnn-kedmi")
                prior, _ = prior_for(sc, plugins, fresh, defended_key(plugins.get("defense", "none")(),
                                                                      _cell(attack="kedmi", defense="none", target="t")))
            else:
                prior, _ = prior_for(sc, plugins, attacked, defended_key(defense, _cell(attack="kedmi", defense=d, target="t")))
            attack = plugins.get("attack", "kedmi")({"iterations": iterations})
            attack.context = AttackContext(public_images=sc.split.public[0], plugins=plugins)
            labels = torch.arange(sc.num_classes).repeat_interleave(samples)
            t0 = time.perf_counter()
            result = attack(attacked, labels, prior=prior, seed=0)
            ctx = metric_context(sc, torch.arange(sc.num_classes))
            metrics: dict[str, Any] = {}
            for m in ("attack-acc", "knn-dist", "judge"):
                metric = plugins.get("metric", m)(ctx)
                metric.update(result.images, result.labels)
                metrics.update(metric.compute())
            rows.append({"attack": "kedmi", "defense": d, "prior fitted to": fitted_to,
                         **{k: metrics.get(k) for k in ("acc@1", "judge_acc", "knn_dist")},
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def part_fid(catalog, plugins, samples: int) -> list[dict[str, Any]]:  # noqa: ANN001
    import torch

    from invertkit.core.bench.runner import load_target, metric_context, run_cell

    spec = catalog.matrix("default")
    rows = []
    for a in ("random-prior", "gmi"):
        out = run_cell(_cell(attack=a, defense="none", target="digits-cnn", attack_options=spec.attack_options.get(a, {}),
                             identities=(0, 1), metrics=("attack-acc",), samples_per_identity=samples), catalog, plugins)
        _, sc = load_target(catalog, plugins, "digits-cnn")
        for label, attacked in (("every private identity (before)", None), ("the attacked identities (after)", torch.tensor([0, 1]))):
            ctx = metric_context(sc, attacked)
            metric = plugins.get("metric", "fid-eval")(ctx)
            metric.update(out.images, out.labels)
            rows.append({"attack": a, "identities attacked": "0, 1", "reference": label, **metric.compute()})
    return rows


def part_iterations(catalog, plugins, samples: int) -> list[dict[str, Any]]:  # noqa: ANN001
    from invertkit.core.bench.runner import run_cell

    rows = []
    for it in (1500, 2400):
        rec = run_cell(_cell(attack="gmi", defense="none", target="digits-cnn", attack_options={"iterations": it},
                             metrics=("attack-acc", "knn-dist", "judge"), samples_per_identity=samples), catalog, plugins).record
        rows.append(_row(rec, attack="gmi", iterations=it))
    return rows


def part_knn(catalog, plugins, samples: int) -> list[dict[str, Any]]:  # noqa: ANN001
    import torch

    from invertkit.core.bench.runner import load_target, metric_context, run_cell

    spec = catalog.matrix("default")
    rows = []
    _, sc = load_target(catalog, plugins, "digits-cnn")
    for a in ("random-prior", "gmi", "nes"):
        out = run_cell(_cell(attack=a, defense="none", target="digits-cnn", attack_options=spec.attack_options.get(a, {}),
                             metrics=("attack-acc",), samples_per_identity=samples), catalog, plugins)
        row = {"attack": a}
        for squared in (False, True):
            metric = plugins.get("metric", "knn-dist")(metric_context(sc, torch.arange(sc.num_classes)), {"squared": squared})
            metric.update(out.images, out.labels)
            row["knn squared" if squared else "knn (before)"] = metric.compute()["knn_dist"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="protocol-fixes")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--samples", type=int, default=10, help="reconstructions per identity")
    ap.add_argument("--kedmi-iterations", type=int, default=600)
    ap.add_argument("--registry", default=None)
    args = ap.parse_args(argv)
    from invertkit.core.catalog import load_catalog
    from invertkit.core.plugins import get_plugins

    catalog, plugins = load_catalog(args.registry), get_plugins()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        if part not in PARTS:
            raise SystemExit(f"unknown part '{part}' (known: {', '.join(PARTS)})")
        t0 = time.perf_counter()
        if part == "prior":
            results[part] = part_prior(catalog, plugins, args.samples, args.kedmi_iterations)
        else:
            results[part] = globals()[f"part_{part}"](catalog, plugins, args.samples)
        print(f"== {part} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        for row in results[part]:
            print("  " + json.dumps(row, default=str), file=sys.stderr, flush=True)
        (out / "protocol_fixes.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
