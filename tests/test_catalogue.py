"""Component metadata lives on the classes; registry.toml holds only what a user edits.

Every registered component carries a non-empty ``summary`` and, where it is a published method, a ``paper``
link; ``invertkit show`` prints the class's own; the plugin index (what ``list`` reads without importing a
module) agrees with the imported classes; registry.toml is validated data with no ``[catalogue]``.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
from click.testing import CliRunner

from invertkit.cli import cli
from invertkit.core.catalog import load_catalog, parse_catalog
from invertkit.core.errors import RegistryFileError
from invertkit.core.plugins import load_plugins
from invertkit.core.registry import KINDS, describe

#: components that are not a published method (baselines, plumbing, generic loaders): paper "" allowed
NO_PAPER = {
    ("attack", "random-prior"),
    ("defense", "none"),
    ("metric", "gpu-memory"),
    ("backend", "torch"),
    ("backend", "onnx"),
    ("architecture", "small-cnn"),
    ("architecture", "small-mlp"),
    ("dataset", "image-folder"),
    ("dataset", "class-folder"),
    ("metric", "target-acc"),
    # issue 14's face-swap MIA follows a technical report with no public link (plugins/attacks/faceswap_mia.py)
    ("attack", "faceswap-mia"),
}


def bundled_names(plugins, kind: str) -> list[str]:
    reg = plugins.registry[kind]
    return [n for n in reg if plugins.infos[reg[n].plugin].dist.startswith("invertkit ")]


@pytest.mark.parametrize("kind", KINDS)
def test_every_bundled_component_has_a_summary_and_a_paper_link(plugins, kind: str) -> None:
    names = bundled_names(plugins, kind)
    assert names, kind
    for name in names:
        summary, paper = describe(plugins.get(kind, name))
        assert summary.strip(), f"{kind} '{name}' has no summary"
        if (kind, name) in NO_PAPER:
            assert paper == "" or paper.startswith(("http://", "https://")), (kind, name, paper)
        else:
            assert re.match(r"https?://\S+$", paper), f"{kind} '{name}' is a published method: give its paper link"


def test_attacks_declare_requirements_and_a_config(plugins) -> None:
    from invertkit.core.interfaces.capability import Capability

    for name in bundled_names(plugins, "attack"):
        cls = plugins.get("attack", name)
        assert cls.name == name
        assert all(isinstance(c, Capability) for c in cls.requires), name
        cls.Config()  # defaults validate


def test_the_plugin_index_agrees_with_the_classes(plugins) -> None:
    """``list`` reads names, summaries and papers without importing modules; they are the classes' own."""
    index = load_plugins(lazy=True)
    for kind in KINDS:
        assert set(index.registry[kind]) == set(plugins.registry[kind]), kind
        for name in plugins.registry[kind]:
            entry = index.registry[kind].peek(name)
            got = describe(entry.obj) if entry.loaded else (entry.summary, entry.paper)
            assert got == describe(plugins.get(kind, name)), (kind, name)
    assert not [i.name for i in index.failures() if i.dist.startswith("invertkit ")]


@pytest.mark.parametrize("kind", ["attack", "defense", "prior", "metric", "dataset"])
def test_show_prints_the_class_metadata(plugins, kind: str) -> None:
    runner = CliRunner()
    for name in bundled_names(plugins, kind):
        obj = plugins.get(kind, name)
        summary, paper = describe(obj)
        result = runner.invoke(cli, ["show", kind, name])
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert out.startswith(f"{kind} {name}  (plugin '{plugins.registry[kind][name].plugin}')")
        if getattr(obj, "summary", ""):
            assert f"  summary:      {summary}\n" in out, (kind, name)
        if paper:
            assert f"  paper:        {paper}\n" in out, (kind, name)
        if kind == "attack":
            assert f"  requires:     {sorted(c.value for c in obj.requires) or 'nothing'}\n" in out
            assert "  threat model: " in out
        if getattr(obj, "threat_model", ""):
            assert f"  threat model: {obj.threat_model}\n" in out


def test_no_bundled_plugin_failed(plugins) -> None:
    assert [i.name for i in plugins.failures() if i.dist.startswith("invertkit ")] == []


def test_registry_toml_holds_no_catalogue() -> None:
    text = resources.files("invertkit").joinpath("registry.toml").read_text()
    assert not re.search(r"^\s*\[+\s*catalogue", text, re.M)
    assert not hasattr(load_catalog(), "catalogue")


def test_a_registry_with_a_catalogue_is_one_clear_error() -> None:
    with pytest.raises(RegistryFileError) as err:
        parse_catalog("schema = 1\n[catalogue.attack.gmi]\ntitle = 'GMI'\n", source="mine.toml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("mine.toml: [catalogue]") and "moved to its plugin class" in msg


def test_bench_defaults_reference_known_targets() -> None:
    catalog = load_catalog()
    assert "default" in catalog.bench
    for t in catalog.matrix("default").targets:
        assert catalog.target(t).preset in catalog.presets


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("schema = 1\n[presets.x]\ndataset = 'digits'\n", "private_classes"),
        ("schema = 1\n[targets.t]\npreset = 'missing'\n", "preset"),
        ("schema = 1\n[spells.x]\ntitle = 'y'\n", "spells"),
        ("schema = 1\n[catalogue.attack.x]\ntitle = 'y'\n", "catalogue"),
        ("this is [not toml", "TOML"),
    ],
)
def test_malformed_registry_files_are_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(RegistryFileError, match=fragment):
        parse_catalog(text)
