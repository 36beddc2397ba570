"""registry.toml: validated data, and in step with the bundled plugins (both directions)."""

from __future__ import annotations

import pytest

from invertkit.core.catalog import load_catalog, parse_catalog
from invertkit.core.errors import RegistryFileError
from invertkit.core.registry import KINDS


def bundled_names(plugins, kind: str) -> set[str]:
    reg = plugins.registry[kind]
    return {n for n in reg if plugins.infos[reg[n].plugin].dist.startswith("invertkit ")}


@pytest.mark.parametrize("kind", KINDS)
def test_every_bundled_plugin_has_a_catalogue_entry_and_back(plugins, kind: str) -> None:
    catalog = load_catalog()
    registered = bundled_names(plugins, kind)
    listed = set(catalog.catalogue.get(kind, {}))
    assert registered - listed == set(), f"{kind}s registered but not catalogued"
    assert listed - registered == set(), f"{kind}s catalogued but not registered"


def test_catalogued_requirements_match_the_attack_classes(plugins) -> None:
    catalog = load_catalog()
    for name, entry in catalog.catalogue["attack"].items():
        cls = plugins.get("attack", name)
        assert set(entry.requires) == {c.value for c in cls.requires}, name


def test_no_bundled_plugin_failed(plugins) -> None:
    assert [i.name for i in plugins.failures() if i.dist.startswith("invertkit ")] == []


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
        ("schema = 1\n[catalogue.spells.x]\ntitle = 'y'\n", "spells"),
        ("schema = 1\n[catalogue.attack.x]\ntitle = 'y'\nrequires = ['telepathy']\n", "telepathy"),
        ("this is [not toml", "TOML"),
    ],
)
def test_malformed_registry_files_are_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(RegistryFileError, match=fragment):
        parse_catalog(text)
