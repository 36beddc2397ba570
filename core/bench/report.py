"""Bench reports: ``results.jsonl`` (one line per cell), ``results.csv``, ``results.md`` and a static
``report.html`` (:mod:`~invertkit.core.bench.html`: per target a heatmap per headline metric, the
privacy-utility plane of each attack, and per cell one labelled row per attacked identity, its private
training images beside its reconstructions; then the plan with every skip reason and the environment:
versions, device, seeds, cache keys). Every user-supplied string in the HTML is escaped. What the records
read as (columns, formatted values, matrices) is :mod:`~invertkit.core.bench.records`; its names and the
HTML report's are importable from here too.
Every file is written atomically. While a bench runs, :class:`ResultsStream` appends each finished cell
to ``results.jsonl`` as it lands (flushed to disk), so an interrupted bench leaves what it finished; the
final report then rewrites the file whole, every cell once, in plan order."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from invertkit.core.bench.html import (
    CSS,
    MAX_IDENTITIES,
    PALETTE,
    PRIVATE_PER_ROW,
    RECON_PER_ROW,
    PrivateRows,
    References,
    e,
    heat,
    img_tag,
    scatter_svg,
    strip_png,
    write_html,
)
from invertkit.core.bench.records import (
    COLUMNS,
    HEADLINES,
    RECORD_KEYS,
    cell_text,
    columns,
    defense_labels,
    environment,
    flat,
    fmt,
    headlines,
    matrix,
    skips,
)
from invertkit.core.bench.runner import METRIC_KEYS, CellOutcome
from invertkit.core.cache import atomic_write_text

#: the text reports' own names, and those of records.py and html.py this module has always exported
__all__ = [
    "cell_text", "CellOutcome", "COLUMNS", "columns", "CSS", "defense_labels", "e", "environment", "flat",
    "fmt", "grid_png", "HEADLINES", "headlines", "heat", "img_tag", "markdown", "matrix", "MAX_IDENTITIES",
    "METRIC_KEYS", "PALETTE", "PRIVATE_PER_ROW", "PrivateRows", "RECON_PER_ROW", "RECORD_KEYS", "References",
    "ResultsStream", "scatter_svg", "skips", "strip_png", "write_csv", "write_html", "write_jsonl",
    "write_report",
]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


class ResultsStream:
    """``results.jsonl`` in ``out_dir``, started empty, one line appended (and synced) per finished cell."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / "results.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")  # a new bench: what an interrupted one left is in the cache

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    cols = columns(records)
    w = csv.DictWriter(buf, fieldnames=list(cols))
    w.writeheader()
    for r in records:
        w.writerow(flat(r, cols))
    atomic_write_text(path, buf.getvalue())


def markdown(records: list[dict[str, Any]], title: str = "invertkit bench") -> str:
    attacks, defenses, cell = matrix(records)
    targets = list(dict.fromkeys(r["target"] for r in records))
    out = [f"# {title}", ""]
    if any(r.get("mode") == "adaptive" for r in records):
        out += ["**Adaptive attackers**: white-box attacks hold the weights and pass output defenses by BPDA; "
                "these are not the deployed figures.", ""]
    for t in targets:
        for key, label in headlines(records):
            out += [f"## target `{t}` — {label}", ""]
            out.append("| attack \\ defense | " + " | ".join(defenses) + " |")
            out.append("|---|" + "---|" * len(defenses))
            for a in attacks:
                out.append(f"| {a} | " + " | ".join(cell_text(cell.get((t, a, d)), key) for d in defenses) + " |")
            nat = []
            for d in defenses:
                vals = [r["metrics"].get("natural_acc") for r in records
                        if r["target"] == t and r["defense"] == d and r["status"] == "ok"]
                nat.append(fmt(vals[0], "natural_acc") if vals else "–")
            out.append("| *natural acc* | " + " | ".join(nat) + " |")
            out.append("")
    if skips(records):
        out += ["## skipped and failed cells", ""]
        out += [f"- `{r['attack']}` x `{r['defense']}` x `{r['target']}`: {r['status']} — {r['reason']}"
                for r in skips(records)]
        out.append("")
    cols = columns(records)
    out += ["## all cells", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        row = flat(r, cols)
        out.append("| " + " | ".join(fmt(row[k], k).replace("|", "/") for k in cols) + " |")
    grads = {r["defense"]: r.get("gradient") for r in records if r.get("gradient")}
    if grads:
        out += ["", "Gradients through each defense (what a white-box attack differentiates): "
                + ", ".join(f"`{d}`: {g}" for d, g in grads.items()) + "."]
    return "\n".join(out) + "\n"


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    from PIL import Image
    from torchvision.utils import make_grid

    g = make_grid(images[: nrow * 4].float(), nrow=nrow, padding=1, pad_value=0.5)
    arr = (g.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr if arr.shape[2] == 3 else arr[:, :, 0])
    scale = max(1, 160 // max(1, img.width // nrow))
    img = img.resize((img.width * min(scale, 8), img.height * min(scale, 8)), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_report(out_dir: str | Path, outcomes: list[CellOutcome], title: str = "invertkit bench", *,
                 references: References | None = None, command: str | None = None) -> Path:
    """Write results.jsonl, results.csv, results.md and report.html into ``out_dir``. ``references`` maps a
    target's name to its private training split, ``(images, labels)`` or ``(images, labels, dataset classes)``:
    the report shows a few of each attacked identity's images beside its reconstructions (without it, the
    reconstructions alone). ``command`` is the command line, shown in the report's environment block."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [o.record for o in outcomes]
    write_jsonl(out / "results.jsonl", records)
    write_csv(out / "results.csv", records)
    atomic_write_text(out / "results.md", markdown(records, title))
    write_html(out / "report.html", outcomes, title, references=references, command=command)
    return out
