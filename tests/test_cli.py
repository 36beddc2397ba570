"""The command line: every error is one ``error: …`` line on stderr with exit code 2 (usage) or 1 (runtime),
no traceback unless ``--debug``; and ``list``/``show``/``plugins``/``validate``/``run``/``bench`` do their job.

In process through :class:`click.testing.CliRunner` (click >= 8.2 keeps stderr apart), except where the real
console program matters (``--debug``). Anything that loads the tiny scenario asks for the ``scenario`` fixture
first, so its one-off training (and its log lines on stderr) happens before the command under test. Torch
runs on one thread here: the models are tiny, and on a shared two-core machine a second thread only spins.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from invertkit.cli import cli
from invertkit.core.testing.contracts import torch_threads

from conftest import tiny_registry_with  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
TINY = REPO / "tests" / "data" / "registry-tiny.toml"
METRIC_KEYS = {"acc@1", "acc@5", "knn_dist", "natural_acc", "queries", "seconds"}
RECORD_KEYS = {"attack", "defense", "target", "status", "reason", "metrics"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def scenario(_one_torch_thread: None, tiny_catalog, plugins):  # noqa: ANN001, ANN201
    """The tiny scenario (conftest's, trained here on one thread if this module is the first to need it)."""
    from invertkit.core.zoo.scenario import build_scenario

    return build_scenario("digits-tiny", tiny_catalog, plugins)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exception is None, result.exception
    return result


def error_line(result: Result, exit_code: int, *needles: str) -> str:
    """Assert the one-line error contract; return the line."""
    assert result.exit_code == exit_code, f"exit {result.exit_code}, want {exit_code}\nstderr:\n{result.stderr}"
    # a SystemExit from click, not an exception that escaped the command
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def run_console(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
    """The real program, ``python cli.py …``, in a subprocess with this session's cache."""
    full_env = {"OMP_NUM_THREADS": "1", **os.environ, **env}
    assert full_env.get("INVERTKIT_CACHE"), "conftest sets INVERTKIT_CACHE"
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)


# ----------------------------------------------------------------------------------- user registry files
TARGETS_WITH_BAD_WEIGHTS = """
[targets.bad-onnx]
summary = "an ONNX target whose file is garbage"
preset = "digits-tiny"
backend = "onnx"
access = "black-box"
weights = "{onnx}"

[targets.bad-safetensors]
summary = "a torch target whose safetensors file is garbage"
preset = "digits-tiny"
arch = "small-cnn"
weights = "{safetensors}"

[targets.pickled]
summary = "a torch target with a pickled checkpoint"
preset = "digits-tiny"
arch = "small-cnn"
weights = "{pickle}"
"""


@pytest.fixture(scope="module")
def bad_weights_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny registry plus targets whose weights are a garbage .onnx, a garbage .safetensors, a .pt."""
    d = tmp_path_factory.mktemp("bad-weights")
    (d / "x.onnx").write_bytes(b"\x00\x01 this is not an ONNX protobuf \xff" * 4)
    (d / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (d / "w.pt").write_bytes(b"\x80\x04not really a pickle")
    path = d / "registry.toml"
    path.write_text(TINY.read_text() + TARGETS_WITH_BAD_WEIGHTS.format(
        onnx=(d / "x.onnx").as_posix(), safetensors=(d / "w.safetensors").as_posix(), pickle=(d / "w.pt").as_posix()))
    return path


def edited_registry(tmp_path: Path, old: str, new: str) -> Path:
    text = TINY.read_text()
    assert old in text, old
    path = tmp_path / "registry.toml"
    path.write_text(text.replace(old, new))
    return path


# ----------------------------------------------------------------------------------- usage errors (exit 2)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--attack", "gmj", "--target", "tiny-cnn"], "Unknown attack 'gmj'. Did you mean 'gmi'?"),
        (["run", "--attack", "gmi", "--target", "tiny-cnn", "--defense", "label-onyl"],
         "Unknown defense 'label-onyl'. Did you mean 'label-only'?"),
        (["run", "--attack", "gmi", "--target", "tiny-cn"], "Unknown target 'tiny-cn'. Did you mean 'tiny-cnn'?"),
        (["bench", "--matrix", "defualt"], "Unknown bench matrix 'defualt'. Did you mean 'default'?"),
        (["bench", "--attacks", "gmj"], "Unknown attack 'gmj'. Did you mean 'gmi'?"),
        (["bench", "--attacks", "gmi,nse"], "Unknown attack 'nse'. Did you mean 'nes'?"),
        (["bench", "--defenses", "label-onyl"], "Unknown defense 'label-onyl'. Did you mean 'label-only'?"),
        (["bench", "--targets", "tiny-cn"], "Unknown target 'tiny-cn'. Did you mean 'tiny-cnn'?"),
        (["bench", "-o", "gmk.iterations=3"], "Unknown attack or defense 'gmk'. Did you mean 'gmi'?"),
        (["show", "attack", "gmj"], "Unknown attack 'gmj'. Did you mean 'gmi'?"),
        (["show", "target", "tiny-cn"], "Unknown target 'tiny-cn'. Did you mean 'tiny-cnn'?"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "message",
)
def test_unknown_names_suggest_the_nearest(args: list[str], message: str) -> None:
    assert error_line(invoke(*args, "--registry", TINY), 2) == f"error: {message}"


@pytest.mark.parametrize("args", [["list", "attackz"], ["show", "attackz", "gmi"]])
def test_unknown_kind(args: list[str]) -> None:
    error_line(invoke(*args), 2, "Unknown kind 'attackz'", "Did you mean 'attack'?")


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["-o", "iterations=abc"], ["field 'iterations'", "'abc'"]),
        (["-o", "gmi.iterations=abc"], ["field 'iterations'"]),
        (["-o", "iterations=0"], ["field 'iterations'", "greater than or equal to 1"]),
        (["-o", "nosuch=1"], ["unknown field 'nosuch'", "iterations"]),
        (["-o", "badformat"], ["'badformat'", "key=value"]),
        (["-o", "=3"], ["key=value"]),
        (["-o", "foo.k=1"], ["unknown option prefix 'foo.'"]),
        (["-o", "defense.k=2"], ["defense 'none'", "unknown field 'k'"]),
        (["--defense", "top-k", "-o", "defense.k=0"], ["defense 'top-k'", "field 'k'"]),
        (["--defense", "top-k", "-o", "top-k.nosuch=1"], ["defense 'top-k'", "unknown field 'nosuch'"]),
    ],
)
def test_run_option_errors_name_the_field(options: list[str], needles: list[str]) -> None:
    error_line(invoke("run", "--attack", "gmi", "--target", "tiny-cnn", "--registry", TINY, *options), 2, *needles)


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["-o", "gmi.iterations=-5"], ["attack 'gmi'", "field 'iterations'", "-5"]),
        (["-o", "gmi.nosuch=1"], ["attack 'gmi'", "unknown field 'nosuch'"]),
        (["-o", "iterations=5"], ["component prefix"]),
        (["-o", "top-k.k=0", "--defenses", "none,top-k"], ["defense 'top-k'", "field 'k'"]),
    ],
)
def test_bench_option_errors_name_the_field(options: list[str], needles: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    error_line(invoke("bench", "--registry", TINY, "--out", out, *options), 2, *needles)
    assert not out.exists(), "a bench refused at planning wrote a report"


@pytest.mark.parametrize("command", [["run", "--attack", "gmi", "--target", "tiny-cnn"], ["bench"]])
def test_out_that_is_a_file_is_refused_before_any_work(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    error_line(invoke(*command, "--registry", TINY, "--out", tmp_path / "taken"), 2, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run"], ["Missing option '--attack'"]),
        (["run", "--attack", "gmi", "--target", "tiny-cnn", "--samples", "0"], ["'--samples'"]),
        (["run", "--attack", "gmi", "--target", "tiny-cnn", "--seed", "x"], ["'--seed'"]),
        (["bench", "--executor", "dask"], ["'--executor'"]),
        (["nosuchcommand"], ["No such command 'nosuchcommand'"]),
        (["--bogus", "list"], ["No such option '--bogus'"]),
    ],
)
def test_click_usage_errors_are_one_line_too(args: list[str], needles: list[str]) -> None:
    error_line(invoke(*args), 2, *needles)


def test_bare_invocation_shows_the_help() -> None:
    result = invoke()
    assert "Usage:" in result.output and "error:" not in result.output


# ----------------------------------------------------------------------------------- list / show / plugins
def test_list_everything() -> None:
    out = ok(invoke("list")).stdout
    for header in ("attacks:", "defenses:", "priors:", "metrics:", "backends:", "architectures:", "datasets:",
                   "targets:", "presets:", "benches:"):
        assert re.search(rf"^{header}$", out, re.M), header
    for name in ("gmi", "nes", "mi-face", "random-prior", "label-only", "top-k", "wgan-gp", "digits-cnn"):
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), name


def listed(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:] if line.startswith("  ") and line.strip() != "(none)"]


def test_list_attacks(plugins) -> None:  # noqa: ANN001
    out = ok(invoke("list", "attacks")).stdout
    assert out.splitlines()[0] == "attacks:"
    names = listed(out)
    assert {"gmi", "mi-face", "nes", "random-prior"} <= set(names)
    assert names == sorted(plugins.registry["attack"])
    assert re.search(r"^  gmi\s+\[gan-search\]  \S", out, re.M) and "defenses:" not in out


@pytest.mark.parametrize("pattern", ["g*", "*i*", "gmi,nes", "zz*"])
def test_list_attacks_pattern(pattern: str, plugins) -> None:  # noqa: ANN001
    names = listed(ok(invoke("list", "attacks", pattern)).stdout)
    want = [n for n in sorted(plugins.registry["attack"]) if any(fnmatch.fnmatchcase(n, p) for p in pattern.split(","))]
    assert names == want
    assert ("gmi" in names) == (pattern != "zz*")


def test_list_targets() -> None:
    out = ok(invoke("list", "targets")).stdout
    assert "digits-cnn " in out and "digits-cnn-onnx" in out
    out = ok(invoke("list", "targets", "--registry", TINY)).stdout
    import tomllib

    assert listed(out) == sorted(tomllib.loads(Path(TINY).read_text())["targets"])
    assert listed(ok(invoke("list", "targets", "*budget", "--registry", TINY)).stdout) == ["tiny-cnn-budget"]


def test_show_attack_gmi() -> None:
    out = ok(invoke("show", "attack", "gmi")).stdout
    assert "https://arxiv.org/abs/1911.07135" in out
    assert "requires:" in out and "grad" in out and "probs" in out
    defaults = json.loads(re.search(r"^  defaults:\s+(\{.*\})$", out, re.M).group(1))
    assert defaults["iterations"] >= 1
    schema = json.loads(textwrap.dedent(out.split("config schema:\n", 1)[1]))
    assert "iterations" in schema["properties"]
    assert schema["properties"]["iterations"]["default"] == defaults["iterations"]
    assert schema.get("additionalProperties") is False


def test_show_defense_and_catalog_entries() -> None:
    out = ok(invoke("show", "defense", "top-k")).stdout
    assert "output defense" in out and "straight-through" in out
    bench = json.loads(ok(invoke("show", "bench", "default", "--registry", TINY)).stdout)
    assert bench["attacks"] == ["random-prior", "gmi", "nes"]


def test_plugins_lists_bundled_entry_points() -> None:
    out = ok(invoke("plugins")).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and not line.startswith(" ")}
    for name in ("gan-search", "nes", "mi-face", "random-prior", "none", "label-only", "torch-backend", "onnx-backend",
                 "wgan-gp", "digits", "small-nets", "attack-acc", "knn-dist"):
        assert name in rows, name
        assert rows[name][1:4] == ["loaded", "invertkit", version("invertkit")], rows[name]
    assert "attack gmi" in out and "architecture small-cnn, architecture small-mlp" in out


# ----------------------------------------------------------------------------------- validate
def test_validate_bundled() -> None:
    out = ok(invoke("validate")).stdout
    assert out.startswith("registry.toml (bundled): ok")


def test_validate_user_file() -> None:
    import tomllib

    data = tomllib.loads(Path(TINY).read_text())
    counts = f"{len(data['presets'])} presets, {len(data['targets'])} targets, {len(data['bench'])} bench matrices"
    out = ok(invoke("validate", TINY)).stdout
    assert out.startswith(f"{TINY}: ok ({counts}")


def test_validate_malformed_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("schema = 1\n[presets.x\nfoo = ")
    error_line(invoke("validate", path), 2, str(path), "not valid TOML", "line 2")


def test_validate_schema_error_names_the_field(tmp_path: Path) -> None:
    path = edited_registry(tmp_path, "epochs = 6,", "epochs = 0,")
    error_line(invoke("validate", path), 2, "presets.digits-tiny.target.epochs", "greater than or equal to 1")


def test_validate_unknown_key(tmp_path: Path) -> None:
    path = edited_registry(tmp_path, 'samples_per_identity = 4', 'samples_per_identity = 4\nsampels = 3')
    error_line(invoke("validate", path), 2, "bench.default.sampels", "Extra inputs are not permitted")


def test_validate_bench_with_unknown_attack(tmp_path: Path) -> None:
    path = edited_registry(tmp_path, 'attacks = ["random-prior", "gmi", "nes"]', 'attacks = ["random-prior", "gmj", "nes"]')
    error_line(invoke("validate", path), 2, str(path), "Unknown attack 'gmj'. Did you mean 'gmi'?")


def test_validate_bench_option_values(tmp_path: Path) -> None:
    path = edited_registry(tmp_path, "iterations = 60", "iterations = -60")
    error_line(invoke("validate", path), 2, str(path), "attack 'gmi'", "field 'iterations'")


def test_validate_overlapping_classes(tmp_path: Path) -> None:
    path = edited_registry(tmp_path, "public_classes = [5, 6, 7, 8, 9]", "public_classes = [4, 5, 6, 7, 8, 9]")
    error_line(invoke("validate", path), 2, "presets.digits-tiny", "overlap", "[4]")


def test_validate_missing_file(tmp_path: Path) -> None:
    error_line(invoke("validate", tmp_path / "nope.toml"), 2, "registry file not found", "nope.toml")


# ----------------------------------------------------------------------------------- runtime errors (exit 1)
def test_capability_error_says_what_is_missing() -> None:
    line = error_line(invoke("run", "--attack", "gmi", "--defense", "label-only", "--target", "tiny-cnn",
                             "--registry", TINY), 1, "attack 'gmi'", "label-only")
    # judged as deployed: an API filter is no obstacle to whoever holds the gradients, so it is skipped, and why
    assert "holds the weights" in line and "undefended" in line
    line = error_line(invoke("run", "--attack", "nes", "--defense", "label-only", "--target", "tiny-cnn",
                             "--registry", TINY), 1, "attack 'nes'", "label-only")
    assert "needs {probs}" in line and "exposes {label}" in line


def test_a_query_budget_ends_the_attack_and_the_record_says_so(scenario, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = ok(invoke("run", "--attack", "nes", "--target", "tiny-cnn-budget", "--registry", TINY,
                    "-o", "iterations=50", "--samples", "2", "--out", out))
    assert "query budget of 1000 exhausted" in res.stdout
    rec = json.loads((out / "record.json").read_text())
    assert rec["budget"] == {"limit": 1000, "used": rec["metrics"]["queries"], "exhausted": True}
    assert rec["metrics"]["queries"] <= 1000


@pytest.mark.parametrize(
    ("target", "attack", "needles"),
    [
        ("bad-onnx", ["nes", "-o", "iterations=2"], ["x.onnx", "is not a valid ONNX model"]),
        ("bad-onnx", ["random-prior"], ["x.onnx", "is not a valid ONNX model"]),
        ("bad-safetensors", ["random-prior"], ["w.safetensors", "is not a valid safetensors file"]),
        ("pickled", ["random-prior"], ["w.pt", "pickled checkpoint", "INVERTKIT_ALLOW_PICKLE"]),
    ],
    ids=["onnx-nes", "onnx-random-prior", "safetensors", "pickle"],
)
def test_bad_weights_are_one_clear_line(scenario, bad_weights_registry: Path, tmp_path: Path,
                                        target: str, attack: list[str], needles: list[str]) -> None:
    out = tmp_path / "out"
    line = error_line(invoke("run", "--target", target, "--registry", bad_weights_registry, "--out", out,
                             "--attack", *attack), 1, *needles)
    assert "CheckpointError" in line
    assert not out.exists(), "a failed run wrote its output folder"


def test_unexpected_error_inside_a_run_is_one_line_without_debug(scenario, tmp_path: Path) -> None:
    import torch

    registry = tiny_registry_with(tmp_path, """
        [targets.timm-typo]
        preset = "digits-tiny"
        arch = "timm:no-such-timm-model"
        weights = "{weights}"
        """, weights={"w": torch.zeros(1)})
    error_line(invoke("run", "--attack", "random-prior", "--target", "timm-typo", "--registry", registry), 1,
               "no-such-timm-model")


def test_bench_with_failed_cells_exits_1_after_writing_the_report(scenario, bad_weights_registry: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = invoke("bench", "--registry", bad_weights_registry, "--targets", "pickled", "--attacks", "random-prior",
                    "--defenses", "none", "--out", out)
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 1 cells failed" in errors[0] and "INVERTKIT_ALLOW_PICKLE" in errors[0]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed"]
    assert "CheckpointError" in records[0]["reason"]


def test_console_error_is_one_line_without_debug() -> None:
    proc = run_console("run", "--attack", "gmj", "--target", "tiny-cnn", "--registry", TINY)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: Unknown attack 'gmj'. Did you mean 'gmi'?"], proc.stderr
    assert proc.stdout == ""


def test_console_debug_shows_the_traceback() -> None:
    proc = run_console("--debug", "run", "--attack", "gmi", "--defense", "label-only", "--target", "tiny-cnn",
                       "--registry", TINY)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "CapabilityError: attack 'gmi' on 'tiny-cnn' under 'label-only'" in proc.stderr
    assert not any(line.startswith("error: ") for line in proc.stderr.splitlines())


# ----------------------------------------------------------------------------------- run / bench
def test_run_gmi_writes_record_and_png(scenario, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = ok(invoke("run", "--attack", "gmi", "--target", "tiny-cnn", "--registry", TINY,
                       "-o", "iterations=30", "--samples", "2", "--out", out))
    assert result.stdout.startswith("gmi x none x tiny-cnn: acc@1=")
    assert result.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == ["reconstructions.png", "record.json"]
    record = json.loads((out / "record.json").read_text())
    assert RECORD_KEYS <= set(record) and record["status"] == "ok"
    assert METRIC_KEYS <= set(record["metrics"])
    assert record["attack_config"]["iterations"] == 30
    assert record["samples"] == 2 * scenario.num_classes
    assert record["metrics"]["queries"] > 0
    assert (out / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


PROGRESS = re.compile(r"^\s+\[(\d+)/(\d+)\] (\S+) x (\S+) x (\S+): (\w+)")


def test_bench_writes_the_report_and_caches_cells(scenario, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    ok(invoke("bench", "--registry", TINY, "--out", first))
    assert sorted(p.name for p in first.iterdir()) == ["report.html", "results.csv", "results.jsonl", "results.md"]
    records = [json.loads(line) for line in (first / "results.jsonl").read_text().splitlines()]
    for r in records:
        assert RECORD_KEYS <= set(r), r
    cells = {(r["attack"], r["defense"]): r for r in records}
    assert set(cells) == {(a, d) for a in ("random-prior", "gmi", "nes") for d in ("none", "label-only")}
    assert all(r["target"] == "tiny-cnn" for r in records)
    for a, d in [("gmi", "label-only"), ("nes", "label-only")]:
        assert cells[a, d]["status"] == "skipped" and cells[a, d]["metrics"] == {}
    assert "grad" in cells["gmi", "label-only"]["reason"]
    runnable = [r for r in records if r["status"] != "skipped"]
    assert len(runnable) == 4 and all(r["status"] == "ok" for r in runnable)
    for r in runnable:
        assert METRIC_KEYS <= set(r["metrics"]), r["metrics"]
    assert cells["random-prior", "none"]["metrics"]["queries"] == 0
    assert cells["gmi", "none"]["metrics"]["queries"] > 0 and cells["nes", "none"]["metrics"]["queries"] > 0
    assert "| attack \\ defense |" in (first / "results.md").read_text()
    assert (first / "results.csv").read_text().splitlines()[0].startswith("attack,defense,target,mode,status,reason,acc@1")
    assert "<img src='data:image/png;base64," in (first / "report.html").read_text()

    again = ok(invoke("bench", "--registry", TINY, "--out", second))
    progress = [m for m in map(PROGRESS.match, again.stderr.splitlines()) if m]
    assert len(progress) == 4, again.stderr
    assert all(line.rstrip().endswith("(cached)") for line in again.stderr.splitlines() if PROGRESS.match(line))

    def strip(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "cached"} for r in rs]

    records2 = [json.loads(line) for line in (second / "results.jsonl").read_text().splitlines()]
    assert strip(records2) == strip(records)


@pytest.mark.parametrize("where", ["group", "command"])
def test_quiet_bench_writes_nothing_but_warnings_and_errors(scenario, where: str, tmp_path: Path) -> None:
    from invertkit.core import progress

    out = tmp_path / "quiet"
    args = ["bench", "--registry", TINY, "--out", out, "--fresh"]
    try:
        result = ok(invoke("--quiet", *args) if where == "group" else invoke(*args, "--quiet"))
    finally:
        progress.set_quiet(False)
    assert [line for line in result.stderr.splitlines() if not line.startswith(("warning:", "error:"))] == []
    assert len((out / "results.jsonl").read_text().splitlines()) == 6 and "bench finished in" in result.stdout
    loud = ok(invoke("bench", "--registry", TINY, "--out", tmp_path / "loud"))  # the next command is not quiet
    assert len([m for m in map(PROGRESS.match, loud.stderr.splitlines()) if m]) == 4


def test_training_says_when_it_starts_and_ends_in_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a terminal (a log, CI) a training prints a start line, progress with ETA now and then, and an end."""
    monkeypatch.setenv("INVERTKIT_CACHE", str(tmp_path / "cache"))
    result = ok(invoke("train", "target", "--preset", "digits-tiny", "--registry", TINY))
    lines = result.stderr.splitlines()
    assert lines[0].startswith("[digits-tiny] training target 'small-cnn' on "), lines
    assert lines[0].endswith(": started (6 epochs)"), lines
    assert ": done, 6 epochs in " in lines[-1] and "test accuracy" in lines[-1], lines
    assert "digits-tiny target (small-cnn): test accuracy" in result.stdout
    again = ok(invoke("train", "target", "--preset", "digits-tiny", "--registry", TINY))
    assert again.stderr == ""  # loaded from the cache: nothing to report


def test_export_onnx_refuses_a_non_torch_target(tmp_path: Path) -> None:
    error_line(invoke("export-onnx", "tiny-cnn-onnx", tmp_path / "x.onnx", "--registry", TINY), 2,
               "target 'tiny-cnn-onnx' uses backend 'onnx'", "only torch targets")
    assert not (tmp_path / "x.onnx").exists()
