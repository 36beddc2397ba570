"""The static ``report.html`` of a bench: per target a heatmap per headline metric, the privacy-utility plane
of each attack and the attack accuracy against the queries spent (SVG), and per cell one labelled row per attacked identity, its private training images beside
its reconstructions; then the plan with every skip reason and the environment (versions, device, seeds, cache
keys). One self-contained file: images are inline PNGs. Every user-supplied string goes through :func:`e`."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from invertkit.core.bench.records import (
    cell_text,
    defense_labels,
    environment,
    fmt,
    headlines,
    matrix,
    natural_acc,
    ok_value,
)
from invertkit.core.bench.runner import CellOutcome
from invertkit.core.cache import atomic_write_bytes

def heat(v: Any) -> str:
    if not isinstance(v, (int, float)) or math.isnan(v):
        return "#eee"
    v = max(0.0, min(1.0, float(v)))
    return f"hsl({int(120 * (1 - v))}, 70%, {int(85 - 30 * v)}%)"


#: how much of each cell the report shows: identities (rows) per cell, private images and reconstructions per row
MAX_IDENTITIES = 10
PRIVATE_PER_ROW = 4
RECON_PER_ROW = 8
#: (images, labels) of a target's private training split, optionally with the dataset's class ids of its labels
References = dict[str, tuple]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1600px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:.2em}h3{margin-top:1.5em}
h4{margin:.2em 0 .4em;font-size:1em}h4.group{font-size:1.1em;margin:1.2em 0 .5em}
.lead{color:#555;margin-top:0}.note{color:#666;font-size:.9em}
nav{background:#f6f6f6;padding:.5em 1em;border-radius:6px}nav a{margin-right:1em}
table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}
th{background:#f3f3f3}.heat{font-size:.92em}.heat td{min-width:4.5em}.heat tr.nat td,.heat tr.nat th{background:#fafafa;font-style:italic}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em .8em;background:#fff}
.card table td,.card table th{border:none;padding:2px 6px;text-align:left;vertical-align:middle}
.card .id{font-weight:600;white-space:nowrap}.card .sub{color:#777;font-weight:normal;font-size:.85em}
img{image-rendering:pixelated;display:block}
.plan td,.plan th,.keys td,.keys th{text-align:left}.plan td.reason{max-width:48em}
.ok{color:#1a7f37}.skipped{color:#777}.failed{color:#c00;font-weight:600}
.mode{display:inline-block;padding:0 .4em;border-radius:3px;background:#e8f0fe;font-size:.85em}
.mode.adaptive{background:#fde2e1}
code{background:#f3f3f3;padding:0 .2em;border-radius:3px}
dl.env{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dl.env dt{font-weight:600}dl.env dd{margin:0}
svg text{font-family:system-ui,sans-serif}
"""


def e(v: Any) -> str:
    """``v`` as HTML text or a (quoted) attribute value: every user-supplied string goes through this."""
    return html.escape(str(v), quote=True)


def strip_png(images: torch.Tensor) -> tuple[str, int, int]:
    """One row of images as a base64 PNG (native resolution, a 1-pixel grey gap), with its width and height."""
    from PIL import Image
    from torchvision.utils import make_grid

    g = make_grid(images.detach().float().cpu(), nrow=len(images), padding=1, pad_value=0.5)
    arr = (g.nan_to_num(0.0).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr if arr.shape[2] == 3 else arr[:, :, 0])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode(), img.width, img.height


def img_tag(images: torch.Tensor, alt: str) -> str:
    b64, w, h = strip_png(images)
    scale = max(1, math.ceil(32 / max(1, h - 2)))  # small images (8x8 digits) shown 4x, pixels kept sharp
    return f"<img src='data:image/png;base64,{b64}' width='{w * scale}' height='{h * scale}' alt='{e(alt)}'>"


#: the plotting area of the report's planes: width, height, and the left, right, top and bottom margins
_W, _H, _L, _R, _T, _B = 400, 330, 48, 16, 14, 42


