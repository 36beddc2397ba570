"""The attacker's view is all an attack gets (issue: an honest bench).

* a hostile third-party attack tries the obvious escapes — attributes, ``__dict__``, the context, the scenario,
  the counters — and gets nothing it is not granted;
* label-only and top-k targets never leak scores or gradients, whatever the input (hypothesis);
* an attack's queries include every query behind its students and its target-trained prior;
* a defended cell's KEDMI prior is fitted to the defended target, not the undefended one;
* output defenses are judged as deployed: white-box attacks are skipped with the reason, unless adaptive.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from invertkit.core.bench.plan import Cell, make_plan, skip_reason, target_capabilities
from invertkit.core.bench.runner import run_cell
from invertkit.core.errors import CapabilityError, QueryBudgetExceeded
from invertkit.core.interfaces.access import TargetView, seal
from invertkit.core.interfaces.attack import Attack, AttackContext
from invertkit.core.interfaces.capability import ACCESS_LEVELS, Capability
from invertkit.core.interfaces.results import AttackResult
from invertkit.core.interfaces.target import Restricted, TargetModel, TorchTarget
from invertkit.core.testing.strategies import make_tiny_target

C = Capability
fast = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------ a hostile plugin
class Hostile(Attack):
    """Declares label-only access, then tries every obvious way past it. ``found`` records what worked."""

    name = "hostile"
    requires = frozenset({C.LABEL})
    needs_prior = False

    def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
        found: dict[str, Any] = {}

        def attempt(what: str, fn) -> None:  # noqa: ANN001
            try:
                value = fn()
            except (AttributeError, TypeError, ValueError, CapabilityError, QueryBudgetExceeded):
                return
            found[what] = value

        x = torch.rand((2, *target.input_shape))
        for attr in ("inner", "_inner", "_net", "net", "target", "wrapped", "scenario", "split", "eval_net"):
            attempt(f"target.{attr}", lambda a=attr: getattr(target, a))
        attempt("target.__dict__", lambda: target.__dict__)
        attempt("vars(target)", lambda: vars(target))
        attempt("target.module", lambda: target.module)
        attempt("target.probs", lambda: target.probs(x))
        attempt("target.logits", lambda: target.logits(x))
        attempt("target.features", lambda: target.features(x))
        attempt("target.topk", lambda: target.topk(x, 2))
        attempt("target.budget=None", lambda: setattr(target, "budget", None))
        attempt("target.queries=0", lambda: setattr(target, "queries", 0))
        attempt("object.__setattr__", lambda: object.__setattr__(target, "budget", None))
        attempt("target.reset_queries", lambda: target.reset_queries())
        attempt("target.charge(-10)", lambda: target.charge(-10))
        attempt("target.charge_derived(-10)", lambda: target.charge_derived(-10))
        ctx = self.context
        for attr in ("scenario", "private_images", "private_train", "eval_net", "target_net", "split"):
            attempt(f"context.{attr}", lambda a=attr: getattr(ctx, a))
        attempt("context.scenario=", lambda: setattr(ctx, "scenario", 1))
        # whatever the context does carry must be the attacker's own: no module, no target, no private tensor
        for k, v in vars(ctx).items():
            if isinstance(v, (torch.nn.Module, TargetModel)) and not isinstance(v, TargetView):
                found[f"context.{k}"] = v
        # a label is what it declared; it must cost one query per row and carry no gradient
        xg = torch.rand((3, *target.input_shape), requires_grad=True)
        y = target.label(xg)
        if y.requires_grad or y.grad_fn is not None:
            found["label gradient"] = y
        self.found = found
        images = torch.rand((len(labels), *target.input_shape))
        return AttackResult(self.name, images, labels, torch.zeros(len(labels)), 0, 0.0, seed, {})


def test_a_hostile_attack_gets_only_what_it_declared(tiny_catalog, plugins) -> None:  # noqa: ANN001
    """Through the bench: a label-only defended target, the bench's context and cache."""
    plugins.registry["attack"].add("hostile", Hostile, "test")
    try:
        seen: dict[str, Any] = {}
        original = Hostile.run

        def spy(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
            out = original(self, *a, **k)
            seen.update(self.found)
            seen["ran"] = True
            return out

        Hostile.run = spy  # type: ignore[method-assign]
        cell = Cell(attack="hostile", defense="label-only", target="tiny-cnn", samples_per_identity=1)
        out = run_cell(cell, tiny_catalog, plugins, use_cache=False, debug=True)
    finally:
        Hostile.run = original  # type: ignore[method-assign]
        plugins.registry["attack"].remove("hostile")
    assert seen.pop("ran")
    assert seen == {}, f"escapes that worked: {sorted(seen)}"
    assert out.record["status"] == "ok"
    assert out.record["metrics"]["queries"] == 3  # the three label rows, nothing else


def test_the_view_is_read_only_and_opaque() -> None:
    inner = make_tiny_target(1)
    inner.budget = 10
    view = seal(Restricted(inner, ACCESS_LEVELS["label-only"]))
    assert isinstance(view, TargetModel)
    assert seal(view) is view
    assert not hasattr(view, "__dict__")
    for name in ("budget", "queries", "inner", "name"):
        with pytest.raises(AttributeError):
            setattr(view, name, None)
    assert not hasattr(view, "reset_queries")
    view.label(torch.rand(4, *view.input_shape))
    assert view.queries == 4 and view.budget is None  # the Restricted level has its own (unlimited) budget
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(view)


def test_a_budget_is_the_wrappers_not_the_attacks() -> None:
    target = Restricted(make_tiny_target(2), ACCESS_LEVELS["black-box"], budget=50)

    class Greedy(Attack):
        name = "greedy"
        requires = frozenset({C.PROBS})
        needs_prior = False

        def run(self, target, labels, *, prior, seed, generator) -> AttackResult:  # noqa: ANN001
            for _ in range(100):
                target.probs(torch.rand((10, *target.input_shape)))
            raise AssertionError("unreachable: the budget stops it")

    with pytest.raises(QueryBudgetExceeded):
        Greedy()(target, torch.arange(2))
    assert target.queries == 50  # the refused batch was not answered, nor counted


# ------------------------------------------------------------------- no leaks through label-only or top-k
@fast
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), k=st.integers(1, 4), level=st.sampled_from(["label-only", "top-k"]))
def test_label_only_and_topk_never_leak_scores_or_gradients(seed: int, n: int, k: int, level: str) -> None:
    inner = make_tiny_target(seed % 7)
    target = seal(Restricted(inner, ACCESS_LEVELS[level], max_topk=k))
    x = torch.rand((n, *target.input_shape), generator=torch.Generator().manual_seed(seed), requires_grad=True)
    for fn in (target.probs, target.logits, target.log_probs, target.features):
        with pytest.raises(CapabilityError):
            fn(x)
    with pytest.raises(CapabilityError):
        _ = target.module
    outs: list[Tensor] = [target.label(x)]
    if level == "top-k":
        values, idx = target.topk(x, inner.num_classes)
        assert values.shape[1] <= k and idx.shape[1] <= k
        outs += [values, idx]
    else:
        with pytest.raises(CapabilityError):
            target.topk(x, 1)
    for t in outs:
        assert not t.requires_grad and t.grad_fn is None


