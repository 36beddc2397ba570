"""Attack accuracy against queries: each black-box and label-only attack at query budgets from 10^2 to 10^6 per
identity, on one target, through the bench engine (cached cells, the attacker's view, budgets enforced by the
access wrapper: an attack that runs its budget out ends with what it has, and the record says so).

Prints a Markdown table (budget per identity, queries used per identity, exhausted, acc@1, judge_acc) and draws
``acc@1`` against the queries used per identity (log scale), one line per attack, with the random-prior
baseline, to ``--png``; ``--html DIR`` writes the bench report of the sweep, whose "accuracy against queries"
plane draws the same curves (every bench report has that plane, one point per cell that spent queries).

    python benchmarks/query_curves.py --target digits-cnn-bb --png benchmarks/query_curves_digits.png
    INVERTKIT_DATA=... python benchmarks/query_curves.py --plan mnist --png benchmarks/query_curves_mnist.png

A budget at or above what the attack spends without one leaves it the same work, so that row is the unbudgeted
run (and the larger budgets are left out of the table: the curve has reached its end). Exactly so for the attacks
whose plan is a fixed split; BREP-MI passes an identity's unspent allowance on, so under such a budget its steps
(and random draws) may come in another order, with the same work done.
    python benchmarks/query_curves.py --registry tests/data/registry-tiny.toml --target tiny-cnn-onnx \\
        --attacks nes,yang-inversion --budgets 1e2,1e3,1e4 -o nes.iterations=30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_ATTACKS = "nes,mirror-b,c2fmi,rlb-mi,yang-inversion,zhu-label-only,brep-mi,lokt"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default=None)
    ap.add_argument("--target", default=None, help="a black-box (or label-only) target of the registry")
    ap.add_argument("--attacks", default=DEFAULT_ATTACKS, help="comma-separated; those not installed are left out")
    ap.add_argument("--budgets", default="1e2,1e3,1e4,1e5,1e6", help="queries per identity")
    ap.add_argument("--identities", default="0..4")
    ap.add_argument("--samples", type=int, default=2, help="reconstructions per identity")
    ap.add_argument("-o", dest="options", action="append", default=[], metavar="ATTACK.KEY=VALUE")
    ap.add_argument("--png", default=None)
    ap.add_argument("--jsonl", default=None, help="write every record here")
    ap.add_argument("--html", default=None, metavar="DIR", help="write the bench report (report.html, with the "
                                                                "accuracy-against-queries plane) into DIR")
    ap.add_argument("--plan", default=None, choices=("mnist", "digits"), help="take targets, defenses, settings and samples from "
                                                   "benchmarks/blackbox_table.py's plan (mnist, digits)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from blackbox_table import PLANS, run_at_budget

    from invertkit.core.bench.plan import skip_reason, target_capabilities
    from invertkit.core.catalog import class_list, load_catalog
    from invertkit.core.interfaces.config import parse_overrides
    from invertkit.core.plugins import get_plugins

    catalog, plugins = load_catalog(args.registry), get_plugins()
    ids = tuple(class_list(args.identities))
    budgets = [int(float(b)) for b in args.budgets.split(",")]
    options: dict[str, dict] = {}
    for key, value in parse_overrides(tuple(args.options)).items():
        attack, _, field = key.partition(".")
        options.setdefault(attack, {})[field] = value
    known = set(plugins.registry["attack"])
    if args.plan:  # (attack, target, defense, settings, samples): the plan's first defense is the attack's access
        plan = [(a, t, d[0], {**o, **options.get(a, {})}, n) for a, t, d, o, n in PLANS[args.plan]]
        if args.attacks != DEFAULT_ATTACKS:
            plan = [row for row in plan if row[0] in {"random-prior", *args.attacks.split(",")}]
    else:
        if not args.target:
            ap.error("give --target or --plan")
        plan = [(a, args.target, "none", options.get(a, {}), args.samples)
                for a in ["random-prior", *args.attacks.split(",")]]
    left = sorted({a for a, *_ in plan} - known)
    if left:
        print(f"note: not installed, left out: {', '.join(left)}", file=sys.stderr)
    attacks = [a for a, *_ in plan if a in known and a != "random-prior"]
    rows, records, outcomes = [], [], []
    for attack, target, defense, opts, samples in plan:
        if attack not in known:
            continue
        spec = catalog.target(target)
        # the metrics of blackbox_table.py, so that both share their cells (the metrics are part of a cell's key)
        metrics = ("attack-acc", "knn-dist", "judge") if (not spec.standalone and catalog.preset(spec.preset).judges) \
            else ("attack-acc", "knn-dist")
        caps = target_capabilities(catalog, plugins, target)
        reason = skip_reason(catalog, plugins, plugins.get("attack", attack), plugins.get("defense", defense)(),
                             target, caps)
        if reason:
            print(f"note: {attack} skipped: {reason}", file=sys.stderr)
            continue
        # the unbudgeted run first: a budget at or above what it spends changes nothing, so it is that run
        full = run_at_budget(catalog, plugins, target, attack, defense, None, opts, metrics, samples, ids)
        spent = full.record.get("metrics", {}).get("queries", 0)
        for per_id in (budgets if attack != "random-prior" else [budgets[0]]):
            total = per_id * len(ids)
            reached = attack != "random-prior" and total < spent
            outcome = run_at_budget(catalog, plugins, target, attack, defense, total, opts, metrics, samples,
                                    ids) if reached else full
            rec = outcome.record
            outcomes.append(outcome)
            records.append({**rec, "budget_per_identity": per_id, "budget_reached": reached})
            m = rec.get("metrics", {})
            used = m.get("queries", float("nan")) / len(ids)
            ex = bool((rec.get("budget") or {}).get("exhausted", False))
            rows.append((attack, per_id, used, ex, m.get("acc@1"), m.get("judge_acc"), rec["status"],
                         rec.get("reason", "")))
            print(f"{attack} @ {per_id:g}/identity: {rec['status']} acc@1={m.get('acc@1')} queries/id={used:.0f}",
                  file=sys.stderr, flush=True)
            if not reached and attack != "random-prior":
                break  # larger budgets are the same unbudgeted run
    print("| attack | budget / identity | queries used / identity | exhausted | acc@1 | judge_acc |")
    print("|---|---:|---:|---|---:|---:|")
    for a, b, used, ex, acc, judge, status, reason in rows:
        if status != "ok":
            print(f"| {a} | {b:g} | – | – | {status}: {reason[:60]} | |")
            continue
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {a} | {b:g} | {used:.0f} | {'yes' if ex else 'no'} | {fmt(acc)} | {fmt(judge)} |")
    if args.jsonl:
        Path(args.jsonl).write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    if args.html:
        from invertkit.core.bench.report import write_report

        write_report(Path(args.html), outcomes, title=f"accuracy against queries: {args.target or args.plan}",
                     command=" ".join(["python benchmarks/query_curves.py", *(argv or sys.argv[1:])]))
        print(f"wrote {Path(args.html) / 'report.html'}", file=sys.stderr)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        base = [r for r in rows if r[0] == "random-prior" and r[6] == "ok"]
        if base:
            ax.axhline(base[0][4], color="grey", ls="--", label="random-prior")
        for a in attacks:
            pts = sorted((r[2], r[4]) for r in rows if r[0] == a and r[6] == "ok" and r[4] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=a)
        ax.set_xscale("log")
        ax.set_xlabel("queries used per identity")
        ax.set_ylabel("acc@1 (evaluation model)")
        ax.set_title(f"accuracy against queries: {args.target or args.plan}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