def _plane(aria: str, xticks: list[tuple[float, str]], xlabel: str) -> list[str]:
    """The opening of a report plane (SVG): frame, grid and labels, with ``xticks`` as (position in [0, 1],
    text) and acc@1 from 0 to 1 upwards. The caller adds its marks and ``</svg>``."""
    pw, ph = _W - _L - _R, _H - _T - _B
    X = lambda v: _L + v * pw  # noqa: E731
    Y = lambda v: _T + (1 - v) * ph  # noqa: E731
    s = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' viewBox='0 0 {_W} {_H}' role='img' "
         f"aria-label='{e(aria)}'>", f"<rect x='{_L}' y='{_T}' width='{pw}' height='{ph}' fill='#fcfcfc' stroke='#999'/>"]
    for v, text in xticks:
        s.append(f"<line x1='{X(v):.1f}' y1='{_T}' x2='{X(v):.1f}' y2='{_T + ph}' stroke='#e5e5e5'/>"
                 f"<text x='{X(v):.1f}' y='{_T + ph + 14}' font-size='10' text-anchor='middle'>{text}</text>")
    for i in range(6):
        v = i / 5
        s.append(f"<line x1='{_L}' y1='{Y(v):.1f}' x2='{_L + pw}' y2='{Y(v):.1f}' stroke='#e5e5e5'/>"
                 f"<text x='{_L - 5}' y='{Y(v) + 3:.1f}' font-size='10' text-anchor='end'>{v:.1f}</text>")
    s.append(f"<text x='{_L + pw / 2}' y='{_H - 6}' font-size='11' text-anchor='middle'>{xlabel}</text>"
             f"<text transform='translate(12 {_T + ph / 2}) rotate(-90)' font-size='11' text-anchor='middle'>attack acc@1 "
             f"(leakage &#8594;)</text>")
    return s


def queries_per_identity(r: dict[str, Any]) -> float | None:
    """The queries a cell spent per attacked identity (``None`` for a cell that spent none or did not run)."""
    q = ok_value(r, "queries")
    n = r.get("identities") or r.get("samples")
    if not q or not n:
        return None
    return float(q) / float(n)


def queries_svg(records: list[dict[str, Any]], t: str) -> str:
    """Attack accuracy against the queries it spent, on target ``t``: x = queries per attacked identity (log
    scale), y = acc@1; one colour per attack, a line through the cells of one (attack, defense) that differ
    only in budget (a budget sweep, ``benchmarks/query_curves.py``), the ``random-prior`` figure dashed. Empty
    unless some cell spent queries."""
    pts: dict[tuple[str, str], list[tuple[float, float, dict]]] = {}
    base = None
    for r in records:
        if r["target"] != t or r.get("status") != "ok":
            continue
        y = ok_value(r, "acc@1")
        if r["attack"] == "random-prior" and y is not None and r["defense"] == "none":
            base = y
        x = queries_per_identity(r)
        if x is None or y is None:
            continue
        pts.setdefault((r["attack"], r["defense"]), []).append((x, y, r))
    if not pts:
        return ""
    xs = [x for line in pts.values() for x, _, _ in line]
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    hi = max(hi, lo + 1)
    pw, ph = _W - _L - _R, _H - _T - _B
    X = lambda v: _L + (math.log10(v) - lo) / (hi - lo) * pw  # noqa: E731
    Y = lambda v: _T + (1 - v) * ph  # noqa: E731
    s = _plane(f"{t}: attack accuracy against queries", [((d - lo) / (hi - lo), f"1e{d}") for d in range(lo, hi + 1)],
               "queries per identity (log scale; cost &#8594;)")
    if base is not None:
        s.append(f"<line x1='{_L}' y1='{Y(base):.1f}' x2='{_L + pw}' y2='{Y(base):.1f}' stroke='#777' "
                 f"stroke-dasharray='5 4'><title>random-prior: acc@1 {base:.3f}</title></line>"
                 f"<text x='{_L + pw - 4}' y='{Y(base) - 4:.1f}' font-size='10' fill='#777' text-anchor='end'>"
                 "random-prior</text>")
    attacks = list(dict.fromkeys(a for a, _ in pts))
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(attacks)}
    for (a, d), line in pts.items():
        line.sort(key=lambda p: p[0])
        c = colors[a]
        if len(line) > 1:
            path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _ in line)
            s.append(f"<polyline points='{path}' fill='none' stroke='{c}' stroke-width='1.5'/>")
        for x, y, r in line:
            ex = (r.get("budget") or {}).get("exhausted")
            tip = f"{a} × {d}: acc@1 {y:.3f}, {x:,.0f} queries per identity" + (" (budget ran out)" if ex else "")
            s.append(f"<circle cx='{X(x):.1f}' cy='{Y(y):.1f}' r='4' fill='{c if not ex else '#fff'}' stroke='{c}' "
                     f"stroke-width='1.5'><title>{e(tip)}</title></circle>")
    for i, a in enumerate(attacks):  # the legend, top left
        s.append(f"<rect x='{_L + 8}' y='{_T + 8 + 14 * i}' width='10' height='10' fill='{colors[a]}'/>"
                 f"<text x='{_L + 22}' y='{_T + 17 + 14 * i}' font-size='10'>{e(a)}</text>")
    s.append("</svg>")
    return "".join(s)