# ------------------------------------------------------------------------ output defenses, as deployed
@pytest.mark.parametrize("defense", ["rounding", "top-k", "gaussian-noise", "label-only", "reverse-sigmoid"])
def test_white_box_attacks_are_skipped_under_an_api_filter(defense: str, tiny_catalog, plugins) -> None:  # noqa: ANN001
    d = plugins.get("defense", defense)()
    caps = target_capabilities(tiny_catalog, plugins, "tiny-cnn")
    reason = skip_reason(tiny_catalog, plugins, plugins.get("attack", "gmi"), d, "tiny-cnn", caps)
    assert "holds the weights" in reason and "undefended" in reason
    assert C.GRAD not in d.granted(caps)
    if defense in ("rounding", "top-k"):  # adaptive: BPDA gradients, explicit and opt-in
        assert skip_reason(tiny_catalog, plugins, plugins.get("attack", "gmi"), d, "tiny-cnn", caps, adaptive=True) == ""
        assert C.GRAD in d.granted(caps, adaptive=True)


def test_adaptive_cells_are_labelled_and_keyed_apart(tiny_catalog, plugins) -> None:  # noqa: ANN001
    plan = make_plan(tiny_catalog, plugins, attacks="gmi", defenses="none")
    adaptive = make_plan(tiny_catalog, plugins, attacks="gmi", defenses="none", adaptive=True)
    a = next(c for c in plan.cells if c.attack == "gmi")
    b = next(c for c in adaptive.cells if c.attack == "gmi")
    assert (a.mode, b.mode) == ("deployed", "adaptive")
    assert a.key({}) != b.key({})


