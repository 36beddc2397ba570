"""report.html as a person reads it: per cell one labelled row per attacked identity (its private training
images beside its reconstructions), a heatmap per headline metric, the privacy-utility planes, the plan with
every skip reason and the environment; every user-supplied string escaped. The page is rendered in headless
Chromium (Debian's ``chromium``; ``.ci/run`` installs it): it loads without script errors and every image
decodes. Without chromium the rendering tests are skipped, except under CI (``CI`` set), where they fail."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from invertkit.cli import cli
from invertkit.core.bench.report import MAX_IDENTITIES, defense_labels, write_report
from invertkit.core.bench.runner import CellOutcome

TINY = Path(__file__).parent / "data" / "registry-tiny.toml"
EVIL = "[/oops]<script>alert(1)</script>"
EVIL_ATTR = "x' onerror='alert(2)\" onload=\"alert(3)"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="headless chromium is not installed (CI installs it: .ci/run)")

#: a probe, in a test-only copy of the report: counts script errors (and alert() calls), then, once the page has
#: loaded, decodes every <img> (drawing it on a canvas) and writes what it found into the title, which --dump-dom
#: shows. All synchronous in the load event: --dump-dom comes after it, however loaded the machine
HEAD_PROBE = ("<script>window.__errors=[];window.__alerts=0;window.alert=()=>{window.__alerts++};"
              "addEventListener('error',ev=>{window.__errors.push(ev.message||'resource')},true);</script>")
TAIL_PROBE = ("<script>addEventListener('load',()=>{const im=[...document.images];"
              "const cx=document.createElement('canvas').getContext('2d');let bad=0;"
              "for(const i of im){if(!i.complete||i.naturalWidth===0){bad++;continue}"
              "try{cx.drawImage(i,0,0)}catch(err){bad++}}"  # drawing decodes the whole image, synchronously
              "document.title='probe images='+im.length+' broken='+bad+' errors='+window.__errors.length"
              "+' alerts='+window.__alerts+' svgs='+document.querySelectorAll('svg').length})</script>")
PROBE = re.compile(r"<title>probe images=(\d+) broken=(\d+) errors=(\d+) alerts=(\d+) svgs=(\d+)</title>")


def _ok(attack: str, defense: str, target: str, ids: int, per: int, shape: tuple[int, ...], acc: float,
        nat: float) -> CellOutcome:
    labels = torch.arange(ids).repeat_interleave(per)
    record = {"attack": attack, "defense": defense, "target": target, "mode": "deployed", "status": "ok",
              "reason": "", "key": f"key-{attack}-{defense}", "seed": 0, "defense_config": {"strength": 1},
              "metrics": {"acc@1": acc, "judge_acc": acc / 2, "natural_acc": nat, "queries": 10, "seconds": 0.1}}
    return CellOutcome(record, torch.rand(len(labels), *shape), labels)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A report of synthetic cells (no training): hostile names everywhere a user can put a string, a grey 8x8
    target and an RGB one whose cell attacks more identities than a card shows; returns it and its <img> count."""
    torch.manual_seed(0)
    gray, rgb = "tiny-cnn", f"rgb{EVIL_ATTR}"
    outcomes = [
        _ok("random-prior", "none", gray, 5, 10, (1, 8, 8), 0.2, 0.95),
        _ok(EVIL, "none", gray, 5, 10, (1, 8, 8), 0.8, 0.95),
        _ok(EVIL, EVIL_ATTR, gray, 5, 3, (1, 8, 8), 0.3, 0.7),
        CellOutcome({"attack": "gmi", "defense": EVIL_ATTR, "target": gray, "mode": "deployed", "status": "skipped",
                     "reason": f"needs grad; {EVIL} removes it", "metrics": {}}),
        CellOutcome({"attack": "nes", "defense": "none", "target": gray, "mode": "deployed", "status": "failed",
                     "reason": f"RuntimeError: {EVIL}", "metrics": {}}),
        _ok("random-prior", "none", rgb, 12, 2, (3, 16, 16), 0.1, 0.9),
    ]
    references = {gray: (torch.rand(50, 1, 8, 8), torch.arange(5).repeat(10), (10, 11, 12, 13, 14)),
                  rgb: (torch.rand(60, 3, 16, 16), torch.arange(12).repeat(5))}
    out = tmp_path_factory.mktemp("synthetic-report")
    write_report(out, outcomes, title=f"bench {EVIL}", references=references, command=f"invertkit bench --out {EVIL}")
    images = 3 * 5 * 2 + MAX_IDENTITIES * 2  # a private and a reconstruction strip per row
    return out / "report.html", images


