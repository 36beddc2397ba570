"""The second judge's figures for finished bench cells, computed from their cached reconstructions.

A bench matrix whose ``metrics`` list lacks ``judge`` (or one run before the judge existed) still has every
reconstruction in the content-addressed cache. This reads ``results.jsonl``, loads each ok cell's images by its
``key`` (the checksum is verified as for any cached cell), and scores them with the ``judge`` metric against the
cell's scenario (its judges, its private split). Prints a Markdown table and writes ``judged.jsonl``.

    INVERTKIT_CACHE=... python benchmarks/judge_cells.py /tmp/mnist-defenses/results.jsonl --out /tmp/mnist-judged
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = ("judge_acc", "judge_agree", "nn_feat_acc", "nn_pixel_acc", "adversarial_rate")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a bench's results.jsonl")
    ap.add_argument("--out", default=None, help="folder for judged.jsonl (default: beside results.jsonl)")
    ap.add_argument("--registry", default=None)
    args = ap.parse_args(argv)
    if not Path(args.results).is_file():
        raise SystemExit(f"error: no results file at {args.results} (a bench's --out folder holds results.jsonl)")

    import torch

    from invertkit.core.bench.runner import load_target, metric_context, read_cached_cell
    from invertkit.core.catalog import load_catalog
    from invertkit.core.plugins import get_plugins

    catalog, plugins = load_catalog(args.registry), get_plugins()
    rows = []
    for n, line in enumerate(Path(args.results).read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise SystemExit(f"error: {args.results} line {n} is not a JSON record") from None
        if rec.get("status") != "ok" or not rec.get("key"):
            continue
        cell = read_cached_cell(rec["key"])
        if cell is None:
            print(f"{rec['attack']} x {rec['defense']}: not in this cache, skipped", file=sys.stderr)
            continue
        _, scenario = load_target(catalog, plugins, rec["target"])
        ctx = metric_context(scenario, torch.unique(cell.labels))
        metric = plugins.get("metric", "judge")(ctx)
        metric.update(cell.images, cell.labels)
        judged = metric.compute()
        rows.append({"attack": rec["attack"], "defense": rec["defense"], "target": rec["target"],
                     "acc@1": rec["metrics"].get("acc@1"), **{k: judged[k] for k in KEYS}})
    out = Path(args.out) if args.out else Path(args.results).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("| attack | defense | acc@1 | " + " | ".join(KEYS) + " |")
    print("|---|---|---|" + "---|" * len(KEYS))
    for r in rows:
        print(f"| {r['attack']} | {r['defense']} | {r['acc@1']:.2f} | " + " | ".join(f"{r[k]:.2f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
