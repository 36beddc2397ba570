"""Privacy-utility sweep: every defense's strength knob at three or more values, attacked as deployed.

Training-time defenses are attacked by ``--attack`` (GMI: white-box). An output defense filters what an API
returns, and an attacker who holds gradients holds the weights and is not behind it, so output defenses are
attacked by ``--api-attack`` (NES: black-box scores), and the undefended target is measured under both.

For each (defense, knob value) one bench cell is run through ``invertkit.core.bench.runner.run_cell`` — the
same code path, content-addressed cache and records as ``cli.py bench`` — with the attack and defense options
of the ``[bench.defenses]`` matrix in registry.toml, the knob overridden. It writes ``privacy_utility.json``,
``privacy_utility.csv`` and ``privacy_utility.png`` (one curve per defense: natural accuracy of the defended
target on the private test split on x, GMI's attack accuracy (acc@1 under the evaluation model) on y; the
undefended target is the star). Finished cells are cached, so a re-run only computes what is new.

    python benchmarks/privacy_utility.py --out /tmp/privacy-utility            # everything (long on a CPU)
    python benchmarks/privacy_utility.py --defenses mid,top-k --iterations 100  # a part, quicker
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

#: each defense's strength knob and its values, weakest first: three around the default, and for MID and pruning
#: stronger ones, past the paper values, where they start to lower GMI (at a utility cost)
SWEEP: dict[str, tuple[str, list[Any]]] = {
    "rounding": ("decimals", [3, 1, 0]),
    "top-k": ("k", [3, 2, 1]),
    "gaussian-noise": ("sigma", [0.5, 2.0, 5.0]),
    "confidence-cutoff": ("tau", [0.01, 0.1, 0.5]),
    "reverse-sigmoid": ("beta", [0.3, 1.0, 3.0]),
    "purifier": ("latent", [4, 2, 1]),
    "query-monitor": ("threshold", [1e-5, 1e-3, 0.05]),
    "dp-sgd": ("target_epsilon", [50.0, 8.0, 1.0]),
    "mid": ("beta", [0.003, 0.01, 0.02, 0.1, 0.5]),
    "bido": ("lambda_x", [0.01, 0.05, 0.2]),
    "nls": ("alpha", [-0.01, -0.05, -0.2]),
    "tl-dmi": ("frozen_fraction", [0.25, 0.5, 0.75]),
    "distillation": ("temperature", [20.0, 4.0, 1.0]),
    "pruning": ("sparsity", [0.5, 0.8, 0.95, 0.99]),
    "netguard": ("fake_ratio", [0.2, 0.5, 1.0]),
}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from invertkit.core.bench.plan import Cell
    from invertkit.core.bench.runner import run_cell
    from invertkit.core.catalog import load_catalog
    from invertkit.core.plugins import get_plugins

    catalog = load_catalog(args.registry)
    plugins = get_plugins()
    spec = catalog.matrix(args.matrix)
    attack_options = {**spec.attack_options.get(args.attack, {})}
    if args.iterations is not None:
        attack_options["iterations"] = args.iterations
    wanted = [d.strip() for d in args.defenses.split(",")] if args.defenses else list(SWEEP)
    points: list[tuple[str, str | None, Any]] = [("none", None, None)]
    api_attack = args.api_attack
    api_options = {**spec.attack_options.get(api_attack, {})}
    for d in wanted:
        if d not in SWEEP:
            raise SystemExit(f"no sweep for defense '{d}' (known: {', '.join(SWEEP)})")
        knob, values = SWEEP[d]
        points.extend((d, knob, v) for v in values)
    rows: list[dict[str, Any]] = []
    natural: dict = {}
    runs: list[tuple[str, str | None, Any, str]] = []
    for d, knob, value in points:
        api = d == "none" or bool(getattr(plugins.get("defense", d), "filters_api", False))
        trained = d == "none" or not api
        runs += [(d, knob, value, a) for a, wanted_here in ((args.attack, trained), (api_attack, api)) if wanted_here]
    for i, (d, knob, value, attack) in enumerate(runs, 1):
        options = {**spec.defense_options.get(d, {})}
        if knob is not None:
            options[knob] = value
        cell = Cell(attack=attack, defense=d, target=args.target,
                    attack_options=attack_options if attack == args.attack else api_options,
                    defense_options=options, metrics=tuple(spec.metrics),
                    samples_per_identity=args.samples or spec.samples_per_identity, identities=spec.identities, seed=spec.seed)
        t0 = time.perf_counter()
        out = run_cell(cell, catalog, plugins, natural_cache=natural).record
        m = out.get("metrics", {})
        row = {"defense": d, "attack": attack, "knob": knob, "value": value, "status": out["status"],
               "reason": out.get("reason", ""), "acc@1": m.get("acc@1"), "judge_acc": m.get("judge_acc"),
               "natural_acc": m.get("natural_acc"), "knn_dist": m.get("knn_dist"),
               "cached": out.get("cached", False), "seconds": round(time.perf_counter() - t0, 1),
               "defense_report": out.get("defense_report", {})}
        rows.append(row)
        print(f"[{i}/{len(runs)}] {attack} x {d} {knob}={value}: acc@1={row['acc@1']} judge={row['judge_acc']} "
              f"natural={row['natural_acc']} "
              f"({row['status']}{', cached' if row['cached'] else ''}, {row['seconds']} s)", file=sys.stderr, flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, attack: str, target: str = "digits-cnn") -> None:  # noqa: C901
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6.5))
    ok = [r for r in rows if r["status"] == "ok" and r["acc@1"] is not None and r["natural_acc"] is not None]
    for j, base in enumerate(r for r in ok if r["defense"] == "none"):
        ax.scatter([base["natural_acc"]], [base["acc@1"]], marker="*" if j == 0 else "P", s=260, color="black",
                   zorder=5, label=f"none (undefended), {base.get('attack', attack)}")
    cmap = plt.get_cmap("tab20")
    curves = [c for c in dict.fromkeys((r["defense"], r.get("attack", attack)) for r in ok) if c[0] != "none"]
    for i, (d, a) in enumerate(curves):
        pts = [r for r in ok if r["defense"] == d and r.get("attack", attack) == a]
        xs, ys = [r["natural_acc"] for r in pts], [r["acc@1"] for r in pts]
        ax.plot(xs, ys, marker="o" if a == attack else "s", linestyle="-" if a == attack else "--",
                color=cmap(i % 20), label=f"{d} ({pts[0]['knob']}) vs {a}")
        for r in pts:
            ax.annotate(f"{r['value']:g}", (r["natural_acc"], r["acc@1"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=cmap(i % 20))
    ax.set_xlabel("natural accuracy of the defended target (private test split)  -> better utility")
    ax.set_ylabel("attack accuracy acc@1 (evaluation model)  -> worse privacy")
    ax.set_title(f"Privacy-utility on {target}, defenses as deployed: training-time vs {attack} (solid), "
                 "API filters vs a black-box attack (dashed)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="privacy-utility", help="output folder")
    ap.add_argument("--defenses", default=None, help="comma-separated defenses (default: every one with a sweep)")
    ap.add_argument("--attack", default="gmi", help="the attack on training-time defenses (white-box)")
    ap.add_argument("--api-attack", default="nes", help="the attack on output (API) defenses, which release no gradient")
    ap.add_argument("--target", default="digits-cnn")
    ap.add_argument("--matrix", default="defenses", help="bench matrix whose options the cells use")
    ap.add_argument("--iterations", type=int, default=None, help="override the attack's iterations")
    ap.add_argument("--samples", type=int, default=None, help="reconstructions per identity (default: the matrix's)")
    ap.add_argument("--registry", default=None, help="a registry.toml other than the bundled one")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    (out / "privacy_utility.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    with open(out / "privacy_utility.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "defense_report"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "privacy_utility.png", args.attack, args.target)
    print(f"wrote {out / 'privacy_utility.png'}, .json, .csv", file=sys.stderr)


if __name__ == "__main__":
    main()
