"""Bench planning: the attacks x defenses x targets cross product, with every pair whose required
capabilities the defended target lacks marked ``skipped`` (and why) before anything runs.

Defenses are judged as deployed (:meth:`~invertkit.core.interfaces.defense.Defense.granted`): an API filter
takes ``grad`` away, so white-box attacks are skipped under it with the reason, unless the plan is
explicitly ``adaptive`` (an attacker who holds the weights and must still pass the filter; every cell of
such a plan says so). An attack whose ``prior_requires`` (conditional, layered, ...) the target's prior does
not provide (``PriorBuilder.features``) is skipped with that reason, by the test ``Attack.check`` applies. A
prior that learns from the target (KEDMI's GAN, PLG-MI's cGAN) is fitted to the
defended target, so its needs (``target_requires``) are checked against what the defense leaves too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from invertkit.core.cache import content_key
from invertkit.core.catalog import BenchSpec, Catalog
from invertkit.core.errors import UsageError
from invertkit.core.interfaces.attack import prior_shortfall
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capability as C, describe, missing
from invertkit.core.interfaces.config import build_config
from invertkit.core.plugins import Plugins
from invertkit.core.registry import unknown

BASELINE = "random-prior"


@dataclass(frozen=True)
class Cell:
    attack: str
    defense: str
    target: str
    attack_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    defense_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    metrics: tuple[str, ...] = ("attack-acc", "knn-dist")
    samples_per_identity: int = 8
    identities: tuple[int, ...] | None = None
    seed: int = 0
    #: an adaptive attacker (holds the weights and must pass an API filter): opt-in, labelled everywhere
    adaptive: bool = False
    status: str = "planned"  # planned | skipped
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mode(self) -> str:
        return "adaptive" if self.adaptive else "deployed"

    def key(self, extra: dict[str, Any]) -> str:
        d = self.describe()
        d.pop("status")
        d.pop("reason")
        if not d["adaptive"]:
            d.pop("adaptive")  # deployed cells keep the keys they had
        return content_key({**d, **extra})


@dataclass
class Plan:
    name: str
    spec: BenchSpec
    cells: list[Cell]

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.status == "planned"]

    @property
    def skipped(self) -> list[Cell]:
        return [c for c in self.cells if c.status == "skipped"]


def _select(plugins: Plugins, kind: str, names: tuple[str, ...], pattern: str | None) -> list[str]:
    reg = plugins.registry[kind]
    chosen: list[str] = []
    for n in names:
        chosen.extend(x for x in reg.resolve(n) if x not in chosen)
    if pattern:
        wanted = reg.resolve(pattern)
        chosen = [n for n in wanted]
    return chosen


def make_plan(
    catalog: Catalog,
    plugins: Plugins,
    *,
    matrix: str = "default",
    attacks: str | None = None,
    defenses: str | None = None,
    targets: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    adaptive: bool = False,
) -> Plan:
    """Build the plan of bench matrix ``matrix``; the patterns narrow (or replace) its component lists. A
    pattern (attacks, defenses or targets) that matches nothing is a usage error, not an empty bench.

    ``options`` maps ``"attack:gmi"`` / ``"defense:top-k"`` to option overrides, validated here.
    """
    spec = catalog.matrix(matrix)
    attack_names = _select(plugins, "attack", spec.attacks, attacks)
    defense_names = _select(plugins, "defense", spec.defenses, defenses)
    for kind, names, pattern, listed in (("attack", attack_names, attacks, spec.attacks),
                                         ("defense", defense_names, defenses, spec.defenses)):
        if not names:
            raise UsageError(f"no {kind} matches '{pattern or ','.join(listed)}'")
    if targets:
        target_names = [t for t in catalog.targets if _match(t, targets)]
        for t in [t.strip() for t in targets.split(",") if t.strip() and not any(ch in t for ch in "*?[")]:
            if t not in catalog.targets:
                raise unknown("target", t, list(catalog.targets))
    else:
        target_names = [t for t in catalog.targets if any(_match(t, p) for p in spec.targets)]
    if not target_names:
        raise UsageError(f"no target matches '{targets}'")
    if BASELINE in plugins.registry["attack"] and BASELINE not in attack_names:
        attack_names.insert(0, BASELINE)  # the baseline row is always in the matrix
    for m in spec.metrics:
        plugins.registry["metric"][m]
    options = options or {}
    cells: list[Cell] = []
    for t in target_names:
        target_caps = target_capabilities(catalog, plugins, t)
        for d in defense_names:
            d_opts = {**spec.defense_options.get(d, {}), **options.get(f"defense:{d}", {})}
            defense = plugins.get("defense", d)(d_opts)  # validates the options now, before any cell runs
            for a in attack_names:
                a_cls = plugins.get("attack", a)
                a_opts = {**spec.attack_options.get(a, {}), **options.get(f"attack:{a}", {})}
                build_config(a_cls.Config, a_opts, what=f"attack '{a}'")
                reason = skip_reason(catalog, plugins, a_cls, defense, t, target_caps, adaptive=adaptive)
                cells.append(
                    Cell(
                        attack=a, defense=d, target=t, attack_options=a_opts, defense_options=d_opts,
                        metrics=tuple(spec.metrics), samples_per_identity=spec.samples_per_identity,
                        identities=spec.identities, seed=spec.seed, adaptive=adaptive,
                        status="skipped" if reason else "planned", reason=reason,
                    )
                )
    return Plan(name=matrix, spec=spec, cells=cells)


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, p.strip()) for p in pattern.split(",") if p.strip())


def target_capabilities(catalog: Catalog, plugins: Plugins, target: str) -> frozenset:
    """What the registry entry ``target`` exposes before any defense: its access level within its backend's."""
    tspec = catalog.target(target)
    backend = plugins.get("backend", tspec.backend)
    offered = backend.offers(tspec) if hasattr(backend, "offers") else backend.capabilities
    return ACCESS_LEVELS[tspec.access] & frozenset(offered)


