"""``registry.toml``: what a user edits — presets (scenarios), named targets and bench matrices.

Entry points say which *code* exists, and each component class carries its own metadata (``name``,
``paper``, ``summary``, ``requires``, defaults in its pydantic ``Config``); this file says which named,
parametrised instances to run and how they pair. It is validated by the pydantic models below and never
imports plugin code; :func:`check_catalog` checks the names it uses against the plugins it is handed.
A ``[catalogue]`` section (component descriptions, read by earlier versions) is refused with one line.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from invertkit.core.errors import RegistryFileError, UnknownNameError
from invertkit.core.interfaces.capability import ACCESS_LEVELS
from invertkit.core.registry import unknown
from invertkit.core.spec import (  # noqa: F401 - re-exported: the registry's entries are imported from here
    DataSpec, ModelFile, ModelRecipe, PriorRecipe, Strict, TargetSpec, class_list,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Preset(Strict):
    """A scenario: a dataset split by identity, the target, the evaluation model, the judges and the prior."""

    summary: str = ""
    dataset: str
    root: str | None = None
    #: the dataset adapter's own options (its ``Config``), e.g. celeba-kedmi's ``split_sha256``
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    private_classes: tuple[int, ...]
    #: the dataset's classes the attacker's public images come from (identity-disjoint from the private ones);
    #: may be empty when ``public`` names another dataset
    public_classes: tuple[int, ...] = ()
    #: public images from another dataset than the private ones (an unlabelled folder is enough for a prior
    #: that needs no labels), decoded at the private images' size and channels; they replace ``public_classes``
    public: DataSpec | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    target: ModelRecipe
    eval: ModelRecipe
    #: independent judge classifiers (the ``judge`` metric's ensemble): trained on the private split like the
    #: evaluation model (``core.zoo.judges.trained_judges``), each of another architecture or seed than the
    #: target and the evaluation model, never the target; they need the ``features(x)``/``head(f)`` split.
    #: Empty: the preset has no judges and the ``judge`` metric is a usage error.
    judges: list[ModelRecipe] = Field(default_factory=list)
    #: the generative prior image attacks search in; ``None``: the preset has none (a tabular preset: attribute
    #: inference needs no prior), and the plan skips the attacks that need one, with that reason
    prior: PriorRecipe | None = None

    _classes = field_validator("private_classes", "public_classes", mode="before")(classmethod(lambda cls, v: class_list(v)))

    @model_validator(mode="after")
    def _disjoint(self) -> "Preset":
        both = set(self.private_classes) & set(self.public_classes)
        if both:
            raise ValueError(f"private_classes and public_classes overlap: {sorted(both)}")
        if self.public is not None and self.public_classes:
            raise ValueError("give public_classes (public images from the preset's own dataset) or public (from "
                             "another dataset), not both")
        if self.public is None and not self.public_classes:
            raise ValueError("the attacker needs public images: give public_classes, or public = { dataset = ... }")
        return self


class BenchSpec(Strict):
    """A bench matrix: names or wildcards of attacks, defenses, targets; per-component options."""

    summary: str = ""
    attacks: tuple[str, ...]
    defenses: tuple[str, ...] = ("none",)
    targets: tuple[str, ...]
    metrics: tuple[str, ...] = ("attack-acc", "knn-dist")
    identities: tuple[int, ...] | None = None
    samples_per_identity: int = Field(8, ge=1)
    seed: int = 0
    attack_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    defense_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    _ids = field_validator("identities", mode="before")(classmethod(lambda cls, v: class_list(v)))


class Catalog(Strict):
    schema_version: int = Field(1, alias="schema")
    presets: dict[str, Preset] = Field(default_factory=dict)
    targets: dict[str, TargetSpec] = Field(default_factory=dict)
    bench: dict[str, BenchSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "Catalog":
        for name, t in self.targets.items():
            if t.preset is not None and t.preset not in self.presets:
                raise ValueError(f"target '{name}' names preset '{t.preset}', which is not defined")
        for name, b in self.bench.items():
            for tn in b.targets:
                if not any(ch in tn for ch in "*?[") and tn not in self.targets:
                    raise ValueError(f"bench '{name}' names target '{tn}', which is not defined")
        return self

    # ------------------------------------------------------------------ lookups
    def preset(self, name: str) -> Preset:
        if name not in self.presets:
            raise unknown("preset", name, list(self.presets))
        return self.presets[name]

    def target(self, name: str) -> TargetSpec:
        if name not in self.targets:
            raise unknown("target", name, list(self.targets))
        return self.targets[name]

    def prior_recipe(self, target: str) -> PriorRecipe | None:
        """The prior target ``target`` is attacked with: its preset's, or a standalone target's own (or none)."""
        spec = self.target(target)
        return spec.prior if spec.standalone else self.preset(spec.preset).prior

    def matrix(self, name: str) -> BenchSpec:
        if name not in self.bench:
            raise unknown("bench matrix", name, list(self.bench))
        return self.bench[name]


def access_caps(access: str):  # noqa: ANN201
    return ACCESS_LEVELS[access]


def parse_catalog(text: str, *, source: str = "registry.toml") -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryFileError(f"{source}: not valid TOML: {exc}") from None
    if "catalogue" in data:
        raise RegistryFileError(f"{source}: [catalogue] is no longer read: each component's description (name, paper, "
                                "summary, requires, defaults) moved to its plugin class; delete the [catalogue.*] sections")
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        raise RegistryFileError(f"{source}: {where}: {err.get('msg')}") from None


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The bundled ``registry.toml``, or a user's file."""
    if path is None:
        return _bundled()
    p = Path(path)
    if not p.is_file():
        raise RegistryFileError(f"registry file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryFileError(f"{p}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                                "save the file as UTF-8") from None
    return parse_catalog(text, source=str(p))


