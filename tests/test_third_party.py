"""A third-party plugin, installed like one: ``examples/third_party_plugin`` is pip-installed (no network, no
dependencies) into a folder of its own, never into this environment, and the real ``cli.py`` runs with that
folder on ``PYTHONPATH``. invertkit must find it through its entry points, list it, bench it, block it on
request; a third-party plugin that fails to import must be reported by name while the CLI keeps working.
The example's attack and defense also pass invertkit's exported contract suites.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from invertkit.core.testing.contracts import AttackContract, DefenseContract

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
EXAMPLE = REPO / "examples" / "third_party_plugin"
DIST = "invertkit-example-plugin"
ENTRY_POINTS = {"example-best-of-n": "attack best-of-n", "example-temperature": "defense temperature"}
METRIC_KEYS = {"acc@1", "acc@5", "knn_dist", "natural_acc", "queries", "seconds"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --no-build-isolation --target SITE`` of the example (from a copy, so the
    build leaves no ``build/`` or ``*.egg-info`` in the repository)."""
    root = tmp_path_factory.mktemp("third-party")
    src, target = root / "src", root / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", ".hypothesis"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / "invertkit_example_plugin" / "attack.py").is_file()
    assert list(target.glob("invertkit_example_plugin-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed distribution (hand-written dist-info) whose entry point's module raises ImportError."""
    site = tmp_path_factory.mktemp("broken-site")
    pkg = site / "invertkit_broken_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise ImportError("invertkit_broken_plugin needs libfrobnicate, which is missing")\n')
    info = site / "invertkit_broken_plugin-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: invertkit-broken-plugin\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[invertkit]\nbroken-plugin = invertkit_broken_plugin\n")
    (info / "RECORD").write_text("")
    return site


def invertkit(*args: object, sites: tuple[Path, ...] = (), python_args: bool = False,
              **env: str) -> subprocess.CompletedProcess[str]:
    """``python cli.py ARGS`` (``python ARGS`` with ``python_args``) with ``sites`` prepended to PYTHONPATH and this
    session's INVERTKIT_CACHE."""
    full = {k: v for k, v in os.environ.items() if k not in ("INVERTKIT_PLUGINS", "INVERTKIT_DISABLE_PLUGINS")}
    full.setdefault("OMP_NUM_THREADS", "1")  # tiny models; on a shared two-core machine a second thread only spins
    assert full.get("INVERTKIT_CACHE"), "conftest sets INVERTKIT_CACHE"
    full["PYTHONPATH"] = os.pathsep.join([*map(str, sites), *filter(None, [os.environ.get("PYTHONPATH")])])
    full.update(env)
    return subprocess.run([sys.executable, *([] if python_args else [str(CLI)]), *map(str, args)],
                          capture_output=True, text=True, env=full, timeout=600)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def plugin_rows(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if line.strip() and not line.startswith(" ")}


def listed(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:] if line.startswith("  ")]


# ------------------------------------------------------------------------------------ through the CLI
def test_list_shows_the_example_attack(site: Path) -> None:
    proc = ok(invertkit("list", "attacks", sites=(site,)))
    assert "best-of-n" in listed(proc.stdout)
    assert "[example-best-of-n]" in proc.stdout
    assert "gmi" in listed(proc.stdout)  # the bundled ones are still there
    assert "example" not in proc.stderr and "Traceback" not in proc.stderr


def test_show_the_example_attack(site: Path) -> None:
    out = ok(invertkit("show", "attack", "best-of-n", sites=(site,))).stdout
    assert out.startswith("attack best-of-n  (plugin 'example-best-of-n')")
    assert "paper:        https://arxiv.org/abs/2201.12179" in out  # from the class (registry.toml has no catalogue)
    assert "threat model: black-box (scores)" in out
    assert "requires:     ['probs']" in out
    assert '"candidates": 64' in out and '"candidates": {' in out