def chromium(page: Path, tmp: Path) -> tuple[str, str]:
    """``page`` loaded in headless chromium: the DOM it ends with, and its console log."""
    assert CHROMIUM, "CI needs chromium (Debian package 'chromium'; .ci/run installs it)"
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--dump-dom", page.resolve().as_uri()]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish loading {page.name} (a script that opens a dialog blocks it)")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, r.stderr


def probe(report: Path, tmp: Path) -> tuple[dict[str, int], str]:
    """A probed copy of ``report`` in headless chromium: the probe's counts and the console log. Run before the
    report itself: a script that got in and calls alert() is counted here, where alert() cannot block."""
    text = report.read_text()
    head = "<meta charset='utf-8'>"
    assert head in text and text.rstrip().endswith("</html>")
    probed = tmp / "probed.html"
    probed.write_text(text.replace(head, head + HEAD_PROBE, 1).replace("</html>", TAIL_PROBE + "</html>"))
    dom, console = chromium(probed, tmp)
    m = PROBE.search(dom)
    assert m, f"the probe never reported: {console[-3000:]}"
    return dict(zip(("images", "broken", "errors", "alerts", "svgs"), map(int, m.groups()))), console


def _every_png_decodes_whole(page: str) -> int:
    """Every embedded PNG decodes completely (a browser draws a truncated one in part, without an error)."""
    from PIL import Image

    payloads = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    for b64 in payloads:
        with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as img:
            img.load()
    return len(payloads)


def _no_script_errors(console: str) -> None:
    bad = [line for line in console.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "rror" in line)]
    assert not bad, bad


# ----------------------------------------------------------------------------------------------- the page
def test_every_user_string_is_escaped(synthetic) -> None:
    page = synthetic[0].read_text()
    assert "<script" not in page.lower()  # the report runs no script, and no name smuggles one in
    for needle in (EVIL, EVIL_ATTR, "onerror='", 'onload="'):
        assert needle not in page, needle
    assert "[/oops]&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "rgbx&#x27; onerror=&#x27;alert(2)&quot; onload=&quot;alert(3)" in page


def test_the_report_shows_each_identity_beside_its_private_images(synthetic) -> None:
    page = synthetic[0].read_text()
    for i in range(5):
        assert f"<td class='id'>identity {i} <span class='sub'>(class {10 + i})</span></td>" in page  # dataset class
        assert f"alt='private training images of identity {i}'" in page
        assert f"alt='reconstructions of identity {i}'" in page
    assert "<td class='id'>identity 11</td>" not in page and "<td class='id'>identity 9</td>" in page
    assert f"the first {MAX_IDENTITIES} of 12 attacked identities" in page
    assert "(8 of 10 per identity)" in page and "(3 per identity)" in page
    assert "<span class='mode deployed'>deployed</span>" in page


def test_the_report_has_heatmaps_scatter_plan_and_environment(synthetic) -> None:
    page = synthetic[0].read_text()
    assert page.count("<table class='heat'>") == 2 * 2  # two targets x (acc@1, judge's acc@1)
    assert page.count("<svg ") == 2 + 1  # tiny-cnn: random-prior and the hostile attack; rgb: random-prior
    assert "natural accuracy of the defended target" in page
    plan = page[page.index("<h2 id='plan'>"):page.index("<h2 id='env'>")]
    assert plan.count("<tr>") == 1 + 6
    assert "needs grad; [/oops]&lt;script&gt;" in plan and "RuntimeError: [/oops]&lt;script&gt;" in plan
    assert "<td class='skipped'>skipped</td>" in plan and "<td class='failed'>failed</td>" in plan
    env = page[page.index("<h2 id='env'>"):]
    for needle in ("<dt>invertkit</dt>", "<dt>torch</dt>", "<dt>python</dt>", "<dt>device (report host)</dt>",
                   "<dt>seeds</dt>", "<dt>command</dt>", "<code>key-random-prior-none</code>"):
        assert needle in env, needle