def scatter_svg(records: list[dict[str, Any]], t: str, attack: str) -> str:
    """The privacy-utility plane of one attack on target ``t``: x = the defended target's natural accuracy,
    y = the attack's acc@1, one labelled point per defense (and strength)."""
    labels = defense_labels(records)
    colors = {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(dict.fromkeys(labels.values()))}
    pts = []
    for r in records:
        if r["target"] != t or r["attack"] != attack:
            continue
        x, y = ok_value(r, "natural_acc"), ok_value(r, "acc@1")
        if x is None or y is None:
            continue
        js = json.dumps(r.get("defense_config") or {}, sort_keys=True, default=str)
        pts.append((x, y, labels.get((r["defense"], js), r["defense"]), r))
    if not pts:
        return ""
    W, H, L, R, T, B = 400, 330, 48, 16, 14, 42
    pw, ph = W - L - R, H - T - B
    X = lambda v: L + v * pw  # noqa: E731
    Y = lambda v: T + (1 - v) * ph  # noqa: E731
    s = _plane(f"{attack}: attack accuracy against natural accuracy", [(v / 5, f"{v / 5:.1f}") for v in range(6)],
               "natural accuracy of the defended target (utility &#8594;)")
    placed: list[tuple[float, float, float, float]] = []
    for x, y, label, r in sorted(pts, key=lambda p: (-p[1], p[0])):
        cx, cy = X(x), Y(y)
        color = colors.get(label, "#333")
        tip = f"{label}: natural acc {x:.3f}, acc@1 {y:.3f} ({r.get('mode', 'deployed')})"
        s.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='4.5' fill='{color}' stroke='#fff'><title>{e(tip)}</title></circle>")
        w = 6.2 * len(label) + 2
        box = None
        for dx, dy, anchor in ((7, 4, "start"), (-7, 4, "end"), (7, -8, "start"), (-7, -8, "end"), (7, 15, "start"),
                               (-7, 15, "end"), (7, -20, "start"), (-7, -20, "end"), (7, 26, "start"), (-7, 26, "end")):
            x0 = cx + dx if anchor == "start" else cx + dx - w
            cand = (x0, cy + dy - 10, x0 + w, cy + dy + 2)
            inside = cand[0] >= L and cand[2] <= L + pw and cand[1] >= T and cand[3] <= T + ph
            if inside and not any(cand[0] < b[2] and b[0] < cand[2] and cand[1] < b[3] and b[1] < cand[3] for b in placed):
                box = (dx, dy, anchor, cand)
                break
        if box is None:  # crowded: the label goes where it overlaps least badly, the tooltip says the rest
            box = (7, 4, "start", (cx + 7, cy - 6, cx + 7 + w, cy + 6)) if cx + 7 + w <= L + pw else \
                  (-7, 4, "end", (cx - 7 - w, cy - 6, cx - 7, cy + 6))
        dx, dy, anchor, cand = box
        placed.append(cand)
        s.append(f"<text x='{cx + dx:.1f}' y='{cy + dy:.1f}' font-size='11' fill='{color}' text-anchor='{anchor}'>"
                 f"{e(label)}</text>")
    s.append("</svg>")
    return "".join(s)