def test_one_module_and_one_entry_point_are_the_whole_plugin(site: Path, tmp_path: Path) -> None:
    """Adding an attack is one module plus one entry point: no registry.toml edit (it holds no catalogue; the
    bench below runs best-of-n from the example's own matrix file), and ``list`` shows the class's summary read
    from the module without importing it (no torch)."""
    bundled = (REPO / "registry.toml").read_text()
    assert "[catalogue" not in bundled and "best-of-n" not in bundled
    assert "[catalogue" not in (EXAMPLE / "bench.toml").read_text()
    entry_points = (next(site.glob("invertkit_example_plugin-*.dist-info")) / "entry_points.txt").read_text()
    assert entry_points.split() == ["[invertkit]", "example-best-of-n", "=", "invertkit_example_plugin.attack",
                                    "example-temperature", "=", "invertkit_example_plugin.defense"]
    out = tmp_path / "modules.txt"
    code = ("import atexit, runpy, sys; out = sys.argv[1]; atexit.register(lambda: open(out, 'w').write(' '.join(sys.modules)));"
            "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    for _ in range(2):  # the first run may import the loop-registered architecture modules once (index cache)
        proc = ok(invertkit("-c", code, out, CLI, "list", "attacks", sites=(site,), python_args=True))
    row = next(line for line in proc.stdout.splitlines() if line.startswith("  best-of-n "))
    assert row.split(None, 2)[1:] == ["[example-best-of-n]", "Black-box (scores): decode N prior samples per "
                                      "reconstruction, keep those with the highest p_y."]
    modules = set(out.read_text().split())
    assert "torch" not in modules and "invertkit_example_plugin.attack" not in modules


def test_plugins_shows_the_entry_points_loaded(site: Path) -> None:
    rows = plugin_rows(ok(invertkit("plugins", sites=(site,))).stdout)
    for name, registered in ENTRY_POINTS.items():
        assert name in rows, rows
        fields = rows[name].split()
        assert fields[1:4] == ["loaded", DIST, "0.1.0"], rows[name]
        assert rows[name].endswith(registered)
    assert rows["gan-search"].split()[1:3] == ["loaded", "invertkit"]


def test_bench_runs_the_example_matrix(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = ok(invertkit("bench", "--registry", EXAMPLE / "bench.toml", "--out", out, sites=(site,)))
    assert "(4 ok, 0 skipped, 0 failed)" in proc.stdout
    records = {(r["attack"], r["defense"]): r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert set(records) == {(a, d) for a in ("random-prior", "best-of-n") for d in ("none", "temperature")}
    for (attack, defense), r in records.items():
        assert r["status"] == "ok" and r["reason"] == "" and r["target"] == "tiny-cnn", r
        assert METRIC_KEYS <= set(r["metrics"]), r["metrics"]
    # best-of-n queries each of its candidates once: 32 per reconstruction, 5 identities x 4 samples
    for defense in ("none", "temperature"):
        assert records["best-of-n", defense]["metrics"]["queries"] == 32 * 5 * 4
        assert records["best-of-n", defense]["attack_config"] == {"candidates": 32, "batch_size": 256}
    assert records["best-of-n", "temperature"]["defense_config"] == {"temperature": 4.0}
    # judged as deployed: an output defense is an API filter, which releases no gradient
    assert records["best-of-n", "temperature"]["gradient"] == "none (deployed API)"
    assert records["random-prior", "none"]["metrics"]["queries"] == 0
    assert (out / "report.html").is_file() and (out / "results.csv").is_file() and (out / "results.md").is_file()


def test_blocked_and_broken_plugins(site: Path, broken_site: Path) -> None:
    """INVERTKIT_DISABLE_PLUGINS blocks the example's entry points; a plugin whose module raises ImportError is
    reported by name (failed, with its error) while the other plugins and the CLI keep working."""
    env = {"INVERTKIT_DISABLE_PLUGINS": "example-*"}
    proc = ok(invertkit("plugins", sites=(site, broken_site), **env))
    rows = plugin_rows(proc.stdout)
    for name in ENTRY_POINTS:
        assert rows[name].split()[1:4] == ["blocked", DIST, "0.1.0"], rows[name]
        assert rows[name].rstrip().endswith("-")  # it registered nothing
    assert rows["broken-plugin"].split()[1:4] == ["failed", "invertkit-broken-plugin", "0.0.1"], rows["broken-plugin"]
    lines = proc.stdout.splitlines()
    error = lines[lines.index(rows["broken-plugin"]) + 1].strip()
    assert error == "error: ImportError: invertkit_broken_plugin needs libfrobnicate, which is missing"
    assert rows["gan-search"].split()[1] == "loaded"

    proc = ok(invertkit("list", "attacks", sites=(site, broken_site), **env))
    names = listed(proc.stdout)
    assert "best-of-n" not in names and {"gmi", "mi-face", "nes", "random-prior"} <= set(names)
    warnings = [line for line in proc.stderr.splitlines() if "broken-plugin" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: plugin 'broken-plugin'"), proc.stderr
    assert "ImportError: invertkit_broken_plugin needs libfrobnicate" in warnings[0]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ contract suites
@pytest.fixture(scope="module")
def example(site: Path) -> SimpleNamespace:
    """The installed example's modules, imported from SITE. SITE leaves ``sys.path`` again right after, so
    this process's entry-point discovery (other tests' ``load_plugins()``) never sees the example."""
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        modules: dict[str, ModuleType] = {
            m: importlib.import_module(f"invertkit_example_plugin.{m}") for m in ("attack", "defense")
        }
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()
    for module in modules.values():
        assert Path(module.__file__).resolve().is_relative_to(site.resolve()), module.__file__
    return SimpleNamespace(**modules)


class TestBestOfNContract(AttackContract):
    config = {"candidates": 8, "batch_size": 5}

    @pytest.fixture(autouse=True, scope="class")
    def _attack_cls(self, request: pytest.FixtureRequest, example: SimpleNamespace) -> None:
        request.cls.attack_cls = example.attack.BestOfN

    def test_picks_the_most_confident_sample(self, example: SimpleNamespace) -> None:
        """For each label the chosen image scores at least as high as every candidate drawn."""
        import torch

        target = self.make_target()
        result = self.run_attack(target)
        assert result.queries == 8 * len(self.labels)
        with torch.no_grad():
            p = self.make_target().probs(result.images)
        chosen = p.gather(1, result.labels.view(-1, 1)).view(-1)
        prior, g = self.make_prior(), torch.Generator().manual_seed(self.seed)
        pool = prior.decode(prior.sample_latent(8 * len(self.labels), g))
        with torch.no_grad():
            q = self.make_target().probs(pool)
        for i, y in enumerate(result.labels.tolist()):
            assert float(chosen[i]) >= float(q[:, y].max()) - 1e-6


class TestTemperatureContract(DefenseContract):
    configs = [{}, {"temperature": 0.5}, {"temperature": 1.0}, {"temperature": 25.0}]

    @pytest.fixture(autouse=True, scope="class")
    def _defense_cls(self, request: pytest.FixtureRequest, example: SimpleNamespace) -> None:
        request.cls.defense_cls = example.defense.Temperature

    def test_keeps_the_label_and_flattens(self, example: SimpleNamespace) -> None:
        import torch

        from invertkit.core.interfaces.capability import BLACK_BOX

        target = self.make_target(BLACK_BOX, seed=3)
        x = torch.rand(16, *self.input_shape)
        p = target.probs(x)
        q = self.defense_cls({"temperature": 4.0}).apply(self.make_target(BLACK_BOX, seed=3)).probs(x)
        assert torch.equal(q.argmax(dim=1), p.argmax(dim=1))
        assert bool((q.max(dim=1).values <= p.max(dim=1).values + 1e-6).all())
        assert torch.allclose(q, torch.softmax(torch.log(p) / 4.0, dim=1), atol=1e-6)