def test_a_defense_at_two_strengths_is_two_labelled_points() -> None:
    base = {"attack": "nes", "target": "t", "status": "ok", "metrics": {}}
    records = [{**base, "defense": "top-k", "defense_config": {"k": 1, "name": "x"}},
               {**base, "defense": "top-k", "defense_config": {"k": 3, "name": "x"}},
               {**base, "defense": "none", "defense_config": {}}]
    assert sorted(defense_labels(records).values()) == ["none", "top-k (k=1)", "top-k (k=3)"]


def test_accuracy_against_queries_draws_a_budget_sweep_as_one_line(tmp_path: Path) -> None:
    from invertkit.core.bench.html import queries_per_identity, queries_svg

    def rec(attack: str, queries: int, acc: float, exhausted: bool = False) -> dict:
        return {"attack": attack, "defense": "none", "target": "t", "status": "ok", "reason": "", "identities": 5,
                "samples": 10, "mode": "deployed",
                "metrics": {"acc@1": acc, "queries": queries}, "budget": {"exhausted": exhausted}}

    sweep = [rec("nes", 5 * 100, 0.2, True), rec("nes", 5 * 10_000, 0.6), rec("nes", 5 * 1_000, 0.4, True)]
    records = [*sweep, rec("random-prior", 0, 0.15), rec("brep-mi", 5 * 3_000, 0.5),
               {**rec("gmi", 50, 0.9), "status": "failed"}]
    assert [queries_per_identity(r) for r in sweep] == [100.0, 10_000.0, 1_000.0]
    assert queries_per_identity(records[3]) is None  # spent nothing: not a point, the baseline
    svg = queries_svg(records, "t")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 4  # nes's sweep is one line; gmi failed
    assert svg.count("fill='#fff'") == 2  # the two cells whose budget ran out are hollow
    assert "stroke-dasharray" in svg and "random-prior: acc@1 0.150" in svg
    assert ">1e2<" in svg and ">1e4<" in svg
    # the line goes through the sweep in order of queries: its x coordinates increase
    xs = [float(p.split(",")[0]) for p in re.search(r"points='([^']*)'", svg).group(1).split()]
    assert xs == sorted(xs) and len(xs) == 3
    assert queries_svg(records, "other") == "" and queries_svg([records[3]], "t") == ""
    outcomes = [CellOutcome(r, None, None) for r in records]
    write_report(tmp_path, outcomes)
    assert "<h3>accuracy against queries</h3>" in (tmp_path / "report.html").read_text()


def test_the_report_is_written_without_references(tmp_path: Path) -> None:
    write_report(tmp_path, [_ok("a", "d", "t", 2, 2, (1, 8, 8), 0.5, 0.9)])
    page = (tmp_path / "report.html").read_text()
    assert "alt='reconstructions of identity 1'" in page and "alt='private training images" not in page
    assert page.count("<span class='note'>not available</span>") == 2


# ------------------------------------------------------------------------------------------- in chromium
@needs_chromium
def test_the_report_renders_in_chromium(synthetic, tmp_path: Path) -> None:
    report, images = synthetic
    assert _every_png_decodes_whole(report.read_text()) == images
    counts, console = probe(report, tmp_path)
    assert counts == {"images": images, "broken": 0, "errors": 0, "alerts": 0, "svgs": 3}, counts
    _no_script_errors(console)
    _no_script_errors(chromium(report, tmp_path)[1])  # the report itself, as written


@needs_chromium
def test_a_bench_report_shows_private_images_and_renders(tiny_scenario, tmp_path: Path) -> None:
    """The CLI's report: the bench hands write_report each target's private split."""
    out = tmp_path / "bench"
    r = CliRunner().invoke(cli, ["bench", "--registry", str(TINY), "--attacks", "random-prior",
                                 "--defenses", "none,label-only", "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    assert page.count("alt='private training images of identity 0'") == 2  # a row in each of the two cells
    assert "<dt>command</dt>" in page and "<svg " in page
    assert _every_png_decodes_whole(page) == 2 * 5 * 2
    counts, console = probe(out / "report.html", tmp_path)
    assert counts["images"] == 2 * 5 * 2 and counts["broken"] == counts["errors"] == counts["alerts"] == 0, counts
    _no_script_errors(console)
    _no_script_errors(chromium(out / "report.html", tmp_path)[1])
