"""Means (and ranges) of bench metrics over several runs of one matrix: the ``results.jsonl`` of each run (one per
seed, say), one Markdown row per (target, attack, defense) in the order first seen.

    python benchmarks/bench_means.py out-seed0/results.jsonl out-seed1/results.jsonl out-seed2/results.jsonl \\
        --metrics acc@1,judge_acc,knn_dist,fid_eval,queries,seconds
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="results.jsonl files of bench runs")
    ap.add_argument("--metrics", default="acc@1,judge_acc,knn_dist,fid_eval,queries,seconds")
    args = ap.parse_args(argv)
    metrics = args.metrics.split(",")
    rows: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for path in args.results:
        with open(path) as fh:
            for line in fh:
                rec = json.loads(line)
                if rec.get("status") != "ok":
                    continue
                key = (rec["target"], rec["attack"], rec["defense"])
                seeds[key].append(rec.get("seed"))
                for m in metrics:
                    if m in rec["metrics"] and rec["metrics"][m] is not None:
                        rows[key][m].append(float(rec["metrics"][m]))
    print("| target | attack | defense | runs | " + " | ".join(metrics) + " |")
    print("|" + "---|" * (4 + len(metrics)))
    for key, values in rows.items():
        cells = []
        for m in metrics:
            v = values.get(m, [])
            if not v:
                cells.append("–")
                continue
            mean = sum(v) / len(v)
            fmt = (lambda x: f"{x:,.0f}") if m in ("queries", "prior_queries") else (lambda x: f"{x:.3f}")
            cells.append(fmt(mean) + (f" ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 and m not in ("queries",) else ""))
        print(f"| {key[0]} | {key[1]} | {key[2]} | {len(seeds[key])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
