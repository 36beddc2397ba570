"""``Attack``: one inversion method. A plugin states its requirements, its config and its ``run``."""

from __future__ import annotations

from abc import ABC, abstractmethod
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from invertkit.core.errors import CapabilityError, UsageError
from invertkit.core.interfaces.access import seal
from invertkit.core.interfaces.capability import Capabilities, PriorFeatures, describe, explain, missing
from invertkit.core.interfaces.config import ComponentConfig, build_config
from invertkit.core.interfaces.prior import Prior, features_of
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import TargetModel


@dataclass(frozen=True)
class AttackContext:
    """The attacker's view beyond the target and the prior, set by the bench before ``run``, and all of it:

    * ``public_images``/``public_labels``: the public split (never private data);
    * ``plugins``: the loaded plugins, to build architectures (MA's students, surrogates);
    * ``cache(key, train, build, label=...)``: a cache for what the attack derives from the target (students,
      surrogates, fitted priors), namespaced by the (target, defense) of the cell; the queries an artifact cost
      when it was trained are charged again whenever it is re-used, so a cell pays for what it uses. ``None``
      outside the bench: derive afresh;
    * ``extras``: free, caller-supplied values (e.g. ``augmented_models`` to skip MA's distillation). On a records
      (tabular) target the bench puts there what an attribute-inference attacker knows of the attacked records
      (:func:`~invertkit.core.bench.targets.attacked_records`): ``schema``, ``records`` (sensitive columns
      zeroed) and ``record_labels``; the attack's ``labels`` are those records' labels, one result row each.
      On an embedder target it puts there ``templates``, the leaked templates of the attacked private images as
      the defended system stores them (never the images): one per entry of the attack's ``labels``.

    No scenario, no private split, no evaluation model, no raw network: whatever an attack takes from the target
    goes through the :class:`~invertkit.core.interfaces.access.TargetView` it is handed, and is counted.
    """

    public_images: Tensor | None = None
    public_labels: Tensor | None = None
    plugins: Any = None
    cache: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


def derive(context: AttackContext | None, key: dict[str, Any], train: Callable[[], Any], build: Callable[[], Any], *,
           label: str) -> Any:
    """A network an attack derives from its target (a student, a surrogate, a fine-tuned generator): through
    ``context.cache`` when the bench gives one (trained once per ``key``, its queries charged again on every
    re-use), else ``train()`` afresh. Returned in eval mode."""
    cache = getattr(context, "cache", None)
    if cache is None:
        return train().eval()
    return cache(key, train, build, label=label)


def prior_shortfall(attack_cls: type, provided: PriorFeatures, prior: str, *, target: str | None = None) -> str:
    """Why a prior providing ``provided`` (named ``prior``) cannot serve ``attack_cls``, or ``""``: the prior
    features in its ``prior_requires`` that are missing. The one test ``Attack.check`` (on the prior instance)
    and the bench plan (on the prior builder, before anything runs; ``target`` names the registry target whose
    preset uses that prior) both apply."""
    lack = missing(getattr(attack_cls, "prior_requires", frozenset()), provided)
    if not lack:
        return ""
    who = f"'{target}' uses prior '{prior}', which provides" if target else f"prior '{prior}' provides"
    return f"needs a prior with {explain(lack)}; {who} {describe(provided)}"


class AttackConfig(ComponentConfig):
    """Fields every attack understands are declared by each attack itself; this is the common base."""


class Attack(ABC):
    """Base class of every attack plugin.

    Class attributes: ``name`` (registry name), ``Config`` (pydantic, paper defaults), ``requires`` (the
    capabilities the target must expose), ``needs_prior``, ``prior_requires`` (the
    :class:`~invertkit.core.interfaces.capability.PriorFeature` set the prior must provide, e.g. conditional
    for PLG-MI, layered for IF-GMI), ``paper`` (a link) and ``summary``. :meth:`check` refuses a target or a
    prior that falls short before any query; the bench plan skips such cells, with the same reason.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = AttackConfig
    requires: ClassVar[Capabilities] = frozenset()
    needs_prior: ClassVar[bool] = True
    prior_requires: ClassVar[PriorFeatures] = frozenset()
    #: inverts leaked templates: runs only on an embedder target whose stored templates leak (the bench hands
    #: them over as ``context.extras["templates"]``, one per result row; see
    #: :func:`~invertkit.core.bench.targets.leaked_templates`)
    needs_templates: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, config: ComponentConfig | dict[str, Any] | None = None, context: AttackContext | None = None) -> None:
        self.config = build_config(self.Config, config, what=f"attack '{self.name}'")
        #: set by the bench (or the caller) before running; see :class:`AttackContext`
        self.context = context

    def check(self, target: TargetModel, prior: Prior | None) -> None:
        lack = missing(self.requires, target.capabilities)
        if lack:
            raise CapabilityError(
                f"attack '{self.name}' needs {describe(self.requires)} but target '{target.name}' "
                f"exposes {describe(target.capabilities)} (missing {describe(lack)})"
            )
        if (self.needs_prior or self.prior_requires) and prior is None:
            raise UsageError(f"attack '{self.name}' needs a prior and none was given")
        if prior is not None:
            reason = prior_shortfall(type(self), features_of(prior), getattr(prior, "name", type(prior).__name__))
            if reason:
                raise CapabilityError(f"attack '{self.name}' {reason}")

    def __call__(self, target: TargetModel, labels: Tensor, *, prior: Prior | None = None, seed: int = 0) -> AttackResult:
        """Check requirements, then :meth:`run` with a seeded generator on the attacker's *view* of ``target``
        (:class:`~invertkit.core.interfaces.access.TargetView`: the public query API, read-only counters, no
        route to the wrapped network); the result's ``queries`` and ``seconds`` are measured here, around
        :meth:`run`, so no attack can under-report them."""
        self.check(target, prior)
        view = seal(target)
        generator = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))
        q0, t0 = target.queries, time.perf_counter()
        result = self.run(view, torch.as_tensor(labels).long(), prior=prior, seed=int(seed), generator=generator)
        result.queries = target.queries - q0
        result.seconds = time.perf_counter() - t0
        result.seed = int(seed)
        result.config = self.config.model_dump(mode="json")
        return result

    @abstractmethod
    def run(
        self,
        target: TargetModel,
        labels: Tensor,
        *,
        prior: Prior | None,
        seed: int,
        generator: torch.Generator,
    ) -> AttackResult:
        """Reconstruct one or more images for each entry of ``labels`` (identities)."""
