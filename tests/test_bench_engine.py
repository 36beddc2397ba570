"""The bench engine, reshaped: what it trusts, what survives, what it refuses before any work.

* a cached cell carries a checksum: an edited metric, flipped image bytes or a truncated record are computed
  again (with a note on stderr), never trusted and never a permanent failure;
* results stream into ``results.jsonl``; a ``kill -9`` mid-bench and the same command again run only what is
  missing, and every cell is reported once;
* two processes sharing a fresh cache train each model once (a per-entry lock, per-writer temporary names);
* a NaN target's labels are refused, so its natural accuracy (and its cell) fails;
* a plugin's ``sys.exit()`` fails its cell, not the bench; ``KeyboardInterrupt`` still stops it;
* user strings are printed as they are (a target called ``[/oops]``), never as rich markup;
* ``--out`` under a file, an invalid registry (wrong-typed prior option, unknown architecture, not UTF-8),
  a pattern that matches nothing and non-finite options are refused before anything is trained;
* cache and report files honour the umask.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from invertkit.cli import _print_matrix, cli
from invertkit.core.bench.plan import Cell, Plan
from invertkit.core.bench.runner import cells_dir, run_bench, run_cell
from invertkit.core.errors import NonFiniteError
from invertkit.core.interfaces.attack import Attack
from invertkit.core.interfaces.capability import Capability
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import TorchTarget
from invertkit.core.testing.contracts import torch_threads

from conftest import tiny_registry_with  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
TINY = REPO / "tests" / "data" / "registry-tiny.toml"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result: Result, exit_code: int, *needles: str) -> str:
    assert result.exit_code == exit_code, f"exit {result.exit_code}, want {exit_code}\nstderr:\n{result.stderr}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def edited_registry(tmp_path: Path, old: str, new: str) -> Path:
    text = TINY.read_text()
    assert old in text, old
    path = tmp_path / "registry.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache of this test's own: whatever is trained shows up in it."""
    cache = tmp_path / "fresh-cache"
    monkeypatch.setenv("INVERTKIT_CACHE", str(cache))
    return cache