def _heatmaps(records: list[dict[str, Any]], t: str, attacks: list[str], defenses: list[str], cell: dict) -> list[str]:
    h = ["<div class='row'>"]
    for key, label in headlines(records):
        h.append(f"<div><h4>{e(label)}</h4><table class='heat'><tr><th>attack \\ defense</th>")
        h += [f"<th>{e(d)}</th>" for d in defenses] + ["</tr>"]
        for a in attacks:
            h.append(f"<tr><th>{e(a)}</th>")
            for d in defenses:
                r = cell.get((t, a, d))
                v = ok_value(r, key) if r else None
                tip = f"{a} × {d}: {r['status']}" + (f": {r['reason']}" if r.get("reason") else "") if r else ""
                h.append(f"<td title='{e(tip)}' style='background:{heat(v)}'>{e(cell_text(r, key))}</td>")
            h.append("</tr>")
        h.append("<tr class='nat'><th>natural acc</th>"
                 + "".join(f"<td>{e(fmt(natural_acc(records, t, d)))}</td>" for d in defenses) + "</tr></table></div>")
    h.append("</div>")
    return h


class PrivateRows:
    """A target's private training split as the report shows it: identity -> an <img> of its first
    :data:`PRIVATE_PER_ROW` images (made on first use: only attacked identities are drawn), and its dataset class."""

    def __init__(self, ref: tuple | None) -> None:
        self.images, self.labels = (ref[0], torch.as_tensor(ref[1])) if ref else (None, None)
        self.classes = tuple(ref[2]) if ref and len(ref) > 2 and ref[2] is not None else ()
        self._tags: dict[int, str] = {}

    def tag(self, i: int) -> str | None:
        if self.images is None:
            return None
        if i not in self._tags:
            sel = self.images[self.labels == i][:PRIVATE_PER_ROW]
            self._tags[i] = img_tag(sel, f"private training images of identity {i}") if len(sel) else ""
        return self._tags[i] or None

    def dataset_class(self, i: int) -> str | None:
        return str(self.classes[i]) if 0 <= i < len(self.classes) else None


def _cell_card(o: CellOutcome, private: PrivateRows) -> str:
    r = o.record
    mode = r.get("mode", "deployed")
    labels = torch.as_tensor(o.labels)
    ids = torch.unique(labels).tolist()
    per = max(int((labels == i).sum()) for i in ids)
    facts = " · ".join(f"{k} {fmt(r['metrics'].get(k), k)}" for k in ("acc@1", "judge_acc") if k in r["metrics"])
    shown = f"{min(per, RECON_PER_ROW)} of {per} per identity" if per > RECON_PER_ROW else f"{per} per identity"
    h = [f"<div class='card'><h4>{e(r['attack'])} &times; {e(r['defense'])} <span class='mode {e(mode)}'>{e(mode)}</span>"
         f" <span class='sub'>{e(facts)}</span></h4><table><tr><th>identity</th><th>private (training set)</th>"
         f"<th>reconstructions <span class='sub'>({e(shown)})</span></th></tr>"]
    for i in ids[:MAX_IDENTITIES]:
        recon = o.images[labels == i]
        cls = private.dataset_class(int(i))
        sub = f" <span class='sub'>(class {e(cls)})</span>" if cls is not None and cls != str(i) else ""
        priv = private.tag(int(i)) or "<span class='note'>not available</span>"
        h.append(f"<tr><td class='id'>identity {e(i)}{sub}</td><td>{priv}</td>"
                 f"<td>{img_tag(recon[:RECON_PER_ROW], f'reconstructions of identity {i}')}</td></tr>")
    h.append("</table>")
    if len(ids) > MAX_IDENTITIES:
        h.append(f"<p class='note'>the first {MAX_IDENTITIES} of {len(ids)} attacked identities</p>")
    h.append("</div>")
    return "".join(h)


def _plan_table(records: list[dict[str, Any]]) -> list[str]:
    h = ["<table class='plan'><tr><th>attack</th><th>defense</th><th>target</th><th>mode</th><th>status</th>"
         "<th>reason / note</th></tr>"]
    for r in records:
        status = r["status"]
        note = r.get("reason") or ("from the cache" if r.get("cached") else "computed" if status == "ok" else "")
        h.append(f"<tr><td>{e(r['attack'])}</td><td>{e(r['defense'])}</td><td>{e(r['target'])}</td>"
                 f"<td>{e(r.get('mode', 'deployed'))}</td><td class='{e(status)}'>{e(status)}</td>"
                 f"<td class='reason'>{e(note)}</td></tr>")
    h.append("</table>")
    return h