def check_catalog(catalog: Catalog, plugins: Any, where: str) -> None:
    """Check every name ``catalog`` uses against the registered ``plugins`` (datasets, architectures, priors
    and their options, backends, a bench's attacks, defenses, metrics and options):
    what ``invertkit validate`` reports, and what ``bench`` and ``run`` check before any work. A problem is
    one :class:`RegistryFileError` naming ``where`` (the file)."""
    from invertkit.core.errors import ConfigError
    from invertkit.core.interfaces.config import build_config
    from invertkit.core.zoo.arch import is_timm

    try:
        for preset in catalog.presets.values():
            plugins.registry["dataset"][preset.dataset]
            if preset.public is not None:
                plugins.get("dataset", preset.public.dataset)().options(preset.public.options)
            for recipe in (preset.target, preset.eval, *preset.judges):
                plugins.registry["architecture"][recipe.arch]
            if preset.prior is not None:
                plugins.get("prior", preset.prior.plugin)(preset.prior.options)  # validates the options
        for t in catalog.targets.values():
            for m in (t, t.eval):
                if m is None:
                    continue
                plugins.registry["backend"][m.backend]
                if m.arch and not is_timm(m.arch):
                    plugins.registry["architecture"][m.arch]
            for d in (t.public, t.private):
                if d is not None:
                    plugins.get("dataset", d.dataset)().options(d.options)  # validates the options
            if t.prior is not None:
                plugins.get("prior", t.prior.plugin)(t.prior.options)
        for name, b in catalog.bench.items():
            for a in b.attacks:
                plugins.registry["attack"].resolve(a)
            for d in b.defenses:
                plugins.registry["defense"].resolve(d)
            for m in b.metrics:
                plugins.registry["metric"][m]
            for a, opts in b.attack_options.items():
                build_config(plugins.get("attack", a).Config, opts, what=f"bench '{name}' attack '{a}'")
            for d, opts in b.defense_options.items():
                plugins.get("defense", d)(opts)
    except (UnknownNameError, ConfigError) as exc:
        raise RegistryFileError(f"{where}: {exc}") from None


@lru_cache(maxsize=1)
def _bundled() -> Catalog:
    text = resources.files("invertkit").joinpath("registry.toml").read_text()
    return parse_catalog(text, source="registry.toml (bundled)")


__all__ = ["Catalog", "Preset", "TargetSpec", "BenchSpec", "load_catalog", "parse_catalog", "check_catalog",
           "UnknownNameError"]