def trained_anything(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").is_dir() else []


# ----------------------------------------------------------------------------------- 1. cached cells are checked
def test_a_tampered_or_truncated_cached_cell_is_computed_again(scenario, tiny_catalog, plugins,  # noqa: ANN001
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cell = Cell(attack="random-prior", defense="none", target="tiny-cnn", samples_per_identity=1,
                metrics=("attack-acc",), seed=4242)
    first = run_cell(cell, tiny_catalog, plugins, debug=True)
    assert first.record["status"] == "ok" and first.record["cached"] is False
    acc = first.record["metrics"]["acc@1"]
    key = first.record["key"]
    rec_path, img_path = cells_dir() / f"{key}.json", cells_dir() / f"{key}.safetensors"
    again = run_cell(cell, tiny_catalog, plugins, debug=True)
    assert again.record["cached"] is True and again.record["metrics"]["acc@1"] == acc
    assert "checksum" not in again.record
    capsys.readouterr()

    def damaged(how: str) -> None:
        out = run_cell(cell, tiny_catalog, plugins, debug=True)
        assert out.record["status"] == "ok", (how, out.record)
        assert out.record["cached"] is False, f"{how}: a damaged cached cell was trusted"
        assert out.record["metrics"]["acc@1"] == acc, how
        assert f"note: cached cell {key} is damaged" in capsys.readouterr().err, how
        assert run_cell(cell, tiny_catalog, plugins, debug=True).record["cached"] is True, how  # stored anew

    edited = json.loads(rec_path.read_text())
    edited["metrics"]["acc@1"] = 0.9 if acc != 0.9 else 0.1
    rec_path.write_text(json.dumps(edited, indent=1, sort_keys=True))
    damaged("edited metric")

    blob = bytearray(img_path.read_bytes())
    blob[-3] ^= 0xFF
    img_path.write_bytes(bytes(blob))
    damaged("flipped image bytes")

    text = rec_path.read_text()
    rec_path.write_text(text[: len(text) // 2])
    damaged("truncated record")

    img_path.unlink()
    damaged("missing images")


# ----------------------------------------------------------------------------------- 2. results stream and survive
def test_a_killed_bench_resumes_from_the_cache_and_reports_each_cell_once(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    results = out / "results.jsonl"
    # options of this test's own, so that no cell is in the session's cache yet
    args = [sys.executable, str(CLI), "bench", "--registry", str(TINY), "--attacks", "random-prior,gmi",
            "--defenses", "none", "--targets", "tiny-cnn", "-o", "random-prior.batch_size=97",
            "-o", "gmi.iterations=400", "--out", str(out)]
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        left = results.read_text().splitlines() if results.is_file() else []
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert still_running, "the bench finished before its first cell reached results.jsonl"
    assert proc.returncode == -signal.SIGKILL
    assert len(left) == 1, f"killed mid-bench, results.jsonl should hold the one finished cell: {left}"
    first = json.loads(left[0])
    assert (first["attack"], first["status"], first["cached"]) == ("random-prior", "ok", False)

    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    cells = [(r["attack"], r["defense"], r["target"]) for r in records]
    assert sorted(cells) == sorted({("random-prior", "none", "tiny-cnn"), ("gmi", "none", "tiny-cnn")}), cells
    by_attack = {r["attack"]: r for r in records}
    assert by_attack["random-prior"]["cached"] is True, "the finished cell was computed again"
    assert by_attack["random-prior"]["metrics"] == first["metrics"]
    assert by_attack["gmi"]["status"] == "ok" and by_attack["gmi"]["cached"] is False  # the one that was missing


# ----------------------------------------------------------------------------------- 3. a shared fresh cache
MICRO = """
schema = 1

[presets.micro]
dataset = "digits"
private_classes = [0, 1, 2, 3, 4]
public_classes = [5, 6, 7, 8, 9]
target = { arch = "small-cnn", epochs = 6, lr = 0.003, batch_size = 64, seed = 0 }
eval = { arch = "small-mlp", epochs = 4, lr = 0.003, batch_size = 64, seed = 1 }
prior = { plugin = "wgan-gp", seed = 0, options = { latent_dim = 8, width = 8, steps = 20, batch_size = 32 } }
"""


def test_two_processes_on_one_fresh_cache_train_each_model_once(tmp_path: Path) -> None:
    registry = tmp_path / "micro.toml"
    registry.write_text(MICRO)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INVERTKIT_CACHE": str(tmp_path / "shared-cache")}
    args = [sys.executable, str(CLI), "train", "all", "--preset", "micro", "--registry", str(registry)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    log = "".join(err for _, err in outs)
    for what in ("training target", "training eval", "training prior"):  # one start line each, in either process
        starts = [line for line in log.splitlines() if what in line and ": started" in line]
        assert len(starts) == 1, f"{what!r} started {len(starts)} times:\n{log}"
    assert [o.splitlines()[0] for o, _ in outs][0] == [o.splitlines()[0] for o, _ in outs][1]  # the same model
    assert not list((tmp_path / "shared-cache" / "models").glob("*.tmp")), "temporary files left behind"


# ----------------------------------------------------------------------------------- 4. a NaN target
class NaNNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3), float("nan"))


def test_a_label_from_non_finite_scores_is_refused() -> None:
    target = TorchTarget(NaNNet(), num_classes=3, input_shape=(1, 4, 4))
    with pytest.raises(NonFiniteError, match="non-finite"):
        target.label(torch.rand(2, 1, 4, 4))


def test_a_nan_target_fails_its_cell_and_its_run(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in scenario.target_net.state_dict().items()}
    registry = tiny_registry_with(tmp_path, """
        [targets.nan-cnn]
        preset = "digits-tiny"
        arch = "small-cnn"
        weights = "{weights}"
        """, weights=state)
    error_line(invoke("run", "--attack", "random-prior", "--target", "nan-cnn", "--registry", registry), 1,
               "NonFiniteError", "nan-cnn")
    out = tmp_path / "bench"
    result = invoke("bench", "--registry", registry, "--targets", "nan-cnn", "--attacks", "random-prior",
                    "--defenses", "none", "--out", out)
    assert result.exit_code == 1, result.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed"] and "NonFiniteError" in records[0]["reason"]


# ----------------------------------------------------------------------------------- 5. sys.exit in a plugin
class Quitter(Attack):
    name = "quitter"
    requires = frozenset({Capability.LABEL})
    needs_prior = False

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        sys.exit(3)


class Interrupted(Quitter):
    name = "interrupted"

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        raise KeyboardInterrupt


def test_sys_exit_fails_its_cell_and_the_bench_goes_on(scenario, tiny_catalog, plugins) -> None:  # noqa: ANN001
    for cls in (Quitter, Interrupted):
        plugins.registry["attack"].add(cls.name, cls, "test")
    try:
        spec = tiny_catalog.matrix("default")
        cells = [Cell(attack=a, defense="none", target="tiny-cnn", samples_per_identity=1, metrics=("attack-acc",))
                 for a in ("quitter", "random-prior")]
        outcomes = run_bench(Plan(name="default", spec=spec, cells=cells), tiny_catalog, plugins, use_cache=False)
        assert [o.record["status"] for o in outcomes] == ["failed", "ok"]
        assert outcomes[0].record["reason"] == "attack called sys.exit(3)"
        interrupted = [Cell(attack="interrupted", defense="none", target="tiny-cnn", samples_per_identity=1,
                            metrics=("attack-acc",))]
        with pytest.raises(KeyboardInterrupt):
            run_bench(Plan(name="default", spec=spec, cells=interrupted), tiny_catalog, plugins, use_cache=False)
    finally:
        for cls in (Quitter, Interrupted):
            plugins.registry["attack"].remove(cls.name)


# ----------------------------------------------------------------------------------- 6. user strings are not markup
NASTY = ["[/oops]", "[bold red]shout", "ends\\", "a\\[b]"]


def test_the_console_matrix_prints_user_strings_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    records = [{"attack": "random-prior", "defense": "none", "target": t, "mode": "deployed", "status": "ok",
                "reason": "", "metrics": {"acc@1": 0.25, "natural_acc": 0.75}} for t in NASTY]
    records += [{"attack": "gmi", "defense": "none", "target": t, "mode": "deployed", "status": "skipped",
                 "reason": f"no grad on {t}", "metrics": {}} for t in NASTY]
    _print_matrix(records)
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for t in NASTY:
        assert f"'{t}'" in flat, (t, out)
        assert f"skipped (gmi x none): no grad on {t}" in out.splitlines(), (t, out)


def test_a_bench_on_a_target_named_like_markup(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    registry = tiny_registry_with(tmp_path, """
        [targets."[/oops]"]
        preset = "digits-tiny"

        [targets."[bold red]shout"]
        preset = "digits-tiny"
        """)
    result = invoke("bench", "--registry", registry, "--targets", "[[]*", "--attacks", "random-prior",
                    "--defenses", "none", "--out", tmp_path / "out")
    assert result.exit_code == 0, (result.stderr, result.exception)
    flat = " ".join(result.stdout.split())
    assert "'[/oops]'" in flat and "'[bold red]shout'" in flat, result.stdout


# ----------------------------------------------------------------------------------- 7/8. refused before any work
@pytest.mark.parametrize("command", [["run", "--attack", "random-prior", "--target", "tiny-cnn"], ["bench"]])
def test_out_under_a_file_is_refused_before_anything_is_trained(command: list[str], tmp_path: Path,
                                                                fresh_cache: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    error_line(invoke(*command, "--registry", TINY, "--out", tmp_path / "taken" / "out"), 2, "taken", "not a folder")
    assert trained_anything(fresh_cache) == []
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("steps = 150", 'steps = "many"', ["prior", "steps"]),
        ('target = { arch = "small-cnn"', 'target = { arch = "small-cnnn"', ["Unknown architecture 'small-cnnn'"]),
    ],
    ids=["prior-option", "architecture"],
)
@pytest.mark.parametrize("command", [["bench"], ["run", "--attack", "random-prior", "--target", "tiny-cnn"]])
def test_an_invalid_registry_is_refused_before_anything_is_trained(command: list[str], old: str, new: str,
                                                                   needles: list[str], tmp_path: Path,
                                                                   fresh_cache: Path) -> None:
    registry = edited_registry(tmp_path, old, new)
    error_line(invoke("validate", registry), 2, str(registry), *needles)
    error_line(invoke(*command, "--registry", registry, "--out", tmp_path / "out"), 2, str(registry), *needles)
    assert trained_anything(fresh_cache) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["validate"], ["bench", "--registry"], ["list", "targets", "--registry"]])
def test_a_registry_that_is_not_utf8_is_one_clear_line(command: list[str], tmp_path: Path) -> None:
    registry = tmp_path / "latin1.toml"
    registry.write_bytes(TINY.read_text().replace("digits, 0-4", "d\u00e9j\u00e0 digits, 0-4").encode("latin-1"))
    error_line(invoke(*command, registry), 2, str(registry), "not UTF-8")


@pytest.mark.parametrize("option", ["--attacks", "--defenses", "--targets"])
def test_a_pattern_that_matches_nothing_is_a_usage_error(option: str, tmp_path: Path) -> None:
    error_line(invoke("bench", "--registry", TINY, option, "zz*", "--out", tmp_path / "out"), 2, "matches", "'zz*'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("command", "options", "field"),
    [
        (["bench"], ["-o", "nes.sigma=Infinity"], "'sigma'"),
        (["bench"], ["-o", "gmi.lr=Infinity"], "'lr'"),
        (["bench"], ["-o", "gmi.lr=NaN"], "'lr'"),
        (["run", "--attack", "gmi", "--target", "tiny-cnn"], ["-o", "lr=-Infinity"], "'lr'"),
    ],
)
def test_non_finite_options_are_refused(command: list[str], options: list[str], field: str, tmp_path: Path) -> None:
    error_line(invoke(*command, "--registry", TINY, "--out", tmp_path / "out", *options), 2, field, "finite")


# ----------------------------------------------------------------------------------- 9. the umask
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_cache_and_report_files_honour_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    from invertkit.core.bench.report import write_report
    from invertkit.core.bench.runner import CellOutcome
    from invertkit.core.cache import atomic_write_json, save_module

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        save_module(tmp_path / "m.safetensors", torch.nn.Linear(2, 2), {"label": "test"})
        record = {"attack": "a", "defense": "d", "target": "t", "mode": "deployed", "status": "failed",
                  "reason": "r", "metrics": {}}
        write_report(tmp_path / "report", [CellOutcome(record)])
    finally:
        os.umask(old)
    files = [tmp_path / "a.json", tmp_path / "m.safetensors", *sorted((tmp_path / "report").iterdir())]
    assert len(files) == 6
    for f in files:
        assert f.stat().st_mode & 0o777 == mode, (f.name, oct(f.stat().st_mode & 0o777))


def test_the_same_target_name_with_another_budget_is_another_cell(tiny_catalog, plugins) -> None:  # noqa: ANN001
    """The cell cache key covers the target's entry: a budget sweep over one target computes every budget."""
    from invertkit.core.bench.plan import Cell
    from invertkit.core.bench.runner import run_cell

    spec = tiny_catalog.target("tiny-cnn-budget")
    cell = Cell(attack="nes", defense="none", target="tiny-cnn-budget", attack_options={"iterations": 3, "pairs": 2},
                metrics=("attack-acc",), samples_per_identity=1, identities=(0, 1))
    records = []
    for budget in (10, 1000):
        cat = tiny_catalog.model_copy(update={"targets": {**tiny_catalog.targets,
                                                          "tiny-cnn-budget": spec.model_copy(update={"budget": budget})}})
        records.append(run_cell(cell, cat, plugins).record)
    low, high = records
    assert low["key"] != high["key"] and not high["cached"]
    assert low["budget"]["exhausted"] and low["metrics"]["queries"] <= 10
    assert not high["budget"]["exhausted"] and high["metrics"]["queries"] == 3 * 2 * 2 * 2