def template_shortfall(catalog: Catalog, defense: Any, target: str) -> str:
    """Why no template of ``target`` leaks under ``defense`` (an instance), or ``""``: the target is no embedder,
    has no private images, or the defense keeps its templates from leaking."""
    spec = catalog.target(target)
    if spec.kind != "embedder":
        return f"needs leaked templates, and '{target}' is not an embedder (kind = \"embedder\")"
    if spec.standalone and spec.private is None:
        return (f"needs leaked templates, and '{target}' has no private images whose templates could leak "
                "(give its entry private = { dataset = \"class-folder\", root = \"...\" })")
    if not getattr(defense, "releases_templates", True):
        return f"needs leaked templates, and '{defense.name}' never releases the templates of '{target}' (secure storage)"
    return ""


def skip_reason(catalog: Catalog, plugins: Plugins, a_cls: Any, defense: Any, target: str, target_caps: frozenset, *,
                adaptive: bool = False) -> str:
    """Why attack class ``a_cls`` cannot run on ``target`` under ``defense`` (an instance), or ``""``. The one
    place the bench and ``cli.py run`` decide it."""
    d, t = defense.name, target
    backend = plugins.get("backend", catalog.target(t).backend)
    # a backend may withhold a view altogether (federated: a client's upload under secure aggregation), or refuse
    # a defense it cannot apply as the bench would (federated: a training-time defense is each client's own)
    why = (getattr(backend, "withheld", lambda _s: "")(catalog.target(t))
           or getattr(backend, "refuses_defense", lambda _s, _d: "")(catalog.target(t), defense))
    if why:
        return why
    if getattr(a_cls, "needs_templates", False):
        why = template_shortfall(catalog, defense, t)
        if why:
            return why
    left = defense.granted(target_caps, adaptive=adaptive)
    lack = missing(a_cls.requires, left)
    if C.GRAD in lack and defense.filters_api and C.GRAD in target_caps and not adaptive:
        return (f"white-box: an attacker who holds gradients holds the weights, and '{d}' filters what an API "
                f"returns, so the white-box figure for '{t}' is the undefended one (an adaptive BPDA attacker "
                "is opt-in: --adaptive)")
    if lack:
        return f"needs {describe(lack)}; '{t}' under '{d}' exposes {describe(left)}"
    spec = catalog.target(t)
    if spec.standalone and getattr(defense, "kind", "output") == "training":
        return (f"'{d}' retrains the target, and '{t}' is a model the user brings, which invertkit cannot retrain "
                "(defend it yourself and bring the defended model as another target)")
    recipe = catalog.prior_recipe(t)
    if recipe is None:
        if getattr(a_cls, "needs_prior", True):
            return f"needs a prior, and '{t}' has none (give its entry prior = {{ plugin = \"wgan-gp\" }})"
        return ""
    prior_plugin = recipe.plugin
    prior_cls = plugins.get("prior", prior_plugin)
    lacking_features = prior_shortfall(a_cls, getattr(prior_cls, "features", frozenset()), prior_plugin, target=t)
    if lacking_features:
        return lacking_features
    if getattr(a_cls, "needs_prior", True) and getattr(prior_cls, "needs_target", False):
        lacking = missing(getattr(prior_cls, "target_requires", frozenset()), left)
        if lacking:
            return (f"its prior '{prior_plugin}' learns from the target as defended and needs {describe(lacking)}; "
                    f"'{t}' under '{d}' exposes {describe(left)}")
    return ""