def write_html(path: Path, outcomes: list[CellOutcome], title: str, references: References | None = None,
               command: str | None = None) -> None:
    records = [o.record for o in outcomes]
    attacks, defenses, cell = matrix(records)
    targets = list(dict.fromkeys(r["target"] for r in records))
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    h = [f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{e(title)}</title>",
         f"<meta name='viewport' content='width=device-width'><style>{CSS}</style>",
         f"<h1>{e(title)}</h1><p class='lead'>{len(records)} cells: {counts['ok']} ok, {counts['skipped']} skipped, "
         f"{counts['failed']} failed; {len(attacks)} attacks &times; {len(defenses)} defenses &times; "
         f"{len(targets)} target{'s' if len(targets) != 1 else ''}.</p>"]
    if any(r.get("mode") == "adaptive" for r in records):
        h.append("<p><b>Adaptive attackers</b>: white-box attacks hold the weights and pass output defenses by BPDA; "
                 "these are not the deployed figures.</p>")
    nav = []
    for i, t in enumerate(targets):
        nav.append(f"<a href='#t{i}'>target {e(t)}</a>")
    h.append("<nav>" + "".join(nav) + "<a href='#plan'>plan</a><a href='#env'>environment</a></nav>")
    for i, t in enumerate(targets):
        h.append(f"<h2 id='t{i}'>target {e(t)}</h2>")
        h.append("<h3>headline metrics</h3><p class='note'>red = more leakage; hover a cell for its status and reason. "
                 "The last row is the defended target's accuracy on held-out private images.</p>")
        h += _heatmaps(records, t, attacks, defenses, cell)
        plots = [(a, scatter_svg(records, t, a)) for a in attacks]
        plots = [(a, svg) for a, svg in plots if svg]
        if plots:
            h.append("<h3>privacy–utility</h3><p class='note'>One plane per attack, one point per defense: right is "
                     "more useful, up is more leakage; a good defense sits bottom right.</p><div class='row'>")
            h += [f"<div><h4>{e(a)}</h4>{svg}</div>" for a, svg in plots]
            h.append("</div>")
        qsvg = queries_svg(records, t)
        if qsvg:
            h.append("<h3>accuracy against queries</h3><p class='note'>What each attack bought with its queries: one "
                     "point per cell, a line through a budget sweep, hollow where the budget ran out; left is cheaper, "
                     "up is more leakage. The dashed line is the random-prior baseline.</p>" + qsvg)
        private = PrivateRows((references or {}).get(t))
        h.append("<h3>reconstructions</h3><p class='note'>Each row: one attacked identity, a few of its private "
                 f"training images (the evaluator's side; the attacker never sees them), then up to {RECON_PER_ROW} "
                 "of its reconstructions. Skipped and failed cells are in the plan below.</p>")
        for a in attacks:
            cards = [_cell_card(o, private) for o in outcomes
                     if o.record["target"] == t and o.record["attack"] == a and o.images is not None
                     and o.labels is not None and len(o.images) and o.images.dim() == 4]  # records: no pictures
            if cards:
                h.append(f"<h4 class='group'>{e(a)}</h4><div class='row'>" + "".join(cards) + "</div>")
    h.append("<h2 id='plan'>plan</h2><p class='note'>Every cell, in plan order, with the reason for each skip or "
             "failure.</p>")
    h += _plan_table(records)
    h.append("<h2 id='env'>environment</h2><dl class='env'>")
    h += [f"<dt>{e(k)}</dt><dd><code>{e(v)}</code></dd>" for k, v in environment(records, command).items()]
    h.append("</dl>")
    keyed = [r for r in records if r.get("key")]
    if keyed:
        h.append("<details open><summary>cache keys of the computed cells</summary><table class='keys'><tr><th>attack</th>"
                 "<th>defense</th><th>target</th><th>seed</th><th>key</th><th>cached</th></tr>")
        h += [f"<tr><td>{e(r['attack'])}</td><td>{e(r['defense'])}</td><td>{e(r['target'])}</td>"
              f"<td>{e(r.get('seed', '–'))}</td><td><code>{e(r['key'])}</code></td>"
              f"<td>{'yes' if r.get('cached') else 'no'}</td></tr>" for r in keyed]
        h.append("</table></details>")
    h.append("</html>")
    atomic_write_bytes(path, "\n".join(h).encode())

