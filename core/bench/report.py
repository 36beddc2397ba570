"""Bench reports: ``results.jsonl`` (one line per cell), ``results.csv``, ``results.md`` and a static
``report.html`` (the attack x defense matrix as a heatmap and a grid of reconstructions per cell).
Every file is written atomically. While a bench runs, :class:`ResultsStream` appends each finished cell
to ``results.jsonl`` as it lands (flushed to disk), so an interrupted bench leaves what it finished; the
final report then rewrites the file whole, every cell once, in plan order."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from invertkit.core.bench.runner import METRIC_KEYS, CellOutcome
from invertkit.core.cache import atomic_write_bytes, atomic_write_text

RECORD_KEYS = ("attack", "defense", "target", "mode", "status", "reason")
COLUMNS = (*RECORD_KEYS, *METRIC_KEYS)
#: the headline matrices: one opinion (the evaluation model), the independent judge, and where they disagree
HEADLINES = (("acc@1", "attack acc@1 (evaluation model)"),
             ("judge_acc", "judge's acc@1 (ensemble of other evaluation models)"),
             ("adversarial_rate", "adversarial rate (accepted by the evaluation model, rejected by the judge)"),
             ("nn_pixel_acc", "nearest private training image (pixel space) is the attacked identity"))


def fmt(v: Any, key: str = "") -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if key == "queries":
        return f"{int(v):,}"
    if key == "seconds":
        return f"{v:.1f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def columns(records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The fixed columns, then any further metric keys the cells report, in first-seen order."""
    extra = [k for r in records for k in r.get("metrics", {}) if k not in COLUMNS]
    return COLUMNS + tuple(dict.fromkeys(extra))


def flat(record: dict[str, Any], cols: tuple[str, ...] = COLUMNS) -> dict[str, Any]:
    row = {k: record.get(k, "deployed" if k == "mode" else "") for k in RECORD_KEYS}
    for k in cols[len(RECORD_KEYS):]:
        row[k] = record.get("metrics", {}).get(k, "")
    return row


def headlines(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The headline metrics some cell reports, in :data:`HEADLINES` order."""
    seen = {k for r in records for k in r.get("metrics", {})}
    return [(k, label) for k, label in HEADLINES if k in seen] or [HEADLINES[0]]


def skips(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["status"] in ("skipped", "failed")]


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


def matrix(records: list[dict[str, Any]], key: str = "acc@1") -> tuple[list[str], list[str], dict]:
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    defenses = list(dict.fromkeys(r["defense"] for r in records))
    cell = {}
    for r in records:
        cell[(r["target"], r["attack"], r["defense"])] = r
    return attacks, defenses, cell


def cell_text(r: dict[str, Any] | None, key: str) -> str:
    if r is None:
        return ""
    if r["status"] == "skipped":
        return "skipped"
    if r["status"] == "failed":
        return "FAILED"
    return fmt(r["metrics"].get(key), key)


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


def heat(v: Any) -> str:
    if not isinstance(v, (int, float)) or math.isnan(v):
        return "#eee"
    v = max(0.0, min(1.0, float(v)))
    return f"hsl({int(120 * (1 - v))}, 70%, {int(85 - 30 * v)}%)"


def write_html(path: Path, outcomes: list[CellOutcome], title: str) -> None:
    records = [o.record for o in outcomes]
    attacks, defenses, cell = matrix(records)
    targets = list(dict.fromkeys(r["target"] for r in records))
    by_key = {(o.record["target"], o.record["attack"], o.record["defense"]): o for o in outcomes}
    h = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
         "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}"
         "table{border-collapse:collapse;margin-bottom:1.5em}img{image-rendering:pixelated}</style>",
         f"<h1>{html.escape(title)}</h1>"]
    if any(r.get("mode") == "adaptive" for r in records):
        h.append("<p><b>Adaptive attackers</b>: white-box attacks hold the weights and pass output defenses by BPDA; "
                 "these are not the deployed figures.</p>")
    for t in targets:
        for key, label in headlines(records):
            h.append(f"<h2>target {html.escape(t)}: {html.escape(label)} (red = more leakage)</h2><table><tr><th></th>")
            h += [f"<th>{html.escape(d)}</th>" for d in defenses] + ["</tr>"]
            for a in attacks:
                h.append(f"<tr><th>{html.escape(a)}</th>")
                for d in defenses:
                    r = cell.get((t, a, d))
                    v = r["metrics"].get(key) if r and r["status"] == "ok" else None
                    tip = html.escape(r["reason"], quote=True) if r else ""
                    h.append(f"<td title='{tip}' style='background:{heat(v)}'>{html.escape(cell_text(r, key))}</td>")
                h.append("</tr>")
            h.append("</table>")
        h.append("<h3>reconstructions (one row per identity)</h3><table><tr><th></th>")
        h += [f"<th>{html.escape(d)}</th>" for d in defenses] + ["</tr>"]
        for a in attacks:
            h.append(f"<tr><th>{html.escape(a)}</th>")
            for d in defenses:
                o = by_key.get((t, a, d))
                if o is not None and o.images is not None and len(o.images):
                    per = max(1, int((o.labels == o.labels[0]).sum()))
                    order = torch.argsort(o.labels, stable=True)
                    png = base64.b64encode(grid_png(o.images[order], nrow=min(per, 8))).decode()
                    h.append(f"<td><img src='data:image/png;base64,{png}'></td>")
                else:
                    h.append(f"<td>{html.escape(cell_text(o.record if o else None, 'acc@1'))}</td>")
            h.append("</tr>")
        h.append("</table>")
    if skips(records):
        h.append("<h2>skipped and failed cells</h2><ul>")
        h += [f"<li>{html.escape(r['attack'])} &times; {html.escape(r['defense'])} &times; {html.escape(r['target'])}: "
              f"{html.escape(r['status'])} — {html.escape(r['reason'])}</li>" for r in skips(records)]
        h.append("</ul>")
    atomic_write_bytes(path, "\n".join(h).encode())


def write_report(out_dir: str | Path, outcomes: list[CellOutcome], title: str = "invertkit bench") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [o.record for o in outcomes]
    write_jsonl(out / "results.jsonl", records)
    write_csv(out / "results.csv", records)
    atomic_write_text(out / "results.md", markdown(records, title))
    write_html(out / "report.html", outcomes, title)
    return out