def test_a_deployed_rounding_api_releases_no_gradient() -> None:
    from invertkit.plugins.defenses.rounding import Rounding

    target = Rounding({"decimals": 1}).apply(make_tiny_target(3))
    assert C.GRAD not in target.capabilities
    x = torch.rand((2, *target.input_shape), requires_grad=True)
    p = target.probs(x)
    assert not p.requires_grad


# ------------------------------------------------------------------ derived artifacts are paid for in queries
def test_ma_students_are_distilled_through_the_view_and_paid_for(tiny_scenario, plugins) -> None:  # noqa: ANN001
    from invertkit.core.zoo.scenario import derived_cache
    from invertkit.plugins.attacks.gan_search import GMIMA

    public = tiny_scenario.split.public[0][:64]
    cfg = {"iterations": 2, "ma_archs": ["small-mlp"], "distill_epochs": 1}

    def one_run() -> tuple[int, int]:
        target = TorchTarget(tiny_scenario.target_net, num_classes=5, input_shape=tiny_scenario.image_shape)
        attack = GMIMA(cfg, AttackContext(public_images=public, plugins=plugins,
                                          cache=derived_cache(tiny_scenario, target, "none")))
        result = attack(target, torch.arange(5), prior=tiny_scenario.prior, seed=0)
        return result.queries, target.queries

    first = one_run()
    again = one_run()  # the student now comes from the cache: its queries are charged all the same
    assert first == again
    searched = 5 * 2  # the search itself: 5 latents x 2 iterations, one query per latent per step
    assert first[0] >= searched + len(public), first


@pytest.fixture(scope="module")
def prior_catalog():  # noqa: ANN201
    from pathlib import Path

    from invertkit.core.catalog import load_catalog

    return load_catalog(Path(__file__).parent / "data" / "registry-priors.toml")


def test_a_defended_cells_kedmi_prior_is_fitted_to_the_defended_target(prior_catalog, plugins) -> None:  # noqa: ANN001
    from invertkit.core.zoo.scenario import build_scenario

    tiny_catalog = prior_catalog
    scenario = build_scenario("digits-tiny-kedmi", tiny_catalog, plugins)
    assert scenario.prior is None  # never trained on the raw network once for every cell
    public = len(scenario.split.public[0])
    records, images = {}, {}
    for defense in ("none", "rounding"):
        cell = Cell(attack="random-prior", defense=defense, target="tiny-cnn-kedmi", samples_per_identity=2,
                    metrics=("attack-acc",))
        out = run_cell(cell, tiny_catalog, plugins, use_cache=False, debug=True)
        records[defense], images[defense] = out.record, out.images
        # the soft labels: one query per public image, in the cell's queries
        assert out.record["metrics"]["prior_queries"] == public
        assert out.record["metrics"]["queries"] == public
    # the same seed and latents through a prior fitted to the rounded target: different images
    assert not torch.allclose(images["none"], images["rounding"])
    # re-used from the cache, the prior is paid for again
    again = run_cell(Cell(attack="random-prior", defense="rounding", target="tiny-cnn-kedmi", samples_per_identity=2,
                          metrics=("attack-acc",)), tiny_catalog, plugins, use_cache=False, debug=True)
    assert again.record["metrics"]["prior_queries"] == public
    assert torch.allclose(again.images, images["rounding"])


@pytest.mark.parametrize(("target", "defense", "lacking"), [("tiny-cnn-kedmi", "label-only", "probs"),
                                                              ("tiny-cnn-plg", "rounding", "grad")])
def test_a_prior_that_learns_from_the_target_is_refused_what_the_defense_withholds(
        prior_catalog, plugins, target: str, defense: str, lacking: str) -> None:  # noqa: ANN001
    caps = target_capabilities(prior_catalog, plugins, target)
    reason = skip_reason(prior_catalog, plugins, plugins.get("attack", "random-prior"),
                         plugins.get("defense", defense)(), target, caps)
    assert "learns from the target" in reason and lacking in reason
    # an undefended cell, or a training-time defense, leaves it what it needs
    assert skip_reason(prior_catalog, plugins, plugins.get("attack", "random-prior"),
                       plugins.get("defense", "none")(), target, caps) == ""
